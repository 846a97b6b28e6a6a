"""ContrastiveCrop (Peng et al., CVPR 2022, https://arxiv.org/abs/2202.03278): semantic-aware crops.

A crop strategy, not a method: it works under any method that takes RandomResizedCrop views.

1. **Localisation** (:func:`localize`): the heat map of an image is the channel sum of the
   encoder's last spatial feature map (:func:`last_feature_map`), min-max normalised per image
   and bilinearly upsampled to the image size (:func:`heat_maps`); its box is the bounding box of
   the pixels above the threshold k (:func:`boxes_from_heat_maps`). It runs over the whole
   training split (eval mode, no gradient, the raw images normalised with the dataset's
   mean / std) at the start of epoch ``warmup_epochs`` and every ``update_every`` epochs after
   (:func:`is_localization_epoch`); before that the views use plain random crops.
2. **Centre-suppressed sampling** (:class:`ContrastiveCropSampler`): the crop's area and aspect
   ratio are RandomResizedCrop's draws; its centre is drawn from Beta(alpha, alpha) across the
   box (alpha < 1 pushes it away from the box centre), the range of centres clamped so that the
   crop stays inside the image. It replaces only the crop placement of ``BatchAugment``'s
   batched parameters, with draws from the augmentation generator (resume-exact).

Under data parallelism every rank localises the whole split itself (the same weights give the
same boxes; nothing is communicated), and crops its own slice of each batch with them.

Deviations from the official code (github.com/xyupeng/ContrastiveCrop, ``DDP_*_ccrop.py``,
``datasets/transforms/ContrastiveCrop.py``):
    * Boxes and crops are continuous, not rounded to whole pixels (as sslbench's batched
      RandomResizedCrop); a box spans its pixels' full extent ``[first, last + 1) / side``
      (official: ``[first, last] / side``, half a pixel less on the far side).
    * Localisation at the start of epochs ``warmup + j * update_every`` (official: after epochs
      that are multiples of ``loc_interval`` and >= warm-up; the same epochs in every official
      config, whose warm-up is a multiple of the interval).
    * A heat map with no pixel above the threshold (a constant feature map) gives the whole image
      (official: a division by zero).
    * Beta draws come from the augmentation generator by Ulrich's (alpha > 1/2) or Jöhnk's
      method (torch's Beta sampler takes no generator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.augment import _crop_sizes, to_float_normalized
from sslbench.benchmark.backbones import feature_map
from sslbench.benchmark.config import CropConfig
from sslbench.benchmark.datasets import ArrayDataset, FolderDataset

__all__ = [
    "ContrastiveCropSampler",
    "beta_columns",
    "boxes_from_heat_maps",
    "check_feature_map",
    "heat_maps",
    "is_localization_epoch",
    "last_feature_map",
    "localize",
    "mean_box_area",
    "symmetric_beta",
]

#: Jöhnk's method draws this many candidate pairs per sample (acceptance >= 0.78 for alpha <= 1/2).
JOHNK_TRIES = 16


def is_localization_epoch(epoch: int, crop: CropConfig) -> bool:
    """Whether the boxes are (re)computed at the start of 0-based ``epoch``."""
    return (crop.mode == "ccrop" and epoch >= crop.warmup_epochs
            and (epoch - crop.warmup_epochs) % crop.update_every == 0)


def last_feature_map(encoder: nn.Module, images: torch.Tensor, backbone: str) -> torch.Tensor:
    """The encoder's last spatial feature map (:func:`~sslbench.benchmark.backbones.feature_map`).

    Shape:
        images: (B, C, H, W)
        return: (B, D, h, w)

    Raises:
        ConfigError: the backbone has no spatial feature map that sslbench can find.
    """
    return feature_map(encoder, images, what=f"crop.mode=ccrop (backbone '{backbone}')",
                       fix="Use small-cnn, a ResNet (resnet18-small, resnet50, ...), a ViT or another timm "
                           "model with forward_features, or crop.mode=random.")


def check_feature_map(encoder: nn.Module, backbone: str, in_chans: int, image_size: int) -> None:
    """Fails at the start of a run (not at the first localisation) when the backbone has no
    usable feature map: one forward pass of two blank images in eval mode.

    Raises:
        ConfigError: see :func:`last_feature_map`.
    """
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            blank = torch.zeros(2, in_chans, image_size, image_size, device=device)
            last_feature_map(encoder, blank, backbone)
    finally:
        encoder.train(was_training)


def heat_maps(features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Channel sum, min-max normalised per image, bilinearly upsampled to ``size`` (as the official
    ``update_box``). A constant map (nothing to localise) becomes all zeros.

    Shape:
        features: (B, D, h, w)
        return: (B, H, W) with ``(H, W) = size``, values in [0, 1]
    """
    b, _, h, w = features.shape
    heat = features.float().sum(dim=1).reshape(b, h * w)
    low, high = heat.amin(dim=1, keepdim=True), heat.amax(dim=1, keepdim=True)
    span = high - low
    scaled = (heat - low) / span.clamp_min(torch.finfo(heat.dtype).tiny)
    heat = torch.where(span > 0, scaled, torch.zeros_like(heat))
    heat = F.interpolate(heat.view(b, 1, h, w), size=(int(size[0]), int(size[1])), mode="bilinear",
                         align_corners=False)
    return heat.squeeze(1)


