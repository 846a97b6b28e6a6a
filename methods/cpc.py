"""CPC v2 (Hénaff et al., ICML 2020): the image is cut into a grid of overlapping patches, each
patch is encoded on its own, a masked (row-causal) PixelCNN-style context network summarises the
rows above every position, and linear predictors ``W_k`` pick the latent of the patch k rows
below out of all patches of the batch (InfoNCE). Patches are augmented independently.

The evaluated encoder is the patch grid itself (:class:`PatchGridEncoder`, registered as the
``"patch-grid"`` encoder wrapper): the backbone's features averaged over the grid, as the paper's
linear evaluation pools the patch latents spatially.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.augment import crop_resize
from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.errors import ConfigError
from sslbench.methods.base import InputSpec, Method, StepContext, StepOutput
from sslbench.methods.encoders import EncoderSpec, register_encoder
from sslbench.methods.losses import fp32, fp32_matmul
from sslbench.methods.registry import register_method

NORMS = ("layer", "batch")
#: Prediction directions: 1 = top to bottom (CPC v1, the pseudocode); 2 adds bottom to top; 4 adds
#: left to right and right to left (CPC v2 Fig. 3 "BU" and "HP", as recalled; unverified).
DIRECTIONS = (1, 2, 4)

# ------------------------------------------------------------------------------------------------
# The patch grid (the evaluated encoder)


def layer_norm_backbone(module: nn.Module) -> nn.Module:
    """Replaces every ``nn.BatchNorm2d`` of ``module`` (in place) by ``GroupNorm(1, C)``: layer
    normalisation over (C, H, W) of each patch, with a per-channel affine (CPC v2 §4.1: batch
    norm lets the patches of a batch see each other, a shortcut around the receptive-field
    constraints of the task, and harms the features; layer norm does not).

    Raises:
        ConfigError: a batch-norm variant other than ``nn.BatchNorm2d`` (e.g. timm's fused
            BatchNormAct2d), which cannot be swapped without changing the network.
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            norm = nn.GroupNorm(1, child.num_features, eps=child.eps, affine=child.affine)
            setattr(module, name, norm)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(f"The backbone's {type(child).__name__} cannot be turned into layer norm.",
                              "Use method.norm=batch, or a backbone built from nn.BatchNorm2d (small-cnn, "
                              "resnet*-small, timm ResNets).")
        else:
            layer_norm_backbone(child)
    return module


