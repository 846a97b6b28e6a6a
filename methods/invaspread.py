"""InvaSpread (Ye et al., CVPR 2019): instance features of the batch itself act as the classifier
weights; each view should be recognised as its own instance (invariance) and not as any other
instance of the batch (spreading). No memory bank, no momentum encoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import gather_no_grad, gather_with_grad, is_initialized, rank
from sslbench.methods.base import Method, StepContext, StepOutput, forward_views
from sslbench.methods.losses import fp32, fp32_matmul
from sslbench.methods.registry import register_method


@dataclass(frozen=True)
class InvaSpreadConfig:
    """InvaSpread hyperparameters (defaults: the paper's CIFAR-10 values =
    mangye16/Unsupervised_Embedding_Learning ``demo_seen.py --batch-t 0.1 --low-dim 128 --batch-m 1``).

    Attributes:
        temperature: tau of the in-batch softmax (0.1).
        embed_dim: the L2-normalised linear embedding (128).
        detach_candidates: the other features of the batch act as constant classifier weights
            (the repo's ``BatchAverage`` indexes ``feat.data``); off: gradients flow through them.
        gather_distributed: under data parallelism, every anchor is classified against the
            features of the whole global batch (gathered, with gradients unless detached); off:
            the rank's own slice only. No effect in one process.
    """

    temperature: float = 0.1
    embed_dim: int = 128
    detach_candidates: bool = True
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")


def invaspread_loss(f1: torch.Tensor, f2: torch.Tensor, temperature: float, *, detach_candidates: bool = True,
                    all_f1: torch.Tensor | None = None, all_f2: torch.Tensor | None = None,
                    offset: int = 0) -> torch.Tensor:
    """The invariance-and-spreading loss (Ye et al. 2019, Eq. 2-5), as the official code computes it.

    With the 2N features ``u = normalize([f1; f2])``, anchor ``a``, its other view ``p(a)`` and

        P(k|a) = exp(u_k . u_a / tau) / sum_{l != a} exp(u_l . u_a / tau),

    the loss is

        L = 1/(2N) sum_a [ -log P(p(a)|a) - sum_{k != a, p(a)} log(1 - P(k|a)) ].

    The first term makes a view recognised as its own instance, the second (the spreading term,
    the independence assumption of Eq. 4) keeps it from being recognised as any other instance.
    Faithful to ``BatchAverage.py`` / ``BatchCriterion`` (``negM = 1``) rather than to the paper's
    notation: both views serve as anchors; the candidates are the other 2N - 1 features of the
    batch (both views, the anchor itself excluded), and the spreading term uses the anchor's own
    softmax; the sum is divided by 2N; with ``detach_candidates`` the candidates are constants.
    The logits are float32 (autocast off).

    Global batch (data parallelism): ``all_f1`` / ``all_f2`` hold the M images of all ranks (this
    rank's N at ``offset``); anchors stay local and the candidates become the other 2M - 1, so the
    mean over ranks equals one process's loss on the joint batch.

    Args:
        f1: embeddings of the first views.
        f2: embeddings of the second views (row i: the same image as row i of ``f1``).
        temperature: tau > 0.
        detach_candidates: no gradient through the candidates (the official ``feat.data``).
        all_f1: first-view embeddings of the global batch (None: this batch).
        all_f2: second-view embeddings of the global batch.
        offset: row of ``all_f1`` where this rank's batch starts.

    Shape:
        f1, f2: (N, D); all_f1, all_f2: (M, D). Returns a scalar.
    """
    n = f1.shape[0]
    u = F.normalize(torch.cat(fp32(f1, f2)), dim=1)
    if all_f1 is None or all_f2 is None:
        candidates, m = u, n
    else:
        m = all_f1.shape[0]
        candidates = F.normalize(torch.cat(fp32(all_f1, all_f2)), dim=1)
    if detach_candidates:
        candidates = candidates.detach()
    rows = torch.arange(2 * n, device=u.device)
    own = torch.cat([rows[:n] + offset, rows[:n] + m + offset])
    partner = torch.cat([own[n:], own[:n]])
    is_self = torch.zeros(2 * n, 2 * m, dtype=torch.bool, device=u.device)
    is_self[rows, own] = True
    logits = fp32_matmul(u, candidates.T)
    log_p = (logits / temperature).masked_fill(is_self, float("-inf")).log_softmax(dim=1)
    invariance = log_p[rows, partner]
    is_negative = ~is_self
    is_negative[rows, partner] = False
    spread = torch.where(is_negative, torch.log1p(-log_p.exp()), torch.zeros_like(log_p)).sum(dim=1)
    return -(invariance + spread).mean()


@register_method(
    "invaspread", config=InvaSpreadConfig, family="contrastive, in-batch instance softmax",
    paper="Ye et al., Unsupervised Embedding Learning via Invariant and Spreading Instance Feature, "
          "CVPR 2019, https://arxiv.org/abs/1904.03436",
    default_recipe="invaspread-quick",
)
class InvaSpread(Method):
    """Encoder -> linear 128-d -> L2 norm; both views of the batch classified against each other."""

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: InvaSpreadConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.embed = nn.Linear(feature_dim, cfg.embed_dim)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        # One forward of [x; x_hat], as the repo concatenates the two views.
        f1, f2 = forward_views(lambda x: self.embed(self.encoder(x)), views[:2])
        cfg = self.cfg
        if cfg.gather_distributed and is_initialized():
            gather = gather_no_grad if cfg.detach_candidates else gather_with_grad
            loss = invaspread_loss(f1, f2, cfg.temperature, detach_candidates=cfg.detach_candidates,
                                   all_f1=gather(f1), all_f2=gather(f2), offset=rank() * f1.shape[0])
        else:
            loss = invaspread_loss(f1, f2, cfg.temperature, detach_candidates=cfg.detach_candidates)
        return StepOutput(loss=loss)