def boxes_from_heat_maps(heat: torch.Tensor, threshold: float) -> torch.Tensor:
    """The bounding box of the pixels above ``threshold``, as fractions of the image side.

    A pixel row r spans [r, r + 1), so the box of rows first..last is ``[first, last + 1) / H``.
    A map with no pixel above the threshold gives the whole image.

    Shape:
        heat: (B, H, W)
        return: (B, 4) ``(top, left, bottom, right)`` in [0, 1]
    """
    _, height, width = heat.shape
    above = heat > threshold
    rows, cols = above.any(dim=2), above.any(dim=1)  # (B, H), (B, W)

    def extent(hit: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = hit.to(torch.uint8).argmax(dim=1)
        last = side - 1 - hit.flip(1).to(torch.uint8).argmax(dim=1)
        return first.float() / side, (last + 1).float() / side

    top, bottom = extent(rows, height)
    left, right = extent(cols, width)
    boxes = torch.stack((top, left, bottom, right), dim=1)
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0], device=heat.device)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, whole)


@torch.no_grad()
def localize(encoder: nn.Module, backbone: str, dataset: ArrayDataset | FolderDataset, *,
             mean: Sequence[float], std: Sequence[float], threshold: float, batch_size: int,
             device: torch.device) -> torch.Tensor:
    """The ContrastiveCrop box of every image of ``dataset`` (in eval mode; the mode is restored).

    Returns:
        (N, 4) float32 ``(top, left, bottom, right)`` fractions on ``device``, row i for image i.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        boxes = torch.empty(len(dataset), 4, device=device)
        for batch in dataset.batches(batch_size):  # in order, every image
            x = to_float_normalized(batch.images.to(device, non_blocking=True), mean, std)
            heat = heat_maps(last_feature_map(encoder, x, backbone), x.shape[-2:])
            boxes[batch.indices.to(device)] = boxes_from_heat_maps(heat, threshold)
    finally:
        encoder.train(was_training)
    return boxes


def mean_box_area(boxes: torch.Tensor) -> float:
    """Mean box area as a fraction of the image (logged as ``train/ccrop_box_area``)."""
    return float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).mean())


def beta_columns(alpha: float) -> int:
    """Uniforms :func:`symmetric_beta` takes per sample."""
    return 2 if alpha > 0.5 else 2 * JOHNK_TRIES


def symmetric_beta(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Beta(alpha, alpha) samples from uniform draws (so that a ``torch.Generator`` drives them).

    alpha > 1/2, Ulrich's exact method: ``X = 1/2 + sin(2 pi u0) sqrt(1 - u1^(2 / (2 alpha - 1))) / 2``.
    alpha <= 1/2, Jöhnk's method: the first of ``JOHNK_TRIES`` pairs with
    ``u0^(1/alpha) + u1^(1/alpha) <= 1`` gives ``X = u0^(1/alpha) / (u0^(1/alpha) + u1^(1/alpha))``
    (computed in log space; acceptance >= 0.78, so all tries fail with probability < 1e-10, when
    the last pair is used). Devroye, Non-Uniform Random Variate Generation (1986), §IX.3-4.

    Shape:
        u: (..., beta_columns(alpha)) uniforms in [0, 1)
        return: (...,) in [0, 1]
    """
    if u.shape[-1] != beta_columns(alpha):
        raise ValueError(f"alpha={alpha} takes {beta_columns(alpha)} uniforms per sample, got {u.shape[-1]}.")
    if alpha > 0.5:
        radius = torch.sqrt(1.0 - u[..., 1].pow(2.0 / (2.0 * alpha - 1.0)))
        return 0.5 + 0.5 * torch.sin(2.0 * math.pi * u[..., 0]) * radius
    logs = torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)).unflatten(-1, (JOHNK_TRIES, 2)) / alpha
    log_x, log_y = logs[..., 0], logs[..., 1]
    accept = torch.logaddexp(log_x, log_y) <= 0
    first = torch.where(accept.any(dim=-1), accept.to(torch.uint8).argmax(dim=-1), JOHNK_TRIES - 1)
    return torch.sigmoid(log_x - log_y).gather(-1, first.unsqueeze(-1)).squeeze(-1)


