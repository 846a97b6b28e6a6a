"""Colorization (Zhang, Isola & Efros, ECCV 2016): from the lightness L of a Lab image, predict at
every pixel a distribution over Q quantised ab colours (classification, not regression), with a
soft-encoded target and class rebalancing towards rare, saturated colours. The evaluated encoder
is the L-only network (``color-split`` with the single group L)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.backbones import feature_map
from sslbench.benchmark.color import lab_to_rgb, rgb_to_lab, unnormalize
from sslbench.methods.base import EpochData, InputSpec, Method, StepContext, StepOutput
from sslbench.methods.encoders import ColorSplitEncoder, EncoderSpec
from sslbench.methods.registry import register_method

#: Pixels per chunk of the nearest-bin search (bounds the (pixels, Q) distance matrix).
_CHUNK = 65_536


@functools.lru_cache(maxsize=4)
def _gamut_bins(grid_size: float) -> tuple[tuple[float, float], ...]:
    v = torch.arange(256, dtype=torch.float64) / 255
    g, b = (t.flatten() for t in torch.meshgrid(v, v, indexing="ij"))
    faces = []
    for channel in range(3):
        for value in (0.0, 1.0):
            cols = [g, b]
            cols.insert(channel, torch.full_like(g, value))
            faces.append(torch.stack(cols))
    ab = rgb_to_lab(torch.cat(faces, dim=1)[None, :, :, None])[0, 1:, :, 0]  # (2, 6 * 256^2)
    q = torch.round(ab / grid_size).long()
    span = int(q.abs().max()) + 1
    keys = torch.unique((q[0] + span) * (2 * span + 1) + (q[1] + span))  # sorted: a-major, then b
    a, b_ = keys // (2 * span + 1) - span, keys % (2 * span + 1) - span
    return tuple((float(x) * grid_size, float(y) * grid_size) for x, y in zip(a.tolist(), b_.tolist()))


def ab_gamut_bins(grid_size: float = 10.0) -> torch.Tensor:
    """The centres of the in-gamut ab bins: the points of the ab grid of step ``grid_size`` (centres
    at multiples of it) that some sRGB colour rounds to (Zhang et al. §2.1: grid size 10, "keep the
    Q values which are in-gamut").

    Computed once per process, deterministically, from every 8-bit colour on the surface of the
    RGB cube (measured: the same bins as all 2^24 8-bit colours, 261 at grid 10). The paper's
    released set (``resources/pts_in_hull.npy``) has Q = 313 bins, a larger hull whose
    construction is not published.

    Shape:
        return: (Q, 2) float32 ``(a, b)`` centres, sorted by a, then b.
    """
    if grid_size <= 0:
        raise ValueError(f"grid_size must be > 0, got {grid_size}")
    return torch.tensor(_gamut_bins(float(grid_size)), dtype=torch.float32)


def nearest_bins(ab: torch.Tensor, centres: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest bin centres of each ab value, nearest first, and their squared distances.

    Shape:
        ab: (N, 2); centres: (Q, 2); return: indices (N, k) int64 and squared distances (N, k).
    """
    idx, dist = [], []
    c = centres.to(ab.dtype)
    for part in ab.split(_CHUNK):
        d2 = torch.cdist(part, c).square()
        top = d2.topk(k, dim=1, largest=False)  # sorted: nearest first
        idx.append(top.indices)
        dist.append(top.values)
    if not idx:
        return ab.new_zeros((0, k), dtype=torch.long), ab.new_zeros((0, k))
    return torch.cat(idx), torch.cat(dist)


def quantize_ab(ab: torch.Tensor, centres: torch.Tensor, grid_size: float = 10.0) -> torch.Tensor:
    """The nearest bin of each ab value (hard quantisation, for the empirical distribution).

    Rounding to the grid gives the nearest grid point, hence the nearest bin whenever that point is
    an in-gamut bin (it always is for 8-bit sRGB colours, by construction of
    :func:`ab_gamut_bins`); the other values fall back to :func:`nearest_bins`.

    Shape:
        ab: (N, 2); centres: (Q, 2) on the grid of step ``grid_size``; return: (N,) int64.
    """
    grid = torch.round(centres / grid_size).long()
    span = int(grid.abs().max()) + 1
    side = 2 * span + 1
    table = torch.full((side * side,), -1, dtype=torch.long, device=ab.device)
    table[((grid[:, 0] + span) * side + grid[:, 1] + span).to(ab.device)] = torch.arange(
        len(grid), device=ab.device)
    q = torch.round(ab / grid_size).long()
    inside = (q.abs() <= span).all(dim=1)
    idx = torch.full((ab.shape[0],), -1, dtype=torch.long, device=ab.device)
    idx[inside] = table[(q[inside, 0] + span) * side + q[inside, 1] + span]
    missing = idx < 0
    if missing.any():
        idx[missing] = nearest_bins(ab[missing], centres)[0][:, 0]
    return idx


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, num_neighbors: int = 5,
                sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft-encoded target Z of Zhang et al. §2.1: each ab value spreads over its
    ``num_neighbors`` nearest bins with weights ``exp(-d^2 / (2 sigma^2))``, normalised to sum to 1
    (the official ``NNEncode``), kept sparse as (bin, weight) pairs, nearest first.

    Shape:
        ab: (N, 2); centres: (Q, 2); return: indices (N, k) int64 and weights (N, k), rows
        summing to 1, k = num_neighbors.
    """
    idx, d2 = nearest_bins(ab, centres, num_neighbors)
    # The softmax of -d^2 / (2 sigma^2) is exp(..) / sum exp(..), computed without underflow.
    return idx, torch.softmax(-d2 / (2 * sigma**2), dim=1)


def smoothed_prior(counts: torch.Tensor, centres: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """The smoothed empirical ab distribution p~ of Zhang et al. §2.2: the bins' histogram,
    normalised, then blurred with a Gaussian kernel G_sigma over ab (each bin's mass is spread over
    the in-gamut bins with weights ``exp(-|c_q - c_q'|^2 / (2 sigma^2))`` normalised over q, so
    the total stays 1).

    ``p~_q = sum_q' p_q' G(c_q - c_q') / sum_q'' G(c_q'' - c_q')``.

    Shape:
        counts: (Q,) pixel counts per bin (nearest bin); centres: (Q, 2); return: (Q,), sums to 1.
    """
    p = counts.double() / counts.double().sum().clamp_min(1e-12)
    c = centres.double()
    kernel = torch.exp(-torch.cdist(c, c).square() / (2 * sigma**2))  # (Q, Q), symmetric
    kernel = kernel / kernel.sum(dim=0, keepdim=True)  # column q' sums to 1: mass preserved
    return (kernel @ p).to(counts.dtype if counts.is_floating_point() else torch.float32)


def rebalancing_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Class-rebalancing weights of Zhang et al. §2.2, eq. 4:
    ``w ∝ ((1 - lam) p~ + lam / Q)^-1``, normalised so that ``E_p~[w] = sum_q p~_q w_q = 1``.

    Shape:
        prior: (Q,) the smoothed distribution p~; return: (Q,).
    """
    w = 1.0 / ((1 - lam) * prior + lam / prior.shape[0])
    return w / (prior * w).sum()


def colorization_loss(logits: torch.Tensor, target_idx: torch.Tensor, target_w: torch.Tensor,
                      pixel_weights: torch.Tensor) -> torch.Tensor:
    """The class-rebalanced multinomial cross-entropy of Zhang et al. §2.1-2.2, eq. 2:

    ``L = -1/N sum_n v_n sum_q Z_{n,q} log softmax(z_n)_q``, with Z the soft-encoded target (sparse:
    the bins ``target_idx`` with weights ``target_w``) and ``v_n = w_{argmax_q Z_{n,q}}`` the
    rebalancing weight of the pixel's nearest bin (eq. 3). The paper sums over pixels; this is
    the mean over the N pixels of the batch (a constant factor). Computed in float32 or wider.

    Shape:
        logits: (N, Q); target_idx: (N, k) int64; target_w: (N, k); pixel_weights: (N,);
        return: ().
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_p = F.log_softmax(logits.to(dtype), dim=1)
    ce = -(target_w.to(dtype) * log_p.gather(1, target_idx)).sum(dim=1)
    return (pixel_weights.to(dtype) * ce).mean()


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """Zhang et al.'s decoding H (§2.3, eq. 5): the mean of the re-tempered distribution
    ``f_T(z) = exp(log z / T) / sum_q exp(log z_q / T)`` over the bin centres. With z the softmax
    of the logits, ``f_T(z) = softmax(logits / T)``; T = 1 is the mean, T -> 0 the mode.

    Shape:
        logits: (B, Q, H, W); centres: (Q, 2); return: (B, 2, H, W) ab.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    f = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", f, centres.to(f.dtype))


def decode_rgb(lightness: torch.Tensor, logits: torch.Tensor, centres: torch.Tensor,
               temperature: float = 0.38) -> torch.Tensor:
    """The colourised image: the annealed-mean ab, upsampled bilinearly to the lightness's size,
    joined with it and converted to sRGB (clipped to the gamut).

    Shape:
        lightness: (B, 1, H, W) L in [0, 100]; logits: (B, Q, h, w); return: (B, 3, H, W) in [0, 1].
    """
    ab = annealed_mean(logits, centres, temperature)
    ab = F.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", align_corners=False)
    return lab_to_rgb(torch.cat((lightness.float(), ab), dim=1))


@dataclass(frozen=True)
class ColorizationConfig:
    """Colorization hyperparameters (defaults: Zhang et al., ECCV 2016, and the official
    richzhang/colorization training files ``models/colorization_train_val_v2.prototxt``,
    ``resources/caffe_traininglayers.py``).

    Attributes:
        grid_size: ab quantisation step (10, §2.1).
        num_neighbors: nearest bins of the soft encoding (5, §2.1; the released ``NNEncLayer``
            uses 10).
        sigma: Gaussian sigma of the soft encoding (5, §2.1).
        prior_sigma: sigma of the Gaussian smoothing of the empirical ab distribution (5, §2.2).
        rebalance_lambda: lambda, the weight of the uniform distribution mixed into the prior
            (0.5, §2.2; ``PriorBoostLayer`` gamma = 0.5).
        rebalance: use the class-rebalancing weights (off: every pixel weighs 1, the paper's
            "Class" ablation without rebalancing).
        target_stride: the targets are the view's ab subsampled by this stride (4: the network
            predicts at a quarter of the input resolution, the prototxt's ``data_ab_ss``, a
            stride-4 subsampling); the logits are upsampled bilinearly to that size.
        temperature: T of the annealed-mean decoding (0.38, §2.3; only :func:`annealed_mean` and
            :func:`decode_rgb` use it, not the loss).
        head_layers: 3x3 conv -> BN -> ReLU blocks (``head_hidden_dim`` wide) between the feature
            map and the 1x1 classifier (0: the 1x1 conv alone; the paper's network ends in a conv8
            block of three such layers before its 1x1 ``conv8_313``).
        head_hidden_dim: width of those blocks (256, the paper's conv8).
    """

    grid_size: float = 10.0
    num_neighbors: int = 5
    sigma: float = 5.0
    prior_sigma: float = 5.0
    rebalance_lambda: float = 0.5
    rebalance: bool = True
    target_stride: int = 4
    temperature: float = 0.38
    head_layers: int = 0
    head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        if min(self.grid_size, self.sigma, self.prior_sigma, self.temperature) <= 0:
            raise ValueError("grid_size, sigma, prior_sigma and temperature must be > 0")
        if self.head_layers < 0 or self.head_hidden_dim < 1:
            raise ValueError(f"need head_layers >= 0 and head_hidden_dim >= 1, got {self.head_layers}, "
                             f"{self.head_hidden_dim}")
        if self.num_neighbors < 1 or self.target_stride < 1:
            raise ValueError(f"num_neighbors and target_stride must be >= 1, got {self.num_neighbors}, "
                             f"{self.target_stride}")
        if not 0 <= self.rebalance_lambda <= 1:
            raise ValueError(f"rebalance_lambda must be in [0, 1], got {self.rebalance_lambda}")


@register_method(
    "colorization", config=ColorizationConfig,
    family="pretext task, colour prediction (Lab, quantised ab classification)",
    paper="Zhang, Isola & Efros, Colorful Image Colorization, ECCV 2016, https://arxiv.org/abs/1603.08511",
    default_recipe="colorization-quick", needs_color=True, needs_input=True,
)
class Colorization(Method):
    """L-only backbone -> its last feature map -> (optional conv blocks ->) 1x1 conv to Q bins ->
    bilinear upsampling to the target grid; class-rebalanced cross-entropy against the soft-encoded ab of the view.

    The prior (and so the weights) is computed once, in :meth:`on_epoch_start` of the first
    epoch, from the whole un-augmented training split, and kept in buffers (exact resume).
    """

    num_views = 1
    centres: torch.Tensor  # (Q, 2) ab bin centres (recomputed, not saved)
    prior: torch.Tensor  # (Q,) smoothed empirical ab distribution of the training split
    class_weights: torch.Tensor  # (Q,) rebalancing weights w
    prior_ready: torch.Tensor  # () bool: prior and weights computed

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: ColorizationConfig, *,
                 input_spec: InputSpec) -> None:
        super().__init__(encoder, feature_dim)
        if not isinstance(encoder, ColorSplitEncoder) or encoder.space != "lab" or encoder.groups != [[0]]:
            raise ValueError("Colorization trains an L-only network: its encoder must be the 'color-split' "
                             "wrapper with space 'lab' and the single group '0' (Colorization.encoder_spec)")
        self.cfg = cfg
        self.input_spec = input_spec
        self.register_buffer("centres", ab_gamut_bins(cfg.grid_size), persistent=False)
        q = self.centres.shape[0]
        self.register_buffer("prior", torch.full((q,), 1.0 / q))
        self.register_buffer("class_weights", torch.ones(q))
        self.register_buffer("prior_ready", torch.tensor(False))
        backbone = encoder.backbones[0]
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            size = input_spec.image_size
            channels = feature_map(backbone, torch.zeros(2, 1, size, size), what="colorization").shape[1]
        backbone.train(was_training)
        blocks: list[nn.Module] = []
        for _ in range(cfg.head_layers):
            blocks += [nn.Conv2d(channels, cfg.head_hidden_dim, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cfg.head_hidden_dim), nn.ReLU(inplace=True)]
            channels = cfg.head_hidden_dim
        self.head = nn.Sequential(*blocks, nn.Conv2d(channels, q, kernel_size=1))  # conv8_313: 1x1

    @classmethod
    def encoder_spec(cls, cfg: ColorizationConfig, input_spec: InputSpec) -> EncoderSpec:
        """The L channel of Lab through one backbone: the evaluated encoder sees lightness only."""
        return EncoderSpec("color-split", {"space": "lab", "groups": "0"})

    def ab_of(self, images: torch.Tensor) -> torch.Tensor:
        """The ab channels of normalised RGB images, in float32 (autocast off: Lab needs the
        precision).

        Shape:
            images: (B, 3, H, W); return: (B, 2, H, W), a and b about [-110, 110].
        """
        with torch.autocast(images.device.type, enabled=False):
            rgb = unnormalize(images.float(), self.input_spec.mean, self.input_spec.std).clamp(0, 1)
            return rgb_to_lab(rgb)[:, 1:]

    @torch.no_grad()
    def on_epoch_start(self, ctx: StepContext, data: EpochData) -> dict[str, float]:
        if self._prior_ready():  # once per run; a resumed run has it in its checkpoint
            return {}
        counts = torch.zeros(self.centres.shape[0], dtype=torch.float64, device=self.centres.device)
        for images, _ in data.batches(256):
            ab = self.ab_of(images.to(self.centres.device)).permute(0, 2, 3, 1).reshape(-1, 2)
            counts += torch.bincount(quantize_ab(ab, self.centres, self.cfg.grid_size),
                                     minlength=counts.shape[0])
        prior = smoothed_prior(counts, self.centres, self.cfg.prior_sigma)
        self.prior.copy_(prior)
        self.class_weights.copy_(rebalancing_weights(prior, self.cfg.rebalance_lambda))
        self.prior_ready.fill_(True)
        self.set_host_value("prior_ready", True)
        entropy = -(prior * prior.clamp_min(1e-12).log()).sum()
        return {"color_prior_perplexity": math.exp(float(entropy)),
                "color_weight_max": float(self.class_weights.max())}

    def _prior_ready(self) -> bool:
        """``prior_ready`` from a Python-side copy (read once per build or load, not every step)."""
        return self.host_value("prior_ready", lambda: bool(self.prior_ready))

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        if not self._prior_ready():
            raise RuntimeError("Colorization's class-rebalancing prior is computed in on_epoch_start "
                               "(the engine calls it before each epoch); it was not called")
        x = views[0]
        stride = self.cfg.target_stride
        with torch.no_grad():
            ab = self.ab_of(x)[:, :, ::stride, ::stride]  # the prototxt's stride-4 subsampling
            h, w = ab.shape[-2:]
            idx, weight = soft_encode(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.centres,
                                      self.cfg.num_neighbors, self.cfg.sigma)
            v = self.class_weights[idx[:, 0]] if self.cfg.rebalance else torch.ones_like(weight[:, 0])
        assert isinstance(self.encoder, ColorSplitEncoder)
        lightness = self.encoder.group_inputs(x)[0]
        fmap = feature_map(self.encoder.backbones[0], lightness, what="colorization")
        logits = F.interpolate(self.head(fmap), size=(h, w), mode="bilinear", align_corners=False)
        flat = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        loss = colorization_loss(flat, idx, weight, v)
        accuracy = (flat.detach().argmax(dim=1) == idx[:, 0]).float().mean()
        return StepOutput(loss=loss, logs={"pretext_acc": accuracy})
