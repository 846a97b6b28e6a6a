"""Learning to count (Noroozi, Pirsiavash & Favaro, ICCV 2017): a network phi maps an image to a
vector of non-negative "counts" of visual primitives; the counts of the 2x-downsampled image must
equal the sum of the counts of its four tiles (both have the same size), and a contrastive term
keeps the counts of another image at least a margin away, which rules out phi = 0. The evaluated
encoder is the plain backbone (phi = encoder -> head -> ReLU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.methods.base import Method, StepContext, StepOutput
from sslbench.methods.heads import mlp
from sslbench.methods.registry import register_method

#: Downsampling filters D is drawn from, per step (see CountingConfig.downsample_modes).
DOWNSAMPLE_MODES = ("bilinear", "bicubic", "area", "nearest")


def tiles(images: torch.Tensor) -> torch.Tensor:
    """The four non-overlapping tiles T_1..T_4 of each image (top-left, top-right, bottom-left,
    bottom-right); an odd last row or column is dropped.

    Shape:
        images: (B, C, H, W); return: (4, B, C, H // 2, W // 2).
    """
    h, w = images.shape[-2] // 2, images.shape[-1] // 2
    return torch.stack([images[..., i * h:(i + 1) * h, j * w:(j + 1) * w] for i in (0, 1) for j in (0, 1)])


def downsample(images: torch.Tensor, mode: str) -> torch.Tensor:
    """D: the image downsampled by 2 (to the tiles' size) with the filter ``mode``
    (:data:`DOWNSAMPLE_MODES`; bilinear and bicubic antialiased, area = 2x2 average).

    Shape:
        images: (B, C, H, W); return: (B, C, H // 2, W // 2).
    """
    if mode not in DOWNSAMPLE_MODES:
        raise ValueError(f"unknown downsampling mode {mode!r}; valid: {DOWNSAMPLE_MODES}")
    size = (images.shape[-2] // 2, images.shape[-1] // 2)
    x = images[..., :2 * size[0], :2 * size[1]]
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return F.interpolate(x, size=size, mode=mode)


def counting_loss(phi_down: torch.Tensor, phi_tiles: torch.Tensor, phi_other: torch.Tensor,
                  margin: float = 10.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The counting loss of Noroozi et al. 2017, eq. 4, averaged over the batch:

    ``l(x, y) = |phi(D x) - sum_j phi(T_j x)|^2 + max(0, M - |phi(D y) - sum_j phi(T_j x)|^2)``,

    the first term the counting constraint (scale and tiling), the second the contrastive term
    with another image y. Computed in float32 or wider.

    Args:
        phi_down: counts of the downsampled images D x.
        phi_tiles: counts of the 4 tiles of each image.
        phi_other: counts of the downsampled other images D y (row b: the image paired with b).
        margin: M.

    Shape:
        phi_down, phi_other: (B, k); phi_tiles: (4, B, k); return: the loss and the batch means of
        the two terms, each ().
    """
    dtype = torch.promote_types(phi_down.dtype, torch.float32)
    total = phi_tiles.to(dtype).sum(dim=0)
    equivariance = (phi_down.to(dtype) - total).square().sum(dim=1)
    contrast = (margin - (phi_other.to(dtype) - total).square().sum(dim=1)).clamp_min(0)
    return (equivariance + contrast).mean(), equivariance.mean(), contrast.mean()


@dataclass(frozen=True)
class CountingConfig:
    """Counting hyperparameters (defaults: Noroozi et al., ICCV 2017, §3.2 and §4).

    Attributes:
        num_counts: k, the dimension of the count vector (1000: AlexNet's fc8 + ReLU).
        margin: M of the contrastive term (10).
        head_hidden_dim: width of the hidden layers between the encoder's features and the
            counts (4096: AlexNet's fc6, fc7).
        head_layers: linear layers of the head (3: fc6-fc8); 1: one linear layer.
        downsample_modes: filters D is drawn from (one per step, uniformly): the paper
            randomises the downsampling filter so that the network cannot tell D x from the tiles
            by its filtering artefacts (a shortcut). The paper's exact list of filters was not
            checked here (not in PAPERS.md); torch has no Lanczos filter.
    """

    num_counts: int = 1000
    margin: float = 10.0
    head_hidden_dim: int = 4096
    head_layers: int = 3
    downsample_modes: tuple[str, ...] = DOWNSAMPLE_MODES

    def __post_init__(self) -> None:
        if self.num_counts < 1 or self.head_layers < 1 or self.head_hidden_dim < 1:
            raise ValueError("num_counts, head_layers and head_hidden_dim must be >= 1")
        if self.margin <= 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        modes = tuple(self.downsample_modes)
        if not modes or any(m not in DOWNSAMPLE_MODES for m in modes):
            raise ValueError(f"downsample_modes must be a non-empty subset of {DOWNSAMPLE_MODES}, got {modes}")
        object.__setattr__(self, "downsample_modes", modes)


@register_method(
    "counting", config=CountingConfig, family="pretext task, counting (scale and tiling equivariance)",
    paper="Noroozi, Pirsiavash & Favaro, Representation Learning by Learning to Count, ICCV 2017, "
          "https://arxiv.org/abs/1708.06734",
    default_recipe="counting-quick",
)
class Counting(Method):
    """phi = encoder -> head -> ReLU on the downsampled image and its four tiles (one forward of
    5 B images of the same size); the other image y of row b is row b + 1 of the batch (cyclic)."""

    num_views = 1

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: CountingConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.head = mlp(feature_dim, cfg.head_hidden_dim, cfg.num_counts, num_layers=cfg.head_layers)

    def counts(self, images: torch.Tensor) -> torch.Tensor:
        """phi: the non-negative count vector of each image.

        Shape:
            images: (B, C, H, W); return: (B, num_counts).
        """
        return F.relu(self.head(self.encoder(images)))

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        x = views[0]
        if min(x.shape[-2:]) < 2 or x.shape[0] < 2:
            raise ValueError(f"counting needs >= 2 images of >= 2 px, got a batch of shape {tuple(x.shape)}")
        modes = self.cfg.downsample_modes
        mode = modes[int(torch.randint(len(modes), (), generator=ctx.generator()))]
        parts = torch.cat((downsample(x, mode)[None], tiles(x)))  # (5, B, C, H/2, W/2)
        phi = self.counts(parts.flatten(0, 1)).view(5, x.shape[0], -1)
        phi_down, phi_tiles = phi[0], phi[1:]
        loss, equivariance, contrast = counting_loss(phi_down, phi_tiles, phi_down.roll(-1, dims=0),
                                                     self.cfg.margin)
        return StepOutput(loss=loss, logs={"count_equivariance": equivariance.detach(),
                                           "count_contrast": contrast.detach()})