def _start(lo: torch.Tensor, hi: torch.Tensor, extent: torch.Tensor, side: int,
           t: torch.Tensor) -> torch.Tensor:
    """Start of a crop of ``extent`` whose centre is ``lo + t (hi - lo)``, with both ends of that
    range first clamped so that the crop stays in ``[0, side]`` (as the official code)."""
    room = side - extent
    a = torch.minimum(torch.clamp(lo - extent / 2, min=0.0), room)
    b = torch.minimum(torch.clamp(hi - extent / 2, min=0.0), room)
    return a + t * (b - a)


@dataclass(frozen=True)
class ContrastiveCropSampler:
    """Crop boxes of one batch: RandomResizedCrop's sizes, centres Beta(alpha, alpha) in each
    image's ContrastiveCrop box. Passed to ``BatchAugment(images, generator, crop_sampler=...)``.

    Attributes:
        boxes: each image's box ``(top, left, bottom, right)`` as fractions, on the batch's device.
        alpha: the Beta parameter (``crop.alpha``).

    Shape:
        boxes: (B, 4)
    """

    boxes: torch.Tensor
    alpha: float

    def __call__(self, u: torch.Tensor, height: int, width: int, scale: tuple[float, float],
                 ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """One view's boxes ``(top, left, height, width)`` in pixels.

        Args:
            u: the view's RandomResizedCrop uniforms (area and ratio tries; the position columns
                are not used).
            height, width: the input images' size.
            scale, ratio: the view's RandomResizedCrop ranges.
            generator: draws the Beta variates (2 coordinates per image).

        Shape:
            u: (B, 2 * tries + 2)
            return: (B, 4)
        """
        if self.boxes.shape != (u.shape[0], 4):
            raise ValueError(
                f"boxes must be ({u.shape[0]}, 4) for this batch, got {tuple(self.boxes.shape)}.")
        h, w, fits = _crop_sizes(u, height, width, scale, ratio)
        shape = (u.shape[0], 2, beta_columns(self.alpha))
        draws = torch.rand(shape, generator=generator, device=generator.device)
        t = symmetric_beta(draws, self.alpha).to(u.dtype)  # (B, 2): vertical, horizontal
        box = self.boxes.to(u.dtype)
        top = _start(box[:, 0] * height, box[:, 2] * height, h, height, t[:, 0])
        left = _start(box[:, 1] * width, box[:, 3] * width, w, width, t[:, 1])
        # No area/ratio try fitted: RandomResizedCrop's centre crop, as the official code.
        top = torch.where(fits, top, (height - h) / 2)
        left = torch.where(fits, left, (width - w) / 2)
        return torch.stack((top, left, h, w), dim=1)