class PatchGridEncoder(nn.Module):
    """A backbone applied to every patch of an overlapping grid (CPC v2 §3).

    Patches are ``patch`` × ``patch`` pixels of the (normalised) input, ``stride`` pixels apart,
    both in pixels of the image the encoder receives: an H × W input gives a grid of
    ``gh = (H - patch) // stride + 1`` rows and ``gw = (W - patch) // stride + 1`` columns
    (pixels past the last whole patch are not seen). The features of an image are the mean of
    its patches' backbone features (CPC v2 evaluates the spatially pooled patch latents).

    Args:
        backbone: an sslbench or timm backbone name, built for ``patch`` px inputs.
        input_spec: the training input (channels, image size).
        patch: patch side in px.
        stride: distance between neighbouring patches in px.
        norm: ``"layer"`` replaces the backbone's batch norms by layer norm (CPC v2); ``"batch"``
            keeps them (CPC v1; statistics are then shared by all patches of a batch).

    Shape:
        input: (B, C, H, W); output: (B, D).

    Raises:
        ConfigError: a patch larger than the image, a stride < 1, or an unknown ``norm``.
    """

    def __init__(self, backbone: str, input_spec: InputSpec, patch: int, stride: int, norm: str = "layer") -> None:
        super().__init__()
        if not 1 <= patch <= input_spec.image_size or stride < 1:
            raise ConfigError(f"A patch grid needs 1 <= patch <= the image side ({input_spec.image_size} px) "
                              f"and stride >= 1; got patch {patch}, stride {stride}.",
                              "Set method.patch_size and method.patch_stride in pixels of the training images.")
        if norm not in NORMS:
            raise ConfigError(f"Unknown patch-grid norm {norm!r}.", f"Use one of {', '.join(NORMS)}.")
        self.patch, self.stride, self.norm = patch, stride, norm
        net, self.dim = build_backbone(backbone, input_spec.channels, patch)
        self.backbone = layer_norm_backbone(net) if norm == "layer" else net

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """``(gh, gw)``: rows and columns of patches in an image of this size."""
        if min(height, width) < self.patch:
            raise ConfigError(f"A {height}x{width} image is smaller than the {self.patch} px patches.",
                              "Evaluate at the training image size.")
        return (height - self.patch) // self.stride + 1, (width - self.patch) // self.stride + 1

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The patches of every image, row-major (image, row, column).

        Shape:
            x: (B, C, H, W); return: (B * gh * gw, C, patch, patch).
        """
        p, s = self.patch, self.stride
        gh, gw = self.grid_size(x.shape[-2], x.shape[-1])
        grid = x.unfold(2, p, s).unfold(3, p, s)[:, :, :gh, :gw]  # (B, C, gh, gw, p, p)
        return grid.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1], p, p)

    def encode(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Backbone features of row-major patches, laid out on their grid.

        Shape:
            patches: (B * gh * gw, C, patch, patch); return: (B, D, gh, gw).
        """
        gh, gw = grid
        z = self.backbone(patches)
        return z.view(-1, gh, gw, z.shape[1]).permute(0, 3, 1, 2)

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """The latent grid ``z`` of the patches of ``x``.

        Shape:
            x: (B, C, H, W); return: (B, D, gh, gw).
        """
        return self.encode(self.patches(x), self.grid_size(x.shape[-2], x.shape[-1]))

    def dense_branches(self) -> list[tuple[nn.Module, nn.Module]]:
        """The dense-feature hook of the detection protocol: the backbone on the whole image, no
        patches (CPC v2's transfer to PASCAL VOC detection runs the patch encoder on the whole image;
        as recalled from the paper, section not re-checked).

        Returns:
            One branch, (identity transform, the backbone).
        """
        return [(nn.Identity(), self.backbone)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid(x).mean(dim=(2, 3))


@register_encoder("patch-grid")
def _patch_grid(backbone: str, input_spec: InputSpec, patch: int, stride: int, norm: str = "layer") -> nn.Module:
    return PatchGridEncoder(backbone, input_spec, patch=patch, stride=stride, norm=norm)


# ------------------------------------------------------------------------------------------------
# Patch-level augmentation


def augment_patches(patches: torch.Tensor, generator: torch.Generator, *, crop_scale: float = 1.0,
                    flip_p: float = 0.0, color_drop_p: float = 0.0, jitter: float = 0.0) -> torch.Tensor:
    """Augments every patch independently (CPC v2 §4.1, patch-based augmentation).

    Per patch, from one ``torch.rand`` draw of 8 columns (a fixed layout, so turning one op off
    leaves the others' draws unchanged):

    * random crop: a square of side ``U[crop_scale, 1] x patch`` at a uniform position, resized
      back to ``patch`` px (bilinear), then a horizontal flip with probability ``flip_p``;
    * jitter (for grayscale data, where colour dropping does nothing): contrast
      ``x <- (x - m) * a + m + b`` around the patch mean m, with ``a ~ U[1 - jitter, 1 + jitter]``
      and ``b ~ U[-jitter, jitter]``, in the normalised units of the input;
    * colour dropping: with probability ``color_drop_p`` all channels but one (uniformly chosen)
      are set to 0 (the dataset mean after normalisation); only for 3-channel patches.

    Args:
        patches: normalised float patches.
        generator: the source of every draw; its device is the patches' device.
        crop_scale: smallest crop side as a fraction of the patch side (1: no crop).
        flip_p: horizontal flip probability.
        color_drop_p: probability of dropping two of the three colour channels.
        jitter: contrast and brightness strength (0: none).

    Shape:
        patches: (N, C, p, p); return: (N, C, p, p).
    """
    n, c, p, _ = patches.shape
    u = torch.rand((n, 8), generator=generator, device=generator.device).to(patches.dtype)
    side = p * (crop_scale + (1.0 - crop_scale) * u[:, 0])
    boxes = torch.stack((u[:, 1] * (p - side), u[:, 2] * (p - side), side, side), dim=1)
    out = crop_resize(patches, boxes, p, u[:, 3] < flip_p)
    if jitter > 0:
        a = (1.0 + jitter * (2.0 * u[:, 4] - 1.0)).view(n, 1, 1, 1)
        b = (jitter * (2.0 * u[:, 5] - 1.0)).view(n, 1, 1, 1)
        m = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - m) * a + m + b
    if c == 3 and color_drop_p > 0:
        keep = F.one_hot((u[:, 7] * c).long().clamp_max(c - 1), c).bool()  # (N, C)
        mask = keep | (u[:, 6] >= color_drop_p)[:, None]
        out = out * mask.to(out.dtype)[:, :, None, None]
    return out


