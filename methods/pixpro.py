"""PixPro / PixContrast (Xie et al., CVPR 2021, "Propagate Yourself"): pixel-level pretext tasks.

Both views go through an online encoder + 1x1-conv projector and an EMA (momentum) copy of them.
Every cell of the last feature map is placed at its centre in the *original* image (from the
views' crop boxes and flips, ``ctx.geometry``); two cells of different views are a positive pair
when their distance, in units of a feature-map bin's diagonal, is below T = 0.7.

* ``loss="pixpro"`` (pixel-to-propagation consistency): the pixel propagation module (PPM)
  smooths the online map, ``y_i = sum_j max(cos(x_i, x_j), 0)^gamma g(x_j)``, and ``y_i`` must
  match the target pixel ``x'_j`` of every positive pair: ``-cos(y_i, x'_j)``, both directions.
* ``loss="pixcontrast"`` (pixel-level contrastive learning): pixel InfoNCE at tau 0.3, the positives of pixel i against the
  other pixels of the other view.
* ``instance_weight > 0`` adds the paper's instance branch ("PixPro + instance"): BYOL on
  the pooled maps (projector and predictor as 1x1 convs, then average pooling, as the official
  code), weighted by ``instance_weight``.

Geometry follows the official code (zdaxie/PixPro ``contrast/models/PixPro.py``,
``regression_loss``): a view's h x w map splits its crop box into h x w equal bins; cell (r, c)
sits at the bin centre; a flipped view mirrors the columns; distances are measured in the
original image's coordinates as fractions of its height and width and divided by the larger of
the two views' bin diagonals (the paper: "normalized to the diagonal length of a feature map
bin"). Deviation: the box is the crop's continuous extent (edge to edge, exactly what
``benchmark/augment.py`` resamples), where the official ``RandomResizedCropCoord`` spans the first
to the last pixel centre (``j / (W - 1)`` ... ``(j + w - 1) / (W - 1)``): a shift of under one
source pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.backbones import feature_map
from sslbench.benchmark.schedules import cosine_momentum
from sslbench.methods.base import Method, StepContext, StepOutput, ViewGeometry, forward_views
from sslbench.methods.losses import fp32, fp32_matmul
from sslbench.methods.momentum import ema_update, momentum_copy
from sslbench.methods.registry import register_method

PIXPRO_LOSSES = ("pixpro", "pixcontrast")

# ------------------------------------------------------------------------------------------------
# Geometry: where the feature-map cells lie in the original image


def cell_centres(boxes: torch.Tensor, flip: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The centre of each cell of a view's h x w feature map in the original image.

    The map splits the view's crop box into h x w equal bins (the paper's "warped to the original image space"; the official
    ``regression_loss``); cell (r, c) sits at the bin centre, ``t_y = (r + 0.5) / h`` and
    ``t_x = (c + 0.5) / w`` of the box, or ``t_x = 1 - (c + 0.5) / w`` when the view was flipped
    horizontally after cropping: ``y = top + t_y * height``, ``x = left + t_x * width``.

    Args:
        boxes: each view crop ``(top, left, height, width)`` as fractions of the source image's
            height and width (:class:`~sslbench.methods.base.ViewGeometry`).
        flip: whether each view was flipped.
        h, w: the feature map's height and width.

    Shape:
        boxes: (B, 4); flip: (B,); return: (B, h * w, 2) ``(y, x)`` fractions of the original
        image, cells in row-major order (as ``feature_map.flatten(2)``).
    """
    top, left, height, width = boxes.unbind(dim=1)
    ty = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h  # (h,)
    tx = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w  # (w,)
    tx = torch.where(flip.bool()[:, None], 1.0 - tx, tx)  # (B, w)
    y = top[:, None] + ty * height[:, None]  # (B, h)
    x = left[:, None] + tx * width[:, None]  # (B, w)
    b = boxes.shape[0]
    return torch.stack((y[:, :, None].expand(b, h, w), x[:, None, :].expand(b, h, w)), dim=-1).reshape(b, h * w, 2)


