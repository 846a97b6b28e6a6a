"""Exemplar-CNN (Dosovitskiy, Springenberg, Riedmiller & Brox, NIPS 2014): every training image
gives one "seed" patch, taken where the image has strong gradients, and is its own surrogate class;
strongly transformed copies of the seed patch (translation, scale, rotation, contrast, colour) are
classified into the N surrogate classes. The evaluated encoder is the plain backbone.

The paper samples its transformed patches once (a fixed set of 100 per class); here K fresh
transformations of each seed patch are drawn at every step (ctx.generator()), and the seed patch
of an image is fixed across epochs: its position is drawn, with probability proportional to the
gradient energy inside the window, from a generator seeded by the run's seed and the image's
index. With an augmentation recipe that leaves the images as they are (``...-no-crop-no-flip``)
the view is the same image every epoch, so the seed patch is too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.augment import adjust_hue, grayscale
from sslbench.benchmark.color import device_constant, unnormalize
from sslbench.methods.base import EpochData, InputSpec, Method, StepContext, StepOutput
from sslbench.methods.heads import mlp
from sslbench.methods.registry import register_method


def gradient_energy(images: torch.Tensor) -> torch.Tensor:
    """Squared gradient magnitude of each image's luma: ``gx^2 + gy^2`` with central differences
    (``[-1, 0, 1] / 2``, replicated border).

    Shape:
        images: (B, C, H, W), C in {1, 3}, on any scale; return: (B, H, W).
    """
    y = F.pad(grayscale(images.float()), (1, 1, 1, 1), mode="replicate")
    gx = (y[..., 1:-1, 2:] - y[..., 1:-1, :-2]) / 2
    gy = (y[..., 2:, 1:-1] - y[..., :-2, 1:-1]) / 2
    return (gx.square() + gy.square())[:, 0]


def patch_position_probs(images: torch.Tensor, patch: int) -> torch.Tensor:
    """The probability of each ``patch x patch`` window (by its top-left pixel) to be the seed patch:
    proportional to the gradient energy inside the window (Dosovitskiy et al. §2: patches are
    sampled "from regions containing considerable gradients"); uniform on a flat image.

    ``P(i, j) = E(i, j) / sum E``, ``E(i, j) = sum of gradient_energy over the window``.

    Shape:
        images: (B, C, H, W); return: (B, H - patch + 1, W - patch + 1), each summing to 1.
    """
    energy = gradient_energy(images)[:, None].double()
    window = F.avg_pool2d(energy, patch, stride=1)[:, 0] * patch * patch
    window = window.clamp_min(0)
    total = window.sum(dim=(1, 2), keepdim=True)
    flat = total <= 1e-12 * patch * patch
    probs = torch.where(flat, torch.ones_like(window), window) / torch.where(
        flat, torch.full_like(total, window[0].numel()), total)
    return probs.float()


def image_uniforms(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """One uniform number per image, from a generator seeded by ``(seed, index)``: the same image
    draws the same number at every step and epoch.

    Shape:
        indices: (B,) int64; return: (B,) float64 in [0, 1), on the indices' device.
    """
    draws = []
    for i in indices.tolist():
        g = torch.Generator().manual_seed((seed * 1_000_003 + int(i) * 15_485_863 + 7) % (2**63 - 1))
        draws.append(float(torch.rand((), generator=g, dtype=torch.float64)))
    return torch.tensor(draws, dtype=torch.float64).to(indices.device)


def sample_patch_positions(images: torch.Tensor, patch: int, uniforms: torch.Tensor) -> torch.Tensor:
    """Top-left pixel of each image's seed patch, drawn from :func:`patch_position_probs` by
    inverting its cumulative distribution at ``uniforms`` (windows in row-major order).

    Shape:
        images: (B, C, H, W); uniforms: (B,) in [0, 1); return: (B, 2) int64 ``(top, left)``.
    """
    probs = patch_position_probs(images, patch)
    cols = probs.shape[-1]
    cdf = probs.flatten(1).double().cumsum(dim=1)
    cdf = cdf / cdf[:, -1:]
    pos = torch.searchsorted(cdf, uniforms.to(cdf)[:, None], right=True)[:, 0].clamp_(max=cdf.shape[1] - 1)
    return torch.stack((pos // cols, pos % cols), dim=1)


@dataclass(frozen=True)
class TransformParams:
    """The random transformations of a batch of seed patches (Dosovitskiy et al. §2).

    Shape:
        shift: (P, 2) translation ``(dy, dx)`` in units of the seed patch's side; scale: (P,)
        zoom factor; angle: (P,) rotation in radians; pca: (P, C) factor per principal
        component; sv_power, sv_mult, sv_add: (P, 2) for saturation and value; hue: (P,) shift
        in turns.
    """

    shift: torch.Tensor
    scale: torch.Tensor
    angle: torch.Tensor
    pca: torch.Tensor
    sv_power: torch.Tensor
    sv_mult: torch.Tensor
    sv_add: torch.Tensor
    hue: torch.Tensor


def _log_uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(n, generator=g, device=device)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


def adjust_saturation_value(images: torch.Tensor, power: torch.Tensor, mult: torch.Tensor,
                            add: torch.Tensor) -> torch.Tensor:
    """Exemplar-CNN's "contrast 2": saturation S and value V of HSV, per image, become
    ``clamp(X^power * mult + add, 0, 1)`` (X = S in column 0 of the parameters, V in column 1);
    hue unchanged. RGB is rebuilt from ``c = V - V S r(h)``: ``c' = V' - (V' S' / (V S)) (V - c)``.
    A 1-channel image is its value (S = 0).

    Shape:
        images: (P, C, H, W) in [0, 1], C in {1, 3}; power, mult, add: (P, 2); return: like images.
    """
    def new(x: torch.Tensor, col: int) -> torch.Tensor:
        p, m, a = (t[:, col].view(-1, 1, 1, 1).to(x.dtype) for t in (power, mult, add))
        return (x.clamp_min(0) ** p * m + a).clamp(0, 1)

    v = images.amax(dim=1, keepdim=True)
    if images.shape[1] == 1:
        return new(v, 1)
    delta = v - images.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    v2, s2 = new(v, 1), new(s, 0)
    ratio = torch.where(delta > 1e-12, v2 * s2 / delta.clamp_min(1e-12), torch.zeros_like(v))
    return (v2 - ratio * (v - images)).clamp(0, 1)


@dataclass(frozen=True)
class ExemplarConfig:
    """Exemplar-CNN hyperparameters (defaults: Dosovitskiy et al., NIPS 2014, §2 and §3).

    Attributes:
        patch_fraction: side of the seed patch as a fraction of the image side (1/3: 32 px patches
            of the 96 px STL-10 images).
        patch_size: side in pixels of the transformed patches the network sees (32).
        num_transforms: K, transformed copies of each seed patch per step (sslbench: the paper
            draws 100 per class once, §3, Fig. 3; here fresh ones each step).
        translate: largest shift, vertical and horizontal, as a fraction of the patch side (0.2).
        scale: range of the scale factor (0.7-1.4), drawn log-uniformly (the paper gives the range).
        rotate_deg: largest rotation in degrees (20).
        pca_factor: range of the factor on each principal component of the pixels ("contrast 1":
            0.5-2), log-uniform.
        sv_power: range of the power on saturation and value ("contrast 2": 0.25-4), log-uniform.
        sv_mult: range of the factor on saturation and value (0.7-1.4).
        sv_add: largest value added to saturation and value (0.1).
        hue_shift: largest hue shift in turns ("color": 0.1).
        embed_dim: width of the fully connected layer before the N-way softmax (512: the paper's
            64c5-128c5-256c5-512f network); 0: a linear classifier on the encoder's features.
    """

    patch_fraction: float = 1 / 3
    patch_size: int = 32
    num_transforms: int = 2
    translate: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)
    rotate_deg: float = 20.0
    pca_factor: tuple[float, float] = (0.5, 2.0)
    sv_power: tuple[float, float] = (0.25, 4.0)
    sv_mult: tuple[float, float] = (0.7, 1.4)
    sv_add: float = 0.1
    hue_shift: float = 0.1
    embed_dim: int = 512

    def __post_init__(self) -> None:
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(f"patch_fraction must be in (0, 1], got {self.patch_fraction}")
        if self.patch_size < 4 or self.num_transforms < 1 or self.embed_dim < 0:
            raise ValueError("need patch_size >= 4, num_transforms >= 1 and embed_dim >= 0")
        for name in ("scale", "pca_factor", "sv_power", "sv_mult"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi, got {getattr(self, name)}")
            object.__setattr__(self, name, (float(lo), float(hi)))
        if min(self.translate, self.rotate_deg, self.sv_add, self.hue_shift) < 0 or self.hue_shift > 0.5:
            raise ValueError("translate, rotate_deg, sv_add must be >= 0 and hue_shift in [0, 0.5]")


def sample_transforms(n: int, channels: int, cfg: ExemplarConfig, g: torch.Generator,
                      device: torch.device) -> TransformParams:
    """Draws the transformations of ``n`` patches from ``g`` (in a fixed order: the same generator
    state gives the same transformations)."""
    return TransformParams(
        shift=_uniform((n, 2), -cfg.translate, cfg.translate, g, device),
        scale=_log_uniform(n, *cfg.scale, g, device),
        angle=_uniform((n,), -math.radians(cfg.rotate_deg), math.radians(cfg.rotate_deg), g, device),
        pca=torch.stack([_log_uniform(n, *cfg.pca_factor, g, device) for _ in range(channels)], dim=1),
        sv_power=torch.stack([_log_uniform(n, *cfg.sv_power, g, device) for _ in range(2)], dim=1),
        sv_mult=_uniform((n, 2), *cfg.sv_mult, g, device),
        sv_add=_uniform((n, 2), -cfg.sv_add, cfg.sv_add, g, device),
        hue=_uniform((n,), -cfg.hue_shift, cfg.hue_shift, g, device),
    )


def extract_patches(images: torch.Tensor, boxes: torch.Tensor, size: int, params: TransformParams) -> torch.Tensor:
    """The seed patches under their geometric transformation, resampled bilinearly from the whole
    image (border pixels repeat outside it): the patch's centre moves by ``shift`` patch sides, its
    content is zoomed by ``scale`` (a larger scale shows a smaller region) and rotated by ``angle``.
    With no shift, scale 1 and angle 0 the output is the seed patch itself resized to ``size``.

    Shape:
        images: (P, C, H, W); boxes: (P, 3) ``(top, left, side)`` in pixels; return: (P, C, size,
        size).
    """
    p, _, h, w = images.shape
    top, left, side = boxes.to(images.dtype).unbind(dim=1)
    cy = top + side / 2 + params.shift[:, 0].to(images.dtype) * side
    cx = left + side / 2 + params.shift[:, 1].to(images.dtype) * side
    half = side / 2 / params.scale.to(images.dtype)  # half side of the sampled region, pixels
    cos, sin = params.angle.to(images.dtype).cos(), params.angle.to(images.dtype).sin()
    # Output (u, v) in [-1, 1] -> source pixel (cx + half (cos u - sin v), cy + half (sin u + cos v)),
    # in the normalised coordinates of grid_sample (align_corners=False: x_norm = 2 x / W - 1).
    theta = torch.zeros(p, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 0, 1] = 2 * half * cos / w, -2 * half * sin / w
    theta[:, 1, 0], theta[:, 1, 1] = 2 * half * sin / h, 2 * half * cos / h
    theta[:, 0, 2], theta[:, 1, 2] = 2 * cx / w - 1, 2 * cy / h - 1
    grid = F.affine_grid(theta, [p, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def photometric(patches: torch.Tensor, params: TransformParams, pixel_mean: torch.Tensor,
                pixel_pcs: torch.Tensor) -> torch.Tensor:
    """Exemplar-CNN's colour transformations, in order: "contrast 1" (each pixel's projection on
    the principal components of all pixels, ``x' = mu + E diag(f) E^T (x - mu)``), "contrast 2"
    (:func:`adjust_saturation_value`) and "color" (hue shift), clamped to [0, 1] after each.

    Shape:
        patches: (P, C, S, S) in [0, 1]; pixel_mean: (C,); pixel_pcs: (C, C), one component per
        column; return: (P, C, S, S).
    """
    mu = pixel_mean.view(1, -1, 1, 1).to(patches.dtype)
    e = pixel_pcs.to(patches.dtype)
    coords = torch.einsum("cd,pchw->pdhw", e, patches - mu) * params.pca.to(patches.dtype)[:, :, None, None]
    x = (mu + torch.einsum("cd,pdhw->pchw", e, coords)).clamp(0, 1)
    x = adjust_saturation_value(x, params.sv_power, params.sv_mult, params.sv_add)
    return adjust_hue(x, params.hue) if x.shape[1] == 3 else x


@register_method(
    "exemplar", config=ExemplarConfig, family="pretext task, surrogate classes (one per image)",
    paper="Dosovitskiy, Springenberg, Riedmiller & Brox, Discriminative Unsupervised Feature Learning "
          "with Convolutional Neural Networks, NIPS 2014, https://arxiv.org/abs/1406.6909",
    default_recipe="exemplar-quick", needs_num_samples=True, needs_input=True,
)
class Exemplar(Method):
    """Seed patch per image -> K transformed copies -> encoder -> FC -> N-way softmax over the
    training images.

    The pixels' mean and principal components ("contrast 1") are computed once from the whole
    training split in :meth:`on_epoch_start` of the first epoch and kept in buffers.
    """

    num_views = 1  # the recipe's first view is the image the seed patch is taken from
    pixel_mean: torch.Tensor  # (C,) mean pixel of the training split, [0, 1] scale
    pixel_pcs: torch.Tensor  # (C, C) principal components of its pixels, one per column
    pca_ready: torch.Tensor  # () bool

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: ExemplarConfig, *, num_samples: int = 0,
                 input_spec: InputSpec) -> None:
        super().__init__(encoder, feature_dim)
        if num_samples < 2:
            raise ValueError(f"Exemplar-CNN has one surrogate class per training image and needs the "
                             f"training split's size (>= 2) as num_samples, got {num_samples}")
        self.cfg = cfg
        self.input_spec = input_spec
        self.num_samples = num_samples
        c = input_spec.channels
        self.classifier = (mlp(feature_dim, cfg.embed_dim, num_samples) if cfg.embed_dim
                           else nn.Linear(feature_dim, num_samples))
        self.register_buffer("pixel_mean", torch.tensor(input_spec.mean, dtype=torch.float32))
        self.register_buffer("pixel_pcs", torch.eye(c))
        self.register_buffer("pca_ready", torch.tensor(False))
        self._uniform_tables: dict[tuple[int, str], torch.Tensor] = {}

    def batch_uniforms(self, indices: torch.Tensor, seed: int) -> torch.Tensor:
        """:func:`image_uniforms` of the batch, gathered on the device from a table of every
        image's number (built on the host once per seed and device), so a step reads no indices
        back from the device.

        Shape:
            indices: (B,) int64 in [0, num_samples); return: (B,) float64 on the indices' device.
        """
        key = (seed, str(indices.device))
        if key not in self._uniform_tables:
            self._uniform_tables[key] = image_uniforms(torch.arange(self.num_samples), seed).to(indices.device)
        return self._uniform_tables[key][indices]

    def seed_patch_side(self, image_size: int) -> int:
        """The seed patch's side in pixels for images of ``image_size`` px."""
        return max(1, min(image_size, round(self.cfg.patch_fraction * image_size)))

    @torch.no_grad()
    def on_epoch_start(self, ctx: StepContext, data: EpochData) -> dict[str, float]:
        if self._pca_ready():
            return {}
        c = self.input_spec.channels
        n, total, outer = 0, torch.zeros(c, dtype=torch.float64), torch.zeros(c, c, dtype=torch.float64)
        for images, _ in data.batches(256):
            x = unnormalize(images.float(), self.input_spec.mean, self.input_spec.std).clamp(0, 1)
            pixels = x.transpose(0, 1).reshape(c, -1).double().cpu()
            n += pixels.shape[1]
            total += pixels.sum(dim=1)
            outer += pixels @ pixels.T
        mean = total / max(n, 1)
        cov = outer / max(n, 1) - torch.outer(mean, mean)
        _, vectors = torch.linalg.eigh(cov)
        self.pixel_mean.copy_(mean)
        self.pixel_pcs.copy_(vectors.flip(1))  # largest component first
        self.pca_ready.fill_(True)
        self.set_host_value("pca_ready", True)
        return {}

    def _pca_ready(self) -> bool:
        """``pca_ready`` from a Python-side copy (read once per build or load, not every step)."""
        return self.host_value("pca_ready", lambda: bool(self.pca_ready))

    def make_patches(self, views: list[torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The K transformed seed patches of every image (normalised) and their surrogate labels
        (the images' dataset indices); patch k of image b is row ``k B + b``.

        Shape:
            return: (K B, C, S, S) and (K B,) int64.
        """
        if ctx.indices is None:
            raise ValueError("Exemplar-CNN needs the batch's dataset indices (StepContext.indices): "
                             "they are the surrogate classes")
        if not self._pca_ready():
            raise RuntimeError("Exemplar-CNN's pixel principal components are computed in on_epoch_start "
                               "(the engine calls it before each epoch); it was not called")
        x = views[0]
        mean, std = self.input_spec.mean, self.input_spec.std
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            images = unnormalize(x.float(), mean, std).clamp(0, 1)
            side = self.seed_patch_side(min(images.shape[-2:]))
            pos = sample_patch_positions(images, side, self.batch_uniforms(ctx.indices, ctx.seed))
            k, b = self.cfg.num_transforms, images.shape[0]
            boxes = torch.cat((pos, torch.full_like(pos[:, :1], side)), dim=1).repeat(k, 1)
            params = sample_transforms(k * b, images.shape[1], self.cfg, ctx.generator(x.device), x.device)
            patches = extract_patches(images.repeat(k, 1, 1, 1), boxes, self.cfg.patch_size, params)
            patches = photometric(patches, params, self.pixel_mean, self.pixel_pcs)
            m = device_constant(tuple(mean), torch.float32, x.device).view(1, -1, 1, 1)  # no copy per step
            s = device_constant(tuple(std), torch.float32, x.device).view(1, -1, 1, 1)
            patches = ((patches - m) / s).to(x.dtype)
        labels = ctx.indices.to(device=x.device, dtype=torch.long).repeat(k)
        return patches, labels

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        patches, labels = self.make_patches(views, ctx)
        logits = self.classifier(self.encoder(patches))
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(loss=loss, logs={"pretext_acc": accuracy})