# ------------------------------------------------------------------------------------------------
# Context network, orientation and the loss


class PixelCNNBlock(nn.Module):
    """One residual block of CPC v2's ``pixelCNN`` (App. A): ``c + W_4 relu(W_3 pad_top(W_2 relu(W_1 c)))``
    with W_1 a 1x1 conv to ``hidden``, W_2 a 1x3 conv along the row (zero-padded), ``pad_top`` one
    zero row above, W_3 a 2x1 conv (valid) and W_4 a 1x1 conv back to ``dim``.

    The padded 2x1 convolution is a vertically masked convolution: output row i reads input rows
    i - 1 and i only.

    Shape:
        input: (B, dim, H, W); output: (B, dim, H, W).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(dim, hidden, 1)
        self.row = nn.Conv2d(hidden, hidden, (1, 3), padding=(0, 1))
        self.down = nn.Conv2d(hidden, hidden, (2, 1))
        self.expand = nn.Conv2d(hidden, dim, 1)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        h = self.row(F.relu(self.reduce(c)))
        h = F.relu(self.down(F.pad(h, (0, 0, 1, 0))))
        return c + self.expand(h)


class PixelCNNContext(nn.Module):
    """The context network of CPC v2's pseudocode (App. A): ``blocks`` :class:`PixelCNNBlock`
    then a ReLU. ``c[:, :, i, j]`` depends on the latents of rows ``i - blocks .. i`` (one more
    row above per block) and never on a row below (the rows it predicts).

    Args:
        dim: channels of the latent grid.
        hidden: channels inside the blocks (256 in the pseudocode).
        blocks: residual blocks (5).

    Shape:
        input: (B, dim, H, W); output: (B, dim, H, W).
    """

    def __init__(self, dim: int, hidden: int = 256, blocks: int = 5) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(PixelCNNBlock(dim, hidden) for _ in range(blocks)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(z))


def orient(z: torch.Tensor, direction: int) -> torch.Tensor:
    """The latent grid turned so that prediction direction ``direction`` runs down its rows:
    0 top -> bottom (unchanged), 1 bottom -> top (rows flipped), 2 left -> right (transposed),
    3 right -> left (transposed, then rows flipped).

    Shape:
        z: (B, D, H, W); return: (B, D, H, W) for directions 0 and 1, (B, D, W, H) for 2 and 3.
    """
    if direction not in (0, 1, 2, 3):
        raise ValueError(f"direction must be 0..3, got {direction}")
    if direction >= 2:
        z = z.transpose(2, 3)
    return z.flip(2) if direction % 2 else z


def cpc_infonce(preds: torch.Tensor, targets: torch.Tensor, rows_ahead: int, scale: float = 1.0) -> torch.Tensor:
    """CPC's InfoNCE for predictions ``rows_ahead`` = k rows below (CPC v2 eq. 1-2, App. A).

    Every prediction ``p_{b,i,j} = W_k c_{b,i,j}`` with a row ``i + k`` below it in the grid is
    scored against the targets of all B·H·W patches of the batch (every position of every image),
    the target ``t_{b,i+k,j}`` being the positive:

    ``L_k = -1/N sum_{b, i < H-k, j} log( exp(s <p_{b,i,j}, t_{b,i+k,j}>)
    / sum_{b', i', j'} exp(s <p_{b,i,j}, t_{b',i',j'}>) )``,  N = B (H - k) W,

    s being ``scale`` (the pseudocode's ``emb_scale`` 0.1 on the predictions). The logits are
    float32 (autocast off).

    Shape:
        preds, targets: (B, D, H, W); return: ().
    """
    b, d, h, w = targets.shape
    if not 1 <= rows_ahead < h:
        raise ValueError(f"rows_ahead must be in [1, {h - 1}] for a grid of {h} rows, got {rows_ahead}")
    queries = preds[:, :, : h - rows_ahead].permute(0, 2, 3, 1).reshape(-1, d)  # (b, i, j) row-major
    keys = targets.permute(0, 2, 3, 1).reshape(-1, d)
    queries, keys = fp32(queries, keys)
    logits = fp32_matmul(scale * queries, keys.T)  # (B (H - k) W, B H W)
    q = torch.arange(queries.shape[0], device=logits.device)
    per_image = (h - rows_ahead) * w
    labels = (q // per_image) * (h * w) + rows_ahead * w + q % per_image  # index of (b, i + k, j)
    return F.cross_entropy(logits, labels)


# ------------------------------------------------------------------------------------------------
# The method


@dataclass(frozen=True)
class CPCConfig:
    """CPC v2 hyperparameters. Defaults: the paper's pseudocode (App. A: ``pixelCNN``, ``CPC``)
    where it gives a value; values marked NR are not given in what we could read of the paper.

    Attributes:
        patch_size: patch side in px of the training images (64, CPC v1 §3.2's 64 px patches;
            v2's "LP: larger patches" size is NR, unverified).
        patch_stride: distance between patches in px (32: CPC v1's 32 px overlap of a 7x7 grid on
            256 px images; v2's value is NR, unverified).
        norm: ``"layer"`` (CPC v2 §4.1, "LN": layer norm replaces batch norm in the encoder) or
            ``"batch"``.
        context_hidden: channels inside the PixelCNN blocks (256, pseudocode).
        context_blocks: residual blocks of the PixelCNN (5, pseudocode).
        target_dim: dimension of the targets and predictions (64, pseudocode ``target_dim``).
        emb_scale: factor on the predictions, i.e. the inverse temperature of the InfoNCE
            logits (0.1, pseudocode ``emb_scale``).
        min_rows_ahead, max_rows_ahead: offsets k predicted, k = min..max rows below (3..3: the
            pseudocode's ``steps_to_ignore=2, steps_to_predict=3`` predict the row i + 3 only:
            with 64 px patches 32 px apart, row i + 1 overlaps the context's own patches and row
            i + 2 touches them). Each k has its own linear W_k.
        directions: 1 (top to bottom only, CPC v1 and the pseudocode), 2 (and bottom to top) or 4
            (and left to right, right to left), each with its own context network, targets and
            predictors on the turned grid (:func:`orient`). 4: CPC v2 Fig. 3 adds bottom-up ("BU")
            and horizontal ("HP") predictions, as recalled, unverified here; secondary summaries
            of §4.1 only say "both directions".
        patch_crop_scale: per-patch random crop, smallest side as a fraction of the patch
            (1.0 = off; the crop of v2's "PA" patch augmentation is NR).
        patch_flip_p: per-patch horizontal flip (0.5; CPC v2 §4.1 random horizontal flips).
        color_drop_p: probability of dropping two of the three colour channels of a patch (1.0:
            CPC v2 §4.1 "RC", "randomly drops two of the three color channels in each patch";
            probability NR).
        patch_jitter: per-patch brightness and contrast strength (0.0: not in the paper; for
            grayscale data, where colour dropping does nothing).
    """

    patch_size: int = 64
    patch_stride: int = 32
    norm: str = "layer"
    context_hidden: int = 256
    context_blocks: int = 5
    target_dim: int = 64
    emb_scale: float = 0.1
    min_rows_ahead: int = 3
    max_rows_ahead: int = 3
    directions: int = 4
    patch_crop_scale: float = 1.0
    patch_flip_p: float = 0.5
    color_drop_p: float = 1.0
    patch_jitter: float = 0.0

    def __post_init__(self) -> None:
        if min(self.patch_size, self.patch_stride, self.context_hidden, self.target_dim) < 1 \
                or self.context_blocks < 0:
            raise ValueError("patch_size, patch_stride, context_hidden, target_dim must be >= 1, "
                             "context_blocks >= 0")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not 1 <= self.min_rows_ahead <= self.max_rows_ahead:
            raise ValueError(f"need 1 <= min_rows_ahead <= max_rows_ahead, got "
                             f"{self.min_rows_ahead}, {self.max_rows_ahead}")
        if self.directions not in DIRECTIONS:
            raise ValueError(f"directions must be one of {DIRECTIONS}, got {self.directions}")
        if self.emb_scale <= 0 or not 0 < self.patch_crop_scale <= 1 or self.patch_jitter < 0 \
                or not 0 <= self.patch_flip_p <= 1 or not 0 <= self.color_drop_p <= 1:
            raise ValueError("need emb_scale > 0, patch_crop_scale in (0, 1], patch_jitter >= 0, "
                             "probabilities in [0, 1]")

    @property
    def rows_ahead(self) -> range:
        """The offsets k predicted."""
        return range(self.min_rows_ahead, self.max_rows_ahead + 1)


class CPCHead(nn.Module):
    """One prediction direction: the context network, the target projection (a 1x1 conv of the
    latents, pseudocode ``targets``) and one linear predictor W_k (1x1 conv) per offset k.

    Shape:
        input: (B, D, H, W) oriented latents; :meth:`forward` returns the loss, ().
    """

    def __init__(self, dim: int, cfg: CPCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = PixelCNNContext(dim, cfg.context_hidden, cfg.context_blocks)
        self.target = nn.Conv2d(dim, cfg.target_dim, 1)
        self.predictors = nn.ModuleList(nn.Conv2d(dim, cfg.target_dim, 1) for _ in cfg.rows_ahead)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, t = self.context(z), self.target(z)
        losses = [cpc_infonce(w_k(c), t, k, self.cfg.emb_scale) for k, w_k in zip(self.cfg.rows_ahead, self.predictors)]
        return torch.stack(losses).sum()  # summed over k, as the pseudocode's `loss +=`


@register_method(
    "cpc", config=CPCConfig, family="contrastive, predictive coding over a patch grid",
    paper="Hénaff et al., Data-Efficient Image Recognition with Contrastive Predictive Coding, "
          "ICML 2020, https://arxiv.org/abs/1905.09272",
    default_recipe="cpc-quick",
)
class CPC(Method):
    """Patch grid -> per-patch latents z -> per direction: PixelCNN context, W_k predictions,
    InfoNCE against every patch of the batch. One augmented view per image; its patches are then
    augmented independently with draws from ``ctx.generator`` (resume is exact).

    The loss is the sum over offsets k (pseudocode) averaged over directions (how the paper
    combines directions is NR). Negatives come from the rank's own batch under data parallelism
    (the pseudocode's batch; no gathering).
    """

    num_views = 1

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: CPCConfig) -> None:
        super().__init__(encoder, feature_dim)
        if not isinstance(encoder, PatchGridEncoder):
            raise ConfigError("CPC needs its patch-grid encoder (CPC.encoder_spec), got "
                              f"{type(encoder).__name__}.", "Build it with sslbench's engine.build_method.")
        self.cfg = cfg
        self.heads = nn.ModuleList(CPCHead(feature_dim, cfg) for _ in range(cfg.directions))

    @classmethod
    def encoder_spec(cls, cfg: CPCConfig, input_spec: InputSpec) -> EncoderSpec | None:
        return EncoderSpec("patch-grid", {"patch": cfg.patch_size, "stride": cfg.patch_stride, "norm": cfg.norm})

    def augmented_patches(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The patches of the view ``x``, each augmented with draws from ``ctx.generator``.

        Shape:
            x: (B, C, H, W); return: (B * gh * gw, C, patch, patch).
        """
        cfg = self.cfg
        return augment_patches(self.grid_encoder.patches(x), ctx.generator(x.device), crop_scale=cfg.patch_crop_scale,
                               flip_p=cfg.patch_flip_p, color_drop_p=cfg.color_drop_p, jitter=cfg.patch_jitter)

    @property
    def grid_encoder(self) -> PatchGridEncoder:
        assert isinstance(self.encoder, PatchGridEncoder)
        return self.encoder

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        x = views[0]
        grid = self.grid_encoder.grid_size(x.shape[-2], x.shape[-1])
        lines = min(grid) if self.cfg.directions == 4 else grid[0]  # rows (and columns) predicted along
        if lines <= self.cfg.max_rows_ahead:
            raise ConfigError(f"A {grid[0]}x{grid[1]} patch grid has no patch {self.cfg.max_rows_ahead} rows "
                              "(or columns) ahead of another.", "Use smaller patches or strides, or lower method.max_rows_ahead.")
        z = self.grid_encoder.encode(self.augmented_patches(x, ctx), grid)
        losses = [head(orient(z, d)) for d, head in enumerate(self.heads)]
        logs = {f"loss_direction{d}": loss.detach() for d, loss in enumerate(losses)} if len(losses) > 1 else {}
        return StepOutput(loss=torch.stack(losses).mean(), logs=logs)