def bin_diagonal(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The diagonal of one feature-map bin in the original image, ``sqrt((height / h)^2 +
    (width / w)^2)`` in fractions of the image's height and width (official ``q_bin_diag``).

    Shape:
        boxes: (B, 4); return: (B,).
    """
    return torch.sqrt((boxes[:, 2] / h) ** 2 + (boxes[:, 3] / w) ** 2)


def pixel_distances(c1: torch.Tensor, c2: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the cells of two views in the original image, in units of
    ``scale`` (PixPro: ``max(bin_diagonal(view 1), bin_diagonal(view 2))``, the official
    ``max_bin_diag``, which accounts for the views' different scales).

    Shape:
        c1: (B, N1, 2); c2: (B, N2, 2) (:func:`cell_centres`); scale: (B,); return: (B, N1, N2).
    """
    return (c1[:, :, None, :] - c2[:, None, :, :]).norm(dim=-1) / scale[:, None, None]


def positive_mask(c1: torch.Tensor, c2: torch.Tensor, threshold: float, scale: torch.Tensor) -> torch.Tensor:
    """PixPro's positive pairs: ``A_ij = 1`` if ``dist(i, j) < T`` (T = 0.7), the
    distance of :func:`pixel_distances` normalised by the bin diagonal ``scale``.

    Shape:
        c1: (B, N1, 2); c2: (B, N2, 2); scale: (B,); return: (B, N1, N2) bool.
    """
    return pixel_distances(c1, c2, scale) < threshold


def view_positives(g1: ViewGeometry, g2: ViewGeometry, size1: tuple[int, int], size2: tuple[int, int],
                   threshold: float) -> torch.Tensor:
    """The positive mask between two views' feature maps of sizes ``size1`` and ``size2``.

    Shape:
        return: (B, h1 * w1, h2 * w2) bool.
    """
    boxes1, boxes2 = g1.boxes.float(), g2.boxes.float()
    scale = torch.maximum(bin_diagonal(boxes1, *size1), bin_diagonal(boxes2, *size2))
    return positive_mask(cell_centres(boxes1, g1.flip, *size1), cell_centres(boxes2, g2.flip, *size2),
                         threshold, scale)


# ------------------------------------------------------------------------------------------------
# The pixel propagation module and the two losses


def pixel_propagation(x: torch.Tensor, values: torch.Tensor, gamma: float) -> torch.Tensor:
    """PixPro's pixel propagation module: ``y_i = sum_j s(x_i, x_j) v_j`` with
    ``s(x_i, x_j) = max(cos(x_i, x_j), 0)^gamma`` over all pixels j of the same image, where
    ``v_j = g(x_j)`` (the caller applies the transform g; the official code L2-normalises it).

    As the official ``featprop``, 1e-6 is added to the clamped similarities when gamma < 1 (the
    gradient of ``s^gamma`` is infinite at 0 there).

    Shape:
        x: (B, N, C); values: (B, N, D); return: (B, N, D).
    """
    xn = F.normalize(x, dim=-1)
    s = (xn @ xn.transpose(1, 2)).clamp_min(0.0)
    if gamma < 1:
        s = s + 1e-6
    return s.pow(gamma) @ values


def pixpro_loss(y: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixel-to-propagation consistency, one direction:

    ``L = -1/B sum_b [sum_ij A_bij cos(y_bi, x'_bj)] / max(1, sum_ij A_bij)``, the mean of
    ``-cos`` over the positive pairs of each image, then over the batch (an image without a
    positive pair adds 0, as the official ``regression_loss`` with its ``+ 1e-6``). The official
    code returns ``-2 x`` this (BYOL's ``2 - 2 cos`` without the constant); the paper's loss,
    ``-cos(y_i, x'_j) - cos(y_j, x'_i)``, is the sum of the two directions.

    Args:
        y: the online branch's propagated pixels (PPM output) of one view.
        target: the momentum branch's pixels of the other view (no gradient).
        mask: positive pairs ``A`` (:func:`positive_mask`).

    Shape:
        y: (B, N1, C); target: (B, N2, C); mask: (B, N1, N2); return: ().
    """
    cos = F.normalize(y, dim=-1) @ F.normalize(target, dim=-1).transpose(1, 2)
    cos = cos.to(torch.promote_types(cos.dtype, torch.float32))  # bf16 autocast -> fp32 sums
    m = mask.to(cos.dtype)
    return -((cos * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1.0)).mean()


def pixcontrast_loss(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Pixel-level contrastive loss, one direction (PixContrast):

    ``L_i = -log [sum_{j in P_i} e^{cos(x_i, x'_j) / tau} / (sum_{j in P_i} e^{cos(x_i, x'_j) / tau}
    + sum_{k in N_i} e^{cos(x_i, x'_k) / tau})]``, P_i / N_i the pixels of the other view of the
    same image that are / are not positives of pixel i. Averaged over the pixels i with at least
    one positive (the paper: the pixels of the first view in the intersection of the two views),
    then over the images of the batch (an image without a positive pair adds 0). The logits are
    float32 (autocast off).

    Shape:
        q: (B, N1, C) online pixels; k: (B, N2, C) momentum pixels of the other view;
        mask: (B, N1, N2) bool; return: ().
    """
    q, k = fp32(q, k)
    logits = fp32_matmul(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(1, 2)) / temperature
    valid = mask.any(dim=2)  # (B, N1): pixel i has a positive
    # Rows without a positive keep every logit (finite, then weighted 0) instead of all -inf.
    pos = torch.where(mask | ~valid[:, :, None], logits, torch.full_like(logits, float("-inf")))
    per_pixel = torch.logsumexp(logits, dim=2) - torch.logsumexp(pos, dim=2)
    v = valid.to(per_pixel.dtype)
    return ((per_pixel * v).sum(dim=1) / v.sum(dim=1).clamp_min(1.0)).mean()


def conv_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """PixPro's projector on a feature map (official ``MLP2d``): 1x1 conv -> BN -> ReLU -> 1x1 conv.

    Shape:
        input: (B, in_dim, h, w); output: (B, out_dim, h, w).
    """
    return nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1))


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h * w, C), cells in row-major order."""
    return x.flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class PixProConfig:
    """PixPro / PixContrast hyperparameters (defaults: the paper's implementation details and the official
    ``tools/pixpro_base_r50_100ep.sh``).

    Attributes:
        loss: ``pixpro`` (pixel-to-propagation consistency, the paper's main method) or
            ``pixcontrast`` (pixel InfoNCE).
        proj_hidden_dim: projector hidden width (4096, official ``MLP2d`` inner_dim).
        proj_dim: projector output (256, official ``--feature-dim``).
        threshold: T, positive pairs closer than T bin diagonals (0.7, ``--pixpro-pos-ratio``).
        gamma: sharpness of the PPM similarity (2, ``--pixpro-p 2``).
        transform_layers: layers of the PPM's value transform g (1, ``--pixpro-transform-layer
            1``; 0 = identity, 2 = conv-BN-ReLU-conv; the paper ablates the number of layers).
        temperature: tau of PixContrast (0.3, the paper).
        base_momentum: EMA momentum of the target encoder and projector, raised to 1 on a cosine
            (0.99, ``--pixpro-momentum``).
        instance_weight: weight of the instance branch ("PixPro + instance"; 0 = off, as
            ``--pixpro-ins-loss-weight 0.`` in the official PixPro scripts).
        pred_hidden_dim: instance predictor hidden width (4096, official ``Pred_Head``).
    """

    loss: str = "pixpro"
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    threshold: float = 0.7
    gamma: float = 2.0
    transform_layers: int = 1
    temperature: float = 0.3
    base_momentum: float = 0.99
    instance_weight: float = 0.0
    pred_hidden_dim: int = 4096

    def __post_init__(self) -> None:
        if self.loss not in PIXPRO_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(PIXPRO_LOSSES)}, got {self.loss!r}")
        if min(self.proj_hidden_dim, self.proj_dim, self.pred_hidden_dim) < 1:
            raise ValueError("proj_hidden_dim, proj_dim, pred_hidden_dim must be >= 1")
        if self.threshold <= 0 or self.gamma <= 0 or self.temperature <= 0:
            raise ValueError(f"threshold, gamma, temperature must be > 0, got {self.threshold}, "
                             f"{self.gamma}, {self.temperature}")
        if self.transform_layers not in (0, 1, 2):
            raise ValueError(f"transform_layers must be 0, 1 or 2, got {self.transform_layers}")
        if not 0 <= self.base_momentum <= 1:
            raise ValueError(f"base_momentum must be in [0, 1], got {self.base_momentum}")
        if self.instance_weight < 0:
            raise ValueError(f"instance_weight must be >= 0, got {self.instance_weight}")


@register_method(
    "pixpro", config=PixProConfig, family="dense, pixel-level consistency (EMA target + PPM)",
    paper="Xie et al., Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual "
          "Representation Learning, CVPR 2021, https://arxiv.org/abs/2011.10043",
    default_recipe="pixpro-quick",
)
class PixPro(Method):
    """Online: encoder's last feature map -> 1x1-conv projector (-> PPM for ``pixpro``).
    Target: EMA of encoder and projector. Two views; the feature-map channels must equal the
    backbone's pooled feature dimension (true of CNNs with global pooling and of ViT tokens)."""

    needs_geometry = True

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: PixProConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.projector = conv_mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.target_encoder = momentum_copy(encoder)
        self.target_projector = momentum_copy(self.projector)
        # The PPM's value transform g (official ``value_transform``); PixContrast has no PPM.
        self.value_transform: nn.Module | None = None
        d = cfg.proj_dim
        if cfg.loss == "pixpro" and cfg.transform_layers == 0:
            self.value_transform = nn.Identity()
        elif cfg.loss == "pixpro" and cfg.transform_layers == 1:
            self.value_transform = nn.Conv2d(d, d, 1)
        elif cfg.loss == "pixpro":
            self.value_transform = conv_mlp(d, d, d)
        self.instance_projector: nn.Module | None = None
        self.instance_predictor: nn.Module | None = None
        self.target_instance_projector: nn.Module | None = None
        if cfg.instance_weight > 0:
            self.instance_projector = conv_mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
            self.instance_predictor = conv_mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
            self.target_instance_projector = momentum_copy(self.instance_projector)

    def _dense(self, encoder: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """``encoder``'s last feature map, checked to have ``feature_dim`` channels."""
        def run(x: torch.Tensor) -> torch.Tensor:
            out = feature_map(encoder, x, what="PixPro")
            if out.shape[1] != self.feature_dim:
                raise ValueError(f"PixPro: the feature map has {out.shape[1]} channels, the backbone's "
                                 f"features {self.feature_dim}")
            return out
        return run

    def propagate(self, z: torch.Tensor) -> torch.Tensor:
        """The pixel propagation module on a projected map: L2-normalised ``g(x)`` (as the
        official ``featprop``) propagated by :func:`pixel_propagation`.

        Shape:
            z: (B, C, h, w); return: (B, h * w, C).
        """
        assert self.value_transform is not None
        values = F.normalize(self.value_transform(z), dim=1)
        return pixel_propagation(_pixels(z), _pixels(values), self.cfg.gamma)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        if len(views) != 2:
            raise ValueError(f"PixPro takes two views; the augmentation gives {len(views)}")
        if ctx.geometry is None or len(ctx.geometry) < 2:
            raise ValueError("PixPro needs the views' crop boxes and flips (StepContext.geometry); the "
                             "engine fills them for methods with needs_geometry = True")
        feats = forward_views(self._dense(self.encoder), views)
        z = forward_views(self.projector, feats)
        with torch.no_grad():
            t_feats = forward_views(self._dense(self.target_encoder), views)
            t = forward_views(self.target_projector, t_feats)
        g1, g2 = ctx.geometry[0], ctx.geometry[1]
        mask12 = view_positives(g1, g2, (z[0].shape[2], z[0].shape[3]), (z[1].shape[2], z[1].shape[3]),
                                self.cfg.threshold)
        mask21 = mask12.transpose(1, 2)
        if self.cfg.loss == "pixpro":
            loss = (pixpro_loss(self.propagate(z[0]), _pixels(t[1]), mask12)
                    + pixpro_loss(self.propagate(z[1]), _pixels(t[0]), mask21))
        else:
            tau = self.cfg.temperature
            loss = (pixcontrast_loss(_pixels(z[0]), _pixels(t[1]), mask12, tau)
                    + pixcontrast_loss(_pixels(z[1]), _pixels(t[0]), mask21, tau)) / 2
        logs = {"positive_pairs": mask12.sum(dim=(1, 2)).float().mean().detach()}
        if self.cfg.instance_weight > 0:
            instance = self._instance_loss(feats, t_feats)
            loss = loss + self.cfg.instance_weight * instance
            logs["instance_loss"] = instance.detach()
        return StepOutput(loss=loss, logs=logs)

    def _instance_loss(self, feats: list[torch.Tensor], t_feats: list[torch.Tensor]) -> torch.Tensor:
        """BYOL on the pooled maps (official PixPro + instance): ``-cos(p_1, z'_2) - cos(p_2, z'_1)``
        averaged over the batch, p the pooled predictor output and z' the pooled target projection."""
        assert self.instance_projector is not None and self.instance_predictor is not None
        assert self.target_instance_projector is not None
        proj, pred = self.instance_projector, self.instance_predictor
        p = [F.normalize(x.mean(dim=(2, 3)), dim=1) for x in forward_views(lambda f: pred(proj(f)), feats)]
        with torch.no_grad():
            tz = [F.normalize(x.mean(dim=(2, 3)), dim=1)
                  for x in forward_views(self.target_instance_projector, t_feats)]
        return -(p[0] * tz[1]).sum(dim=1).mean() - (p[1] * tz[0]).sum(dim=1).mean()

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        m = cosine_momentum(ctx.step, ctx.total_steps, self.cfg.base_momentum)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)
        if self.target_instance_projector is not None and self.instance_projector is not None:
            ema_update(self.target_instance_projector, self.instance_projector, m)
        return {"ema_momentum": m}
