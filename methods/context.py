"""Context prediction (Doersch, Gupta & Efros, ICCV 2015): from a centre patch and one of its 8
neighbours, sampled with a gap between them and a random jitter, a pair network (one shared
encoder, late fusion) classifies the neighbour's relative position (8-way cross-entropy).

The patch geometry is in pixels of the view the augmentation produces: the 3 x 3 layout of
``patch_size`` patches separated by ``gap`` pixels, every patch moved by up to ``jitter`` pixels
in each axis, must fit inside the view (``3 p + 2 g + 2 j <= side``). The evaluated encoder is the
plain backbone, applied to whole images.

Chromatic aberration (the paper's §3.1 shortcut: lenses shift colour channels towards the image
border, so one colour channel can reveal where a patch lies) is handled, on colour data, by the
paper's *colour dropping*: every patch keeps one random colour channel and the other two are
replaced by Gaussian noise with 1/100 of the kept channel's standard deviation (the paper's
other option, projection towards grey along green-magenta, is not implemented). Grayscale input
has no chromatic aberration, and colour dropping is then a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import rank
from sslbench.methods.base import Method, StepContext, StepOutput
from sslbench.methods.heads import mlp
from sslbench.methods.registry import register_method

#: The 8 neighbours' (row, column) steps from the centre in units of ``patch_size + gap``; the
#: label of a pair is the index into this tuple (raster order, the centre skipped).
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1), (0, 1),
    (1, -1), (1, 0), (1, 1),
)  # fmt: skip


def crop_patches(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Square patches cut out by index (no interpolation): patch k of image b is
    ``images[b, :, top[b, k]:top[b, k] + size, left[b, k]:left[b, k] + size]``.

    Args:
        images: the batch.
        top, left: integer top-left corners, each patch inside its image.
        size: the patches' side in pixels.

    Shape:
        images: (B, C, H, W); top, left: (B, K) int64; return: (B, K, C, size, size).
    """
    steps = torch.arange(size, device=images.device)
    rows = (top[..., None] + steps)[..., :, None]  # (B, K, size, 1)
    cols = (left[..., None] + steps)[..., None, :]  # (B, K, 1, size)
    batch = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    # Advanced indices separated by the channel slice: the broadcast (B, K, size, size) comes
    # first, the channel last.
    return images[batch, :, rows, cols].permute(0, 1, 4, 2, 3)


