"""Background augmentation (Ryali, Schwab & Morcos 2021, https://arxiv.org/abs/2103.12719): keep the
foreground of an image, replace or alter its background, independently in each view.

An augmentation section, not a method: any method that takes views from ``BatchAugment`` can use
it (config section ``background``, :class:`~sslbench.benchmark.config.BackgroundConfig`).

1. **Saliency** (no downloaded weights; the paper uses a saliency network, U^2-Net):
   * ``spectral`` (:func:`spectral_residual_saliency`): the spectral residual of Hou & Zhang
     ("Saliency Detection: A Spectral Residual Approach", CVPR 2007), in torch (FFT), as the authors'
     published MATLAB code: grayscale, resize to 64 px wide, ``R = log|F| - avg3x3(log|F|)``,
     ``S = |ifft(exp(R + i phase(F)))|^2``, Gaussian blur (sigma 2.5 at 64 px), min-max
     normalised; the map of the raw image, independent of the model.
   * ``activation`` (:func:`activation_saliency`): the encoder's own last feature map, channel
     sum, min-max normalised and upsampled: ContrastiveCrop's heat map
     (:func:`sslbench.benchmark.contrastive_crop.heat_maps`), with the current encoder in eval
     mode.
2. **Mask** (:func:`foreground_mask`): pixels whose saliency exceeds ``threshold`` times the
   image's mean saliency (Hou & Zhang's object map uses 3).
3. **Modes** (:func:`composite`), each applied to an image's view with probability ``p``:
   * ``bg_rm`` (BG_RM): the background becomes a constant mid-grey (``fill=grey``), a random
     grey level (``fill=random``) or the image's own background in grayscale
     (``fill=grayscale``);
   * ``bg_random`` (BG_Random): the background comes from another image of the batch.
   BG_Swaps (a background-matched negative) changes the loss, not the views, and is not
   implemented.

The operation runs on the full uint8 images, once per view, before the view's crop
(:meth:`BackgroundAugment.__call__` returns one composite batch per view for ``BatchAugment``), so
the mask is cropped, resized and flipped with the view. Its random draws come from their own
generator (the engine seeds it per epoch like the augmentation's, on another stream), so the views'
crops and colours are the same draws as without the section, and a resumed run is exact.

Deviations from the paper: classical or self-computed saliency instead of U^2-Net masks;
BG_Random pastes the foreground on the whole other image (the paper uses backgrounds without
their own foreground), so that image's object may show around the foreground.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.augment import grayscale, normalize
from sslbench.benchmark.backbones import feature_map
from sslbench.benchmark.contrastive_crop import heat_maps

if TYPE_CHECKING:
    from sslbench.benchmark.config import BackgroundConfig

__all__ = [
    "BackgroundAugment",
    "activation_saliency",
    "composite",
    "foreground_mask",
    "spectral_residual_saliency",
]

#: Hou & Zhang's working width (the MATLAB code's ``imresize(inImg, 64/size(inImg, 2))``).
SPECTRAL_WIDTH = 64
#: The authors' smoothing: ``fspecial('gaussian', [10, 10], 2.5)`` at 64 px.
SPECTRAL_SIGMA = 2.5
#: Mid-grey of BG_RM's constant fill.
GREY = 128


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding, kernel +-2 sigma, at least 3 px).

    Shape:
        x: (B, 1, H, W); returns (B, 1, H, W).
    """
    radius = max(1, math.ceil(2 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x
    pos = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-pos * pos / (2 * sigma * sigma))
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def _min_max(s: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation to [0, 1] (``mat2gray``); a constant map becomes 0.

    Shape:
        s: (B, H, W); returns (B, H, W).
    """
    low = s.amin(dim=(1, 2), keepdim=True)
    span = s.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (s - low) / span.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(s))


def spectral_residual_saliency(images: torch.Tensor) -> torch.Tensor:
    """Spectral residual saliency (Hou & Zhang, CVPR 2007), batched, in torch.

    Images wider than :data:`SPECTRAL_WIDTH` are resized to that width (antialiased bilinear);
    smaller ones are used as they are, with the Gaussian's sigma scaled to their width. Then, on
    the luma: ``A = log(|F| + eps)``, ``R = A - A * h_3`` (3 x 3 mean, replicate padding, as the
    MATLAB ``imfilter(..., 'replicate')``), ``S = g * |F^-1[exp(R + i P)]|^2`` with P the phase
    and g the Gaussian, min-max normalised, resized back to (H, W). A constant image (whose
    spectrum is its DC term alone) has no salient pixel: its map is 0.

    Args:
        images: float images in [0, 1].

    Shape:
        images: (B, C, H, W), C in {1, 3}; returns (B, H, W) in [0, 1].
    """
    b, _, height, width = images.shape
    x = grayscale(images.float())
    if width > SPECTRAL_WIDTH:
        size = (max(1, round(height * SPECTRAL_WIDTH / width)), SPECTRAL_WIDTH)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    spectrum = torch.fft.fft2(x.squeeze(1).double())
    log_amp = torch.log(spectrum.abs() + 1e-12)
    local_mean = F.avg_pool2d(F.pad(log_amp.unsqueeze(1), (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    residual = log_amp - local_mean.squeeze(1)
    saliency = torch.fft.ifft2(torch.polar(torch.exp(residual), spectrum.angle())).abs().square()
    sigma = SPECTRAL_SIGMA * min(x.shape[-1], SPECTRAL_WIDTH) / SPECTRAL_WIDTH
    saliency = _min_max(_blur(saliency.unsqueeze(1), sigma).squeeze(1)).float()
    flat = x.flatten(1).amax(dim=1) == x.flatten(1).amin(dim=1)  # no structure: an impulse at the
    saliency = torch.where(flat.view(b, 1, 1), torch.zeros_like(saliency), saliency)  # DC otherwise
    if saliency.shape[-2:] != (height, width):
        saliency = F.interpolate(saliency.unsqueeze(1), size=(height, width), mode="bilinear",
                                 align_corners=False).squeeze(1)
    return saliency


@torch.no_grad()
def activation_saliency(encoder: nn.Module, images: torch.Tensor, backbone: str = "encoder") -> torch.Tensor:
    """The encoder's heat map of each image (ContrastiveCrop's): channel sum of its last feature
    map, min-max normalised, bilinearly upsampled; computed in eval mode (the mode is restored).

    Args:
        encoder: the method's encoder.
        images: normalised images (as the encoder sees them).
        backbone: the backbone's name, for the error message when it has no feature map.

    Shape:
        images: (B, C, H, W); returns (B, H, W) in [0, 1].
    """
    was_training = encoder.training
    encoder.eval()
    try:
        fmap = feature_map(encoder, images, what=f"background.saliency=activation (backbone '{backbone}')",
                           fix="Use small-cnn, a ResNet, a ViT or another timm model with "
                               "forward_features, or background.saliency=spectral.")
        return heat_maps(fmap, images.shape[-2:])
    finally:
        encoder.train(was_training)


def foreground_mask(saliency: torch.Tensor, threshold: float) -> torch.Tensor:
    """Foreground = pixels whose saliency exceeds ``threshold`` x the image's mean saliency
    (Hou & Zhang's object map: threshold 3).

    Shape:
        saliency: (B, H, W); returns (B, H, W) bool.
    """
    return saliency > threshold * saliency.mean(dim=(1, 2), keepdim=True)


def composite(images: torch.Tensor, mask: torch.Tensor, apply: torch.Tensor, mode: str, fill: str,
              u: torch.Tensor) -> torch.Tensor:
    """One view's background operation on uint8 images; foreground pixels are never changed.

    Args:
        images: the batch.
        mask: foreground pixels.
        apply: which images get the operation (the others are returned unchanged).
        mode: ``bg_rm`` or ``bg_random``.
        fill: BG_RM's background: ``grey`` (128), ``random`` (a grey level ``floor(256 u[:, 0])``
            per image) or ``grayscale`` (the image's own luma; a no-op on 1-channel images).
        u: uniforms of the draws: column 0 the random grey level, column 1 the BG_Random partner
            ``(i + 1 + floor((B - 1) u[:, 1])) mod B`` (never the image itself when B > 1).

    Shape:
        images: (B, C, H, W) uint8; mask: (B, H, W) bool; apply: (B,) bool; u: (B, 2);
        returns (B, C, H, W) uint8.
    """
    b = images.shape[0]
    if mode == "bg_random":
        offset = 1 + (u[:, 1] * max(b - 1, 0)).long().clamp_max(max(b - 2, 0))
        background = images[(torch.arange(b, device=images.device) + offset) % b]
    elif fill == "grey":
        background = torch.full_like(images, GREY)
    elif fill == "random":
        level = (u[:, 0] * 256).long().clamp_max(255).to(torch.uint8)
        background = level.view(b, 1, 1, 1).expand_as(images)
    elif fill == "grayscale":
        luma = grayscale(images.float()).round_().clamp_(0, 255).to(torch.uint8)
        background = luma.expand_as(images)
    else:
        raise ValueError(f"unknown background mode/fill {mode!r}/{fill!r}")
    keep = mask.unsqueeze(1) | ~apply.view(b, 1, 1, 1)
    return torch.where(keep, images, background)


class BackgroundAugment:
    """The ``background`` section at work: one composite uint8 batch per view.

    Args:
        cfg: the section (``cfg.enabled`` must be true).
        mean, std: the dataset's normalisation (for the encoder's ``activation`` maps).
        backbone: the backbone's name (error messages).
    """

    def __init__(self, cfg: BackgroundConfig, mean: Sequence[float], std: Sequence[float],
                 backbone: str = "encoder") -> None:
        if not cfg.enabled:
            raise ValueError("BackgroundAugment needs an enabled background section")
        self.cfg = cfg
        self.mean, self.std = tuple(mean), tuple(std)
        self.backbone = backbone

    def check(self, encoder: nn.Module, in_chans: int, image_size: int) -> None:
        """Fails at the start of a run when ``saliency=activation`` finds no feature map (one
        forward pass of two blank images in eval mode).

        Raises:
            ConfigError: the backbone has no spatial feature map.
        """
        if self.cfg.saliency == "activation":
            param = next(encoder.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            blank = torch.zeros(2, in_chans, image_size, image_size, dtype=torch.uint8, device=device)
            self.masks(blank, encoder)

    def masks(self, images: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """Foreground masks of a uint8 batch.

        Shape:
            images: (B, C, H, W) uint8; returns (B, H, W) bool.
        """
        x = images.float().div_(255.0)
        if self.cfg.saliency == "spectral":
            saliency = spectral_residual_saliency(x)
        else:
            if encoder is None:
                raise ValueError("activation saliency needs the encoder")
            mean = torch.tensor(self.mean, device=x.device)
            std = torch.tensor(self.std, device=x.device)
            saliency = activation_saliency(encoder, normalize(x, mean, std), self.backbone)
        return foreground_mask(saliency, self.cfg.threshold)

    def __call__(self, images: torch.Tensor, num_views: int, generator: torch.Generator,
                 encoder: nn.Module | None = None) -> list[torch.Tensor]:
        """The views' input images: each view's own composite of ``images``.

        Args:
            images: the uint8 batch (on the generator's device).
            num_views: views the augmentation makes.
            generator: this step's draws: one ``(B, 3)`` uniform block per view (apply, grey
                level, partner), in view order.
            encoder: the method's encoder (``saliency=activation``).

        Shape:
            images: (B, C, H, W) uint8; returns ``num_views`` (B, C, H, W) uint8 tensors.
        """
        mask = self.masks(images, encoder)
        out = []
        for _ in range(num_views):
            u = torch.rand((images.shape[0], 3), generator=generator, device=generator.device)
            apply = u[:, 0] < self.cfg.p
            out.append(composite(images, mask, apply, self.cfg.mode, self.cfg.fill, u[:, 1:]))
        return out
