"""CMC, Contrastive Multiview Coding (Tian et al., ECCV 2020): the views of an image are groups of its
colour channels (L and ab of Lab, Y and CbCr, or any split the user names), each with its own
encoder; the embeddings of two views of the same image are a positive pair, those of other images
the negatives (in the batch, or sampled from one memory bank per view as the official code does).
With more than two views the pairs are those of the core view (view 1 against each other view) or
of the full graph (every pair of views).

The views come from the *same* augmented crop (the official ``train_CMC.py`` crops once, converts
to Lab, splits the channels): the method consumes one augmented view and splits it in its encoder,
:class:`~sslbench.methods.encoders.ColorSplitEncoder`, whose forward (the concatenation of the
views' features) is what the protocols evaluate, as CMC evaluates concat(L, ab).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import (
    gather_no_grad,
    gather_with_grad,
    is_initialized,
    mean_over_ranks,
    rank,
    world_size,
)
from sslbench.benchmark.errors import ConfigError
from sslbench.methods.base import InputSpec, Method, StepContext, StepOutput
from sslbench.methods.encoders import ColorSplitEncoder, EncoderSpec, parse_groups
from sslbench.methods.heads import mlp
from sslbench.methods.instdisc import bank_scores, instdisc_nce_loss
from sslbench.methods.losses import fp32, fp32_matmul
from sslbench.methods.registry import register_method

#: colour spaces the encoder converts to (methods/encoders.py ColorSplitEncoder).
COLOR_SPACES = ("lab", "ycbcr", "rgb")
#: pair sets of the objective: ``core`` (Eq. 4) and ``full`` (Eq. 5).
GRAPHS = ("core", "full")


@dataclass(frozen=True)
class CMCConfig:
    """CMC hyperparameters (defaults: the official code's ImageNet settings, HobbitLong/CMC
    ``train_CMC.py``: ``--view Lab --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --feat_dim 128``, NCE
    unless ``--softmax``).

    Attributes:
        space: colour space of the views: ``"lab"`` (the paper's L | ab, §4.2), ``"ycbcr"`` (the
            repo's ``--view YCbCr``, "0.5-1 %" better per its README) or ``"rgb"``.
        groups: channel groups of ``space``, one view each: ``"0|1,2"`` (L | ab, the paper's and
            the repo's default), ``"0|1|2"`` (three views, as the paper's L | a | b ablations), ...
        embed_dim: the L2-normalised embedding each view is contrasted in (128, ``--feat_dim``).
        head: ``"linear"`` (the repo: a linear layer after each ResNet's pooling, then L2 norm) or
            ``"mlp"`` (Linear -> BN -> ReLU -> Linear, as later contrastive methods).
        head_hidden_dim: hidden width of the ``"mlp"`` head; 0 means the view's feature dimension.
        graph: ``"core"`` (view 1 against every other view, Eq. 4) or ``"full"`` (every pair of
            views, Eq. 5); the same objective for two views.
        negatives: ``"memory"`` (the repo's ``NCEAverage``: one memory bank per view, K negatives
            sampled from it) or ``"batch"`` (the other images of the batch, B - 1 per anchor).
        num_negatives: K, memory rows sampled per image (16384, ``--nce_k`` default of the final
            code; 4096 in the README's flag list and the released weights).
        temperature: tau (0.07, ``--nce_t`` for ImageNet; 0.1 for STL-10 per the README).
        memory_momentum: lambda of the bank update v <- normalize(lambda v + (1 - lambda) f)
            (0.5, ``--nce_m``).
        loss: for memory negatives, ``"nce"`` (the repo's default ``NCECriterion``, Eq. 12 of the
            arXiv version, with InstDisc's fixed normaliser Z) or ``"softmax"`` (``--softmax``,
            ``NCESoftmaxLoss``: cross-entropy over the positive and the K negatives; the README
            reports it better). In-batch negatives always use the softmax cross-entropy.
    """

    space: str = "lab"
    groups: str = "0|1,2"
    embed_dim: int = 128
    head: str = "linear"
    head_hidden_dim: int = 0
    graph: str = "core"
    negatives: str = "memory"
    num_negatives: int = 16384
    temperature: float = 0.07
    memory_momentum: float = 0.5
    loss: str = "nce"

    def __post_init__(self) -> None:
        if self.space not in COLOR_SPACES:
            raise ValueError(f"space must be one of {', '.join(COLOR_SPACES)}, got {self.space!r}")
        try:
            views = parse_groups(self.groups)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if len(views) < 2:
            raise ValueError(f"groups {self.groups!r} name {len(views)} view; CMC contrasts at least two "
                             "(e.g. '0|1,2' for L | ab)")
        if self.graph not in GRAPHS:
            raise ValueError(f"graph must be 'core' or 'full', got {self.graph!r}")
        if self.negatives not in ("memory", "batch"):
            raise ValueError(f"negatives must be 'memory' or 'batch', got {self.negatives!r}")
        if self.loss not in ("nce", "softmax"):
            raise ValueError(f"loss must be 'nce' or 'softmax', got {self.loss!r}")
        if self.negatives == "batch" and self.loss != "softmax":
            raise ValueError("in-batch negatives use the softmax cross-entropy: set loss=softmax "
                             "(NCE needs a memory bank and its noise distribution)")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        if self.num_negatives < 1 or self.embed_dim < 1 or self.head_hidden_dim < 0:
            raise ValueError(f"need num_negatives >= 1, embed_dim >= 1, head_hidden_dim >= 0, got "
                             f"{self.num_negatives}, {self.embed_dim}, {self.head_hidden_dim}")
        if self.temperature <= 0 or not 0 <= self.memory_momentum < 1:
            raise ValueError(f"need temperature > 0 and memory_momentum in [0, 1), got "
                             f"{self.temperature}, {self.memory_momentum}")

    @property
    def num_views(self) -> int:
        """The number of colour views (channel groups)."""
        return len(parse_groups(self.groups))


# ---------------------------------------------------------------------------------------------
# Losses (pure functions)
# ---------------------------------------------------------------------------------------------


def view_pairs(num_views: int, graph: str) -> list[tuple[int, int]]:
    """The unordered view pairs the objective sums over (Tian et al. 2020, §3.2).

    ``"core"`` (Eq. 4, view 1 is the core): ``(0, j)`` for ``j = 1 .. M - 1``; ``"full"`` (Eq. 5,
    the full graph): every ``(i, j)`` with ``i < j``, M (M - 1) / 2 pairs. For M = 2 both are
    ``[(0, 1)]``.
    """
    if num_views < 2 or graph not in GRAPHS:
        raise ValueError(f"need >= 2 views and graph in {GRAPHS}, got {num_views}, {graph!r}")
    if graph == "core":
        return [(0, j) for j in range(1, num_views)]
    return [(i, j) for i in range(num_views) for j in range(i + 1, num_views)]


def contrast_in_batch(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float,
                      offset: int = 0) -> torch.Tensor:
    """One direction of CMC's two-view loss with in-batch negatives (Eq. 2, the softmax form):

        L^{a,b} = -1/B sum_i log( exp(a_i . b_i / tau) / sum_k exp(a_i . b_k / tau) ),

    with L2-normalised anchors ``a`` (view a) and candidates ``b`` (view b of the batch's images):
    the positive of anchor i is the same image's view-b embedding, the other images' view-b
    embeddings are its negatives. The logits are float32 (autocast off).

    Args:
        anchors: view-a embeddings of this batch.
        candidates: view-b embeddings of the (global) batch; this batch's rows at ``offset``.
        temperature: tau > 0.
        offset: row of ``candidates`` holding anchor 0's positive.

    Shape:
        anchors: (B, D); candidates: (M, D), M >= B. Returns a scalar.
    """
    if not 0 <= offset <= candidates.shape[0] - anchors.shape[0]:
        raise ValueError(f"offset {offset} does not place {anchors.shape[0]} rows in {candidates.shape[0]}")
    anchors, candidates = fp32(anchors, candidates)
    logits = fp32_matmul(F.normalize(anchors, dim=1), F.normalize(candidates, dim=1).T) / temperature
    target = torch.arange(anchors.shape[0], device=anchors.device) + offset
    return F.cross_entropy(logits, target)


def cmc_in_batch_loss(z: Sequence[torch.Tensor], temperature: float, graph: str, *,
                      candidates: Sequence[torch.Tensor] | None = None, offset: int = 0) -> torch.Tensor:
    """CMC's objective with in-batch negatives (Tian et al. 2020, Eq. 3-5):

        L = sum_{(i, j) in pairs} ( L^{V_i, V_j} + L^{V_j, V_i} ),

    each direction :func:`contrast_in_batch`, the pairs :func:`view_pairs` (core view or full graph).

    Args:
        z: one embedding per view, row-aligned (row b of every view is image b).
        temperature: tau > 0.
        graph: ``"core"`` or ``"full"``.
        candidates: per view, the embeddings of the global batch under data parallelism (this
            batch at rows ``offset : offset + B``); None: ``z`` itself.
        offset: this batch's first row in ``candidates``.

    Shape:
        z: M tensors (B, D); candidates: M tensors (N, D). Returns a scalar.
    """
    cands = z if candidates is None else candidates
    loss = z[0].new_zeros(())
    for i, j in view_pairs(len(z), graph):
        loss = loss + contrast_in_batch(z[i], cands[j], temperature, offset) \
            + contrast_in_batch(z[j], cands[i], temperature, offset)
    return loss


def memory_logits(anchors: torch.Tensor, memory: torch.Tensor, cols: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Scores of anchors against rows of a memory bank: ``logits[b, k] = a_b . memory[cols[b, k]] / tau``.

    Computed in float32 (or the bank's wider precision) with autocast off (``exp(s / 0.07)`` is
    sensitive to bf16), as InstDisc's :func:`~sslbench.methods.instdisc.bank_scores`; a bank with
    no more rows than ``cols`` holds is scored whole, then gathered.

    Shape:
        anchors: (B, D); memory: (N, D); cols: (B, C) int64. Returns (B, C).
    """
    return bank_scores(anchors, memory, cols) / temperature


def cmc_memory_loss(z: Sequence[torch.Tensor], memory: torch.Tensor, cols: torch.Tensor, temperature: float,
                    graph: str, loss: str, log_z: torch.Tensor | None = None,
                    num_samples: int = 0) -> torch.Tensor:
    """CMC's objective with memory-bank negatives (Tian et al. 2020, §3.4 and the official
    ``NCEAverage``): direction ``V_i -> V_j`` scores view i's embedding of image b against view j's
    memory at ``cols[b]`` (its own row in column 0, the positive; K sampled rows after it):

        s^{i,j}_{b,k} = z^i_b . m^j_{cols[b, k]} / tau,
        softmax: L^{i,j} = -1/B sum_b log( exp(s_{b,0}) / sum_k exp(s_{b,k}) ),
        nce:     L^{i,j} = InstDisc's NCE (:func:`~sslbench.methods.instdisc.instdisc_nce_loss`) with
                 P = exp(s) / Z^{i,j}, noise P_n = 1 / N and K noise samples,

    and ``L = sum_{(i, j) in pairs} ( L^{i,j} + L^{j,i} )`` over :func:`view_pairs`.

    Args:
        z: one L2-normalised embedding per view, row-aligned.
        memory: one bank per view.
        cols: memory rows per image: the image's own index first, then the K negatives.
        temperature: tau > 0.
        graph: ``"core"`` or ``"full"``.
        loss: ``"softmax"`` or ``"nce"``.
        log_z: ``log Z^{i,j}`` per direction (anchor view i, memory of view j); NCE only.
        num_samples: N, the rows of each bank; NCE only.

    Shape:
        z: M tensors (B, D); memory: (M, N, D); cols: (B, K + 1); log_z: (M, M). Returns a scalar.
    """
    if loss not in ("nce", "softmax"):
        raise ValueError(f"loss must be 'nce' or 'softmax', got {loss!r}")
    if loss == "nce" and (log_z is None or num_samples < 1):
        raise ValueError("the NCE loss needs log_z and num_samples")
    total = z[0].new_zeros((), dtype=memory.dtype)
    for i, j in view_pairs(len(z), graph):
        for a, b in ((i, j), (j, i)):
            logits = memory_logits(z[a], memory[b], cols, temperature)
            if loss == "softmax":
                total = total + F.cross_entropy(logits, torch.zeros_like(cols[:, 0]))
            else:
                assert log_z is not None
                total = total + instdisc_nce_loss(logits, log_z[a, b], num_samples)
    return total


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


@register_method(
    "cmc", config=CMCConfig, family="contrastive, multiview (colour channels), memory bank or in-batch",
    paper="Tian, Krishnan and Isola, Contrastive Multiview Coding, ECCV 2020, https://arxiv.org/abs/1906.05849",
    default_recipe="cmc-quick", needs_num_samples=True, needs_color=True,
)
class CMC(Method):
    """One encoder per colour view -> linear (or MLP) 128-d head -> L2 norm; views of the same
    image are contrasted against other images (in the batch, or in each view's memory bank)."""

    num_views = 1  # one augmented crop per image, split into colour views by the encoder
    memory: torch.Tensor  # (M, N, embed_dim) buffer; (M, 0, embed_dim) with in-batch negatives
    normalizer: torch.Tensor  # (M, M) buffer: Z per direction (NCE), < 0 until estimated

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: CMCConfig, *, num_samples: int = 0) -> None:
        super().__init__(encoder, feature_dim)
        if not isinstance(encoder, ColorSplitEncoder):
            raise ValueError("CMC's encoder is a ColorSplitEncoder (one backbone per colour view), as "
                             f"CMC.encoder_spec asks; got {type(encoder).__name__}")
        views = len(encoder.groups)
        if views != cfg.num_views:
            raise ValueError(f"the encoder has {views} colour views, the config {cfg.num_views}")
        memory = cfg.negatives == "memory"
        if memory and num_samples < 2:
            raise ValueError("CMC's memory banks keep one row per training image and need the training "
                             f"split's size (>= 2) as num_samples, got {num_samples}")
        self.cfg = cfg
        self.num_samples = num_samples if memory else 0
        self.heads = nn.ModuleList(
            nn.Linear(dim, cfg.embed_dim) if cfg.head == "linear"
            else mlp(dim, cfg.head_hidden_dim or dim, cfg.embed_dim, num_layers=2)
            for dim in encoder.dims)
        # The repo's NCEAverage: each bank starts U[-s, s] with s = 1 / sqrt(D / 3) (unit norm on average).
        stdv = 1.0 / math.sqrt(cfg.embed_dim / 3)
        self.register_buffer("memory", torch.rand(views, self.num_samples, cfg.embed_dim) * (2 * stdv) - stdv)
        self.register_buffer("normalizer", torch.full((views, views), -1.0))

    @classmethod
    def encoder_spec(cls, cfg: CMCConfig, input_spec: InputSpec) -> EncoderSpec:
        """One backbone per channel group of ``cfg.space`` (methods/encoders.py ``color-split``)."""
        return EncoderSpec("color-split", {"space": cfg.space, "groups": cfg.groups})

    def embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The L2-normalised embedding of each colour view.

        Shape:
            images: (B, 3, H, W) normalised RGB; returns M tensors (B, embed_dim).
        """
        assert isinstance(self.encoder, ColorSplitEncoder)
        feats = self.encoder.group_features(images)
        return [F.normalize(head(f), dim=1) for head, f in zip(self.heads, feats)]

    def _memory_cols(self, idx: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Each image's own row, then K rows drawn uniformly with replacement (the repo's
        AliasMethod with equal weights; the image's own row may be drawn), shared by all views as
        in the repo. Each rank draws the global batch's noise from the same (seed, step) generator
        and keeps its rows, so W ranks draw what one process would."""
        w, r, b = world_size(), rank(), idx.shape[0]
        noise = torch.randint(0, self.num_samples, (w * b, self.cfg.num_negatives),
                              generator=ctx.generator(idx.device), device=idx.device)
        return torch.cat([idx[:, None], noise[r * b:(r + 1) * b]], dim=1)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        z = self.embed(views[0])
        cfg = self.cfg
        if cfg.negatives == "batch":
            if is_initialized():  # the global batch's other images are the negatives
                cands = [gather_with_grad(v) for v in z]
                loss = cmc_in_batch_loss(z, cfg.temperature, cfg.graph, candidates=cands,
                                         offset=rank() * z[0].shape[0])
            else:
                loss = cmc_in_batch_loss(z, cfg.temperature, cfg.graph)
            return StepOutput(loss=loss)
        if ctx.indices is None:
            raise ValueError("CMC's memory banks need the batch's dataset indices (StepContext.indices)")
        idx = ctx.indices.to(device=views[0].device, dtype=torch.long)
        cols = self._memory_cols(idx, ctx)
        state = {"indices": idx, "features": torch.stack([v.detach() for v in z])}
        if cfg.loss == "softmax":
            loss = cmc_memory_loss(z, self.memory, cols, cfg.temperature, cfg.graph, "softmax")
            return StepOutput(loss=loss, state=state)
        z_norm = self.normalizer
        # The repo: Z = N * mean(exp(s)) on the first batch, then fixed. Whether it is known comes
        # from a Python-side copy of "normalizer >= 0" (read once per build or load, not every step).
        if not self.host_value("normalizer_known", lambda: not bool((self.normalizer < 0).any())):
            z_norm = torch.ones_like(self.normalizer)
            with torch.no_grad():
                for i, j in view_pairs(len(z), cfg.graph):
                    for a, b in ((i, j), (j, i)):
                        s = memory_logits(z[a], self.memory[b], cols, cfg.temperature)
                        z_norm[a, b] = s.exp().mean() * self.num_samples
            if is_initialized():  # the joint batch's mean: every replica keeps the same Z
                z_norm = mean_over_ranks(z_norm)
            state["normalizer"] = z_norm
        loss = cmc_memory_loss(z, self.memory, cols, cfg.temperature, cfg.graph, "nce",
                               log_z=torch.log(z_norm), num_samples=self.num_samples)
        return StepOutput(loss=loss, state=state)

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        if self.cfg.negatives == "batch":
            return {}
        # Each view's memory moves toward the forward pass's embedding (the repo's --nce-m
        # average, applied after scoring). Under data parallelism every rank applies all ranks'
        # rows, so the banks stay identical.
        idx = gather_no_grad(out.state["indices"])
        feats = gather_no_grad(out.state["features"].transpose(0, 1)).transpose(0, 1).to(self.memory.dtype)
        lam = self.cfg.memory_momentum
        for v in range(self.memory.shape[0]):
            self.memory[v].index_copy_(0, idx, F.normalize(lam * self.memory[v, idx] + (1 - lam) * feats[v], dim=1))
        if "normalizer" in out.state:
            self.normalizer.copy_(out.state["normalizer"])
            self.set_host_value("normalizer_known", True)
        return {}