def sample_patch_pairs(batch: int, side: int, patch_size: int, gap: int, jitter: int,
                       generator: torch.Generator, device: torch.device | str = "cpu",
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners of the 3 x 3 patch layout of every image, in the paper's geometry.

    The layout's nominal cells are ``stride = patch_size + gap`` apart; its origin is uniform over
    the positions that keep every jittered patch inside the image, and every patch then moves by
    its own uniform integer jitter in ``[-jitter, jitter]`` per axis (so two neighbours are at
    least ``gap - 2 jitter`` pixels apart). Row-major cell k = 3 r + c; cell 4 is the centre and
    the neighbour of label l is cell ``(1 + dr) * 3 + (1 + dc)`` with ``(dr, dc) =
    NEIGHBOUR_OFFSETS[l]``.

    Args:
        batch: images.
        side: the (square) images' side in pixels.
        patch_size, gap, jitter: the geometry, in pixels.
        generator: the source of every random draw.
        device: where the corners live (the generator's device).

    Returns:
        ``(top, left)``, each (B, 9) int64.

    Raises:
        ValueError: the layout does not fit in ``side`` pixels.
    """
    extent = 3 * patch_size + 2 * gap + 2 * jitter
    if extent > side:
        raise ValueError(f"3 patches of {patch_size} px with gaps of {gap} px and jitter {jitter} px "
                         f"need {extent} px; the views are {side} px")
    nominal = torch.arange(3, device=device) * (patch_size + gap)
    # axis 0: a cell's row r varies along dim 1 of the (B, 3, 3) grid; axis 1: its column c, dim 2.
    corners = []
    for along in (nominal.view(1, 3, 1), nominal.view(1, 1, 3)):
        origin = jitter + torch.randint(0, side - extent + 1, (batch, 1, 1), generator=generator,
                                        device=device)
        shift = torch.randint(-jitter, jitter + 1, (batch, 3, 3), generator=generator, device=device)
        corners.append((origin + along + shift).flatten(1))
    return corners[0], corners[1]


def neighbour_cell(labels: torch.Tensor) -> torch.Tensor:
    """Row-major cell index (0..8) of the neighbour that each label (0..7) names.

    Shape:
        labels: (N,) int64; return: (N,).
    """
    # NEIGHBOUR_OFFSETS lists the 8 cells in row-major order without the centre (cell 4); no
    # table copied to the device (a host-device sync every step).
    return labels + (labels >= 4).to(labels.dtype)


def drop_colour_channels(patches: torch.Tensor, generator: torch.Generator,
                         noise_ratio: float = 0.01) -> torch.Tensor:
    """Colour dropping (Doersch et al. 2015, §3.1): each patch keeps one uniformly drawn colour
    channel; the others become Gaussian noise with ``noise_ratio`` x the kept channel's standard
    deviation (over the patch's pixels). Patches with other than 3 channels are returned as they
    are (grayscale has no chromatic aberration).

    Shape:
        patches: (N, C, h, w); return: the same.
    """
    if patches.shape[1] != 3:
        return patches
    n = patches.shape[0]
    keep = torch.randint(0, 3, (n,), generator=generator, device=patches.device)
    kept = patches[torch.arange(n, device=patches.device), keep]  # (N, h, w)
    std = kept.flatten(1).std(dim=1, unbiased=False).view(n, 1, 1, 1)
    noise = torch.randn(patches.shape, generator=generator, device=patches.device, dtype=patches.dtype)
    mask = F.one_hot(keep, 3).to(patches.dtype).view(n, 3, 1, 1)
    return mask * patches + (1 - mask) * noise * (noise_ratio * std)


def relative_position_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The 8-way relative-position cross-entropy (Doersch et al. 2015, §3):
    ``L = -1/N sum_n log softmax(s_n)[y_n]``, with ``s_n`` the pair network's scores of pair n
    and ``y_n`` the index of the neighbour's position in :data:`NEIGHBOUR_OFFSETS`.

    Shape:
        logits: (N, 8); labels: (N,) int64; return: ().
    """
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class ContextConfig:
    """Context-prediction hyperparameters (defaults: the paper's ImageNet geometry, §3-4, and the
    ResNet-50 pair network of open-mmlab/mmselfsup ``relative_loc``).

    Attributes:
        patch_size: patch side in pixels (96 in the paper).
        gap: pixels between the centre patch and its neighbours (48, half a patch).
        jitter: every patch moves by up to this many pixels per axis (7).
        colour_dropping: on colour input, keep one random channel per patch and replace the others
            by faint noise (the paper's colour-dropping variant, its best for detection: 46.3 vs
            45.7 VOC07 mAP with projection, PAPERS.md §2.18). No effect on grayscale input.
        all_pairs: every image contributes its 8 (centre, neighbour) pairs, each neighbour once
            (mmselfsup's ``RelativeLocDataset``); off: one pair per image with a uniformly drawn
            neighbour, as the paper samples.
        input_size: patches are resized (bilinear) to this side before the encoder; 0 keeps
            their own size (the paper feeds its 96 px patches as they are).
        patch_fc_dim: a per-patch Linear -> BN -> ReLU layer of this width before the fusion (the
            role of AlexNet's fc6 in the paper's towers); 0: the encoder's features are fused
            directly (mmselfsup's ResNet-50 ``RelativeLocNeck``).
        hidden_dim: width of the fused hidden layer (4096, mmselfsup ``RelativeLocNeck``
            ``out_channels``; the paper's fc7 is 4096 wide too).
    """

    patch_size: int = 96
    gap: int = 48
    jitter: int = 7
    colour_dropping: bool = True
    all_pairs: bool = False
    input_size: int = 0
    patch_fc_dim: int = 0
    hidden_dim: int = 4096

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.hidden_dim < 1:
            raise ValueError(f"patch_size and hidden_dim must be >= 1, got {self.patch_size}, "
                             f"{self.hidden_dim}")
        if min(self.gap, self.jitter, self.input_size, self.patch_fc_dim) < 0:
            raise ValueError("gap, jitter, input_size and patch_fc_dim must be >= 0")


@register_method(
    "context", config=ContextConfig, family="pretext task, relative patch position (8-way)",
    paper="Doersch, Gupta & Efros, Unsupervised Visual Representation Learning by Context "
          "Prediction, ICCV 2015, https://arxiv.org/abs/1505.05192",
    default_recipe="context-quick",
)
class ContextPrediction(Method):
    """Shared encoder on both patches -> (per-patch fc) -> concatenation -> MLP -> 8 positions.

    Pairs, labels, jitter and colour dropping are drawn inside :meth:`training_step` from
    ``ctx.generator()``, so a resumed run draws the same ones (under data parallelism each rank
    draws from its own stream, so the draws depend on the number of processes). The pair
    network's layers use batch norm and no dropout (dropout would draw from the global RNG,
    which a resumed run does not restore); mmselfsup's ResNet-50 neck has BN as well.
    """

    num_views = 1

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: ContextConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        if cfg.patch_fc_dim:
            self.patch_fc: nn.Module = nn.Sequential(
                nn.Linear(feature_dim, cfg.patch_fc_dim, bias=False), nn.BatchNorm1d(cfg.patch_fc_dim),
                nn.ReLU(inplace=True))
        else:
            self.patch_fc = nn.Identity()
        self.classifier = mlp(2 * (cfg.patch_fc_dim or feature_dim), cfg.hidden_dim, len(NEIGHBOUR_OFFSETS))

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        x = views[0]
        cfg, b = self.cfg, x.shape[0]
        g = ctx.generator(x.device, stream=rank())  # each data-parallel rank its own draws
        top, left = sample_patch_pairs(b, x.shape[-1], cfg.patch_size, cfg.gap, cfg.jitter, g, x.device)
        if cfg.all_pairs:  # the 8 neighbours of each image, in label order
            labels = torch.arange(8, device=x.device).repeat(b)
            cells = torch.cat([torch.full((b, 1), 4, device=x.device), neighbour_cell(labels).view(b, 8)], 1)
        else:
            labels = torch.randint(0, 8, (b,), generator=g, device=x.device)
            cells = torch.stack([torch.full_like(labels, 4), neighbour_cell(labels)], dim=1)
        patches = crop_patches(x, top.gather(1, cells), left.gather(1, cells), cfg.patch_size)
        k = patches.shape[1]  # 2, or 9 with all_pairs (the centre first)
        flat = patches.flatten(0, 1)  # (B * k, C, p, p)
        if cfg.colour_dropping:
            flat = drop_colour_channels(flat, g)
        if cfg.input_size and cfg.input_size != cfg.patch_size:
            flat = F.interpolate(flat, size=(cfg.input_size, cfg.input_size), mode="bilinear",
                                 align_corners=False)
        h = self.patch_fc(self.encoder(flat)).view(b, k, -1)
        centre = h[:, :1].expand(-1, k - 1, -1)
        pairs = torch.cat([centre, h[:, 1:]], dim=2).flatten(0, 1)  # (B * (k - 1), 2 D)
        logits = self.classifier(pairs)
        loss = relative_position_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(loss=loss, logs={"pretext_acc": accuracy})
