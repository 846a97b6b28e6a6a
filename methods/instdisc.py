"""InstDisc (Wu et al., CVPR 2018): every image is its own class; a memory bank of L2-normalised
128-d features replaces the classifier weights, and NCE with m noise samples from the bank
approximates the non-parametric softmax over all N images."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import gather_no_grad, is_initialized, mean_over_ranks, rank, world_size
from sslbench.methods.base import LogValue, Method, StepContext, StepOutput
from sslbench.methods.losses import fp32_einsum, fp32_matmul
from sslbench.methods.registry import register_method


@dataclass(frozen=True)
class InstDiscConfig:
    """InstDisc hyperparameters (defaults: the paper's ImageNet values = zhirongw/lemniscate.pytorch
    ``main.py --nce-k 4096 --nce-t 0.07 --nce-m 0.5 --low-dim 128``).

    Attributes:
        embed_dim: the L2-normalised embedding that replaces the classifier (128, ``--low-dim``).
        num_negatives: m noise samples per image, drawn uniformly from the bank (4096, ``--nce-k``);
            0 (with ``loss="softmax"``) scores the whole bank (the repo's ``--nce-k 0``).
        temperature: tau of the non-parametric softmax (0.07; 0.1 in the repo's CIFAR command).
        memory_momentum: lambda of the bank update v <- normalize(lambda v + (1 - lambda) f)
            (0.5, ``--nce-m``: the repo's memory update).
        loss: ``"nce"`` (§3.2, the paper's and the repo's ``NCECriterion``) or ``"softmax"``:
            cross-entropy over the positive and the m sampled negatives (CMC's re-run), or over
            the whole bank with ``num_negatives=0`` (§3.1; the repo's ``LinearAverage`` +
            ``CrossEntropyLoss``).
    """

    embed_dim: int = 128
    num_negatives: int = 4096
    temperature: float = 0.07
    memory_momentum: float = 0.5
    loss: str = "nce"

    def __post_init__(self) -> None:
        if self.loss not in ("nce", "softmax"):
            raise ValueError(f"loss must be 'nce' or 'softmax', got {self.loss!r}")
        if self.num_negatives < (1 if self.loss == "nce" else 0):
            raise ValueError(f"num_negatives must be >= 1 for NCE (>= 0 for softmax), "
                             f"got {self.num_negatives}")
        if self.temperature <= 0 or self.embed_dim < 1 or not 0 <= self.memory_momentum < 1:
            raise ValueError(f"need temperature > 0, embed_dim >= 1 and memory_momentum in [0, 1), got "
                             f"{self.temperature}, {self.embed_dim}, {self.memory_momentum}")


def bank_scores(v: torch.Tensor, bank: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """Dot products of embeddings with memory-bank rows, ``s[b, k] = v_b . bank[cols[b, k]]``
    (``cols=None``: every row of the bank), in float32 or the bank's wider precision with autocast
    off (``exp(s / 0.07)`` is sensitive to bf16: :func:`~sslbench.methods.losses.fp32_matmul`). A
    bank with no more rows than ``cols`` holds is scored whole, then gathered.

    Shape:
        v: (B, D); bank: (N, D); cols: (B, C) int64. Returns (B, C), or (B, N) without ``cols``.
    """
    if cols is None:
        return fp32_matmul(v, bank.T)
    if bank.shape[0] <= cols.numel():  # a small bank: score it all, then pick
        return fp32_matmul(v, bank.T).gather(1, cols)
    return fp32_einsum("bd,bkd->bk", v, bank[cols])


def instdisc_nce_loss(logits: torch.Tensor, log_z: torch.Tensor | float, num_samples: int) -> torch.Tensor:
    """The NCE loss of InstDisc (Wu et al. 2018, §3.2 Noise-Contrastive Estimation).

    With ``P(i|v) = exp(v_i . f / tau) / Z`` (Z estimated once, then held constant), noise
    ``P_n = 1/N`` and m noise samples per image, the posterior that a score comes from the data is
    ``h(i, v) = P(i|v) / (P(i|v) + m P_n)`` and

        J_NCE = -mean_b [ log h(i_b, v_{i_b}) + sum_{j=1..m} log(1 - h(i_b, v'_j)) ],

    with the positive's memory v_{i_b} and the noise samples v'_j. Computed in the log domain
    (``log h = -softplus(log(m P_n) - log P)``); the repo adds eps = 1e-7 to the denominators.

    Args:
        logits: ``v . f / tau``, the positive in column 0, the m noise samples after it.
        log_z: log of the normaliser Z.
        num_samples: N, the size of the bank.

    Shape:
        logits: (B, m + 1). Returns a scalar.
    """
    log_p = logits - log_z
    log_noise = math.log((logits.shape[1] - 1) / num_samples)  # log(m P_n)
    log_h_pos = -F.softplus(log_noise - log_p[:, 0])
    log_1m_h_neg = -F.softplus(log_p[:, 1:] - log_noise)
    return -(log_h_pos + log_1m_h_neg.sum(dim=1)).mean()


@register_method(
    "instdisc", config=InstDiscConfig, family="contrastive, memory bank + NCE",
    paper="Wu et al., Unsupervised Feature Learning via Non-Parametric Instance Discrimination, "
          "CVPR 2018, https://arxiv.org/abs/1805.01978",
    default_recipe="instdisc-quick", needs_num_samples=True,
)
class InstDisc(Method):
    """Encoder -> linear 128-d -> L2 norm, scored against a memory bank of every training image."""

    num_views = 1  # one augmented view per image (the recipe's first view is used)
    bank: torch.Tensor  # (N, embed_dim) buffer
    normalizer: torch.Tensor  # () buffer: Z, < 0 until estimated on the first batch
    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: InstDiscConfig, *,
                 num_samples: int = 0) -> None:
        super().__init__(encoder, feature_dim)
        if num_samples < 2:
            raise ValueError(f"InstDisc keeps one memory-bank row per training image and needs the "
                             f"training split's size (>= 2) as num_samples, got {num_samples}")
        self.cfg = cfg
        self.num_samples = num_samples
        self.embed = nn.Linear(feature_dim, cfg.embed_dim)
        stdv = 1.0 / math.sqrt(cfg.embed_dim / 3)  # lemniscate NCEAverage: U[-s, s], unit norm on average
        self.register_buffer("bank", torch.rand(num_samples, cfg.embed_dim) * (2 * stdv) - stdv)
        self.register_buffer("normalizer", torch.tensor(-1.0))

    def _negatives(self, batch: int, ctx: StepContext, device: torch.device) -> torch.Tensor:
        # Uniform with replacement over the whole bank (the repo's AliasMethod with equal weights;
        # the image's own row may be drawn). Each rank draws the global batch's noise from the same
        # (seed, step) generator and keeps its rows, so W ranks draw what one process would.
        w, r, m = world_size(), rank(), self.cfg.num_negatives
        noise = torch.randint(0, self.num_samples, (w * batch, m), generator=ctx.generator(device),
                              device=device)
        return noise[r * batch:(r + 1) * batch]

    def _scores(self, v: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        """``v . bank[cols]`` per row (``cols=None``: the whole bank), in float32: :func:`bank_scores`."""
        return bank_scores(v, self.bank, cols)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        if ctx.indices is None:
            raise ValueError("InstDisc needs the batch's dataset indices (StepContext.indices)")
        idx = ctx.indices.to(device=views[0].device, dtype=torch.long)
        v = F.normalize(self.embed(self.encoder(views[0])), dim=1)
        state = {"indices": idx, "features": v.detach()}
        tau = self.cfg.temperature
        if self.cfg.num_negatives == 0:  # full non-parametric softmax over the bank (§3.1)
            return StepOutput(loss=F.cross_entropy(self._scores(v, None) / tau, idx), state=state)
        cols = torch.cat([idx[:, None], self._negatives(v.shape[0], ctx, v.device)], dim=1)
        logits = self._scores(v, cols) / tau
        if self.cfg.loss == "softmax":
            return StepOutput(loss=F.cross_entropy(logits, torch.zeros_like(idx)), state=state)
        z = self.normalizer
        if not self._normalizer_known():  # the repo's estimate on the first batch: Z = N * mean(exp(s)), then fixed
            z = logits.detach().exp().mean() * self.num_samples
            if is_initialized():  # the joint batch's mean: every replica keeps the same Z
                z = mean_over_ranks(z)
            state["normalizer"] = z
        return StepOutput(loss=instdisc_nce_loss(logits, torch.log(z), self.num_samples), state=state)

    def _normalizer_known(self) -> bool:
        """Whether Z has been estimated (``normalizer >= 0``), from a Python-side copy: the
        buffer is read once per build or load, not every step."""
        return self.host_value("normalizer_known", lambda: not bool(self.normalizer < 0))

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, LogValue]:
        # Memory update (the repo's --nce-m moving average) with the forward pass's features, as
        # the repo's backward does.
        # Under data parallelism every rank applies all ranks' rows, so the banks stay identical.
        idx = gather_no_grad(out.state["indices"])
        v = gather_no_grad(out.state["features"]).to(self.bank.dtype)
        lam = self.cfg.memory_momentum
        self.bank.index_copy_(0, idx, F.normalize(lam * self.bank[idx] + (1 - lam) * v, dim=1))
        if "normalizer" in out.state:
            self.normalizer.copy_(out.state["normalizer"])
            self.set_host_value("normalizer_known", True)
        return {"nce_z": self.normalizer.clone()} if self.cfg.loss == "nce" else {}
