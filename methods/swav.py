"""SwAV (Caron et al., NeurIPS 2020): online clustering by swapped prediction. Each view predicts,
against K learnt prototypes, the Sinkhorn-Knopp codes of the other global views; multi-crop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import gather_no_grad, is_initialized, reduce_over_ranks, world_size
from sslbench.methods.base import Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.losses import fp32, no_autocast
from sslbench.methods.momentum import FeatureQueue
from sslbench.methods.multicrop import count_global, crop_pairs
from sslbench.methods.registry import register_method


def _reduce(x: torch.Tensor, distributed: bool, maximum: bool = False) -> torch.Tensor:
    """``x`` summed (or maxed) over ranks when ``distributed``, else ``x`` itself."""
    return reduce_over_ranks(x, "max" if maximum else "sum") if distributed else x


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, *,
             shared: torch.Tensor | None = None, distributed: bool = False) -> torch.Tensor:
    """Soft codes by Sinkhorn-Knopp (SwAV §3.1, eq. 3; the official ``distributed_sinkhorn``).

    Over the N rows of all ranks' batches plus the shared rows, ``Q = exp(S / eps)`` is scaled to
    sum to 1, then ``iterations`` times each prototype's column is scaled to total 1/K and each
    row to total 1/N; finally ``Q *= N``, so each row (a code) sums to 1 and each prototype gets
    about N/K of the mass (equipartition). S minus its global max is exponentiated (cancelled by
    the first scaling; no overflow at small eps); computed in float32 or wider. Sums are floored
    at the dtype's ``tiny``, so a prototype or row whose every entry underflows (only at eps far
    below 0.05) gets zero mass instead of NaN.

    Args:
        scores: this rank's rows (samples) against the K prototypes.
        epsilon: entropy regularisation eps.
        iterations: Sinkhorn iterations.
        shared: rows every rank holds identically (the queue): transported, never all-reduced,
            codes not returned.
        distributed: the batch sums are all-reduced over ranks (each holds a slice of the batch).

    Shape:
        scores: (B, K); shared: (L, K); return: (B, K), rows summing to 1.
    """
    dtype = torch.promote_types(scores.dtype, torch.float32)
    s = scores.to(dtype)
    sh = s.new_zeros((0, s.shape[1])) if shared is None else shared.to(dtype)
    top = _reduce(torch.cat((s.flatten(), sh.flatten())).max(), distributed, maximum=True)
    q, qs = torch.exp((s - top) / epsilon), torch.exp((sh - top) / epsilon)
    n = s.shape[0] * (world_size() if distributed else 1) + sh.shape[0]
    k, tiny = s.shape[1], torch.finfo(dtype).tiny
    total = _reduce(q.sum(), distributed) + qs.sum()
    q, qs = q / total, qs / total
    for _ in range(iterations):
        per_prototype = (_reduce(q.sum(dim=0), distributed) + qs.sum(dim=0)).clamp_min(tiny) * k
        q, qs = q / per_prototype, qs / per_prototype
        q = q / (q.sum(dim=1, keepdim=True).clamp_min(tiny) * n)
        qs = qs / (qs.sum(dim=1, keepdim=True).clamp_min(tiny) * n)
    return q * n


def prototype_scores(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The scores ``z C^T`` of projections against the prototypes, in float32 with autocast off:
    both the Sinkhorn step (``exp(s / 0.05)``) and the prediction (``softmax(s / 0.1)``) amplify
    a bf16 rounding of s twenty- and tenfold.

    Shape:
        z: (B, D); prototypes: (K, D) (the bias-free linear layer's weight); return: (B, K).
    """
    z, prototypes = fp32(z, prototypes)
    with no_autocast(z):
        return F.linear(z, prototypes)


def swapped_prediction_loss(scores: list[torch.Tensor], codes: list[torch.Tensor],
                            pairs: list[tuple[int, int]], temperature: float) -> torch.Tensor:
    """SwAV's swapped prediction (§3.1, eq. 1-2), averaged over the multi-crop pairs.

    ``L = 1/|P| sum_{(t, s) in P} 1/B sum_b -sum_k q_t[b, k] log softmax(z_s[b] / tau)_k``, with P
    the ``(target, prediction)`` pairs of :func:`~sslbench.methods.multicrop.crop_pairs`: the codes
    of each global view t predicted from every other view s (as the official loop over
    ``crops_for_assign``, each sub-loss divided by ``n_crops - 1``, then by the global views).

    Shape:
        scores: one (B, K) tensor of prototype scores per view; codes: one (B, K) per global
        view; return: ().
    """
    losses = [-(codes[t] * F.log_softmax(scores[s] / temperature, dim=1)).sum(dim=1).mean() for t, s in pairs]
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class SwAVConfig:
    """SwAV hyperparameters (defaults: facebookresearch/swav scripts/swav_800ep_pretrain.sh).

    Attributes:
        proj_hidden_dim: projector hidden width (2048, ``hidden_mlp``).
        proj_dim: projector output, the prototypes' dimension (128, ``--feat_dim``).
        num_prototypes: K (3000, ``--nmb_prototypes``).
        temperature: softmax tau of the predictions (0.1).
        epsilon: Sinkhorn entropy regularisation (0.05; the README suggests 0.03 if the loss sticks
            at ln K).
        sinkhorn_iterations: 3.
        queue_length: stored projections per global view used in the Sinkhorn step (0 = off;
            3840 at batch 256 in scripts/swav_200ep_bs256_pretrain.sh). Under data parallelism
            every rank stores the whole global batch (gathered, no gradient), so the replicas and
            rank 0's checkpoint hold one queue; the official code keeps ``queue_length / W`` per
            rank, the same rows in total.
        epoch_queue_starts: the queue is filled from this epoch and used once full (15).
        freeze_prototypes_epochs: prototypes get no update in these first epochs (1; the official
            ``--freeze_prototypes_niters 313`` is one epoch at batch 4096, 5005 at 256).
        gather_distributed: under data parallelism the Sinkhorn sums run over the global batch
            (all-reduced, as the official code); off: each rank computes codes from its own slice
            (plus the queue). No effect in one process.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    queue_length: int = 0
    epoch_queue_starts: int = 15
    freeze_prototypes_epochs: int = 1
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        if min(self.proj_hidden_dim, self.proj_dim, self.num_prototypes, self.sinkhorn_iterations) < 1:
            raise ValueError("proj_hidden_dim, proj_dim, num_prototypes, sinkhorn_iterations must be >= 1")
        if self.temperature <= 0 or self.epsilon <= 0:
            raise ValueError(f"temperature and epsilon must be > 0, got {self.temperature}, {self.epsilon}")
        if min(self.queue_length, self.epoch_queue_starts, self.freeze_prototypes_epochs) < 0:
            raise ValueError("queue_length, epoch_queue_starts, freeze_prototypes_epochs must be >= 0")


@register_method(
    "swav", config=SwAVConfig, family="clustering, swapped prediction + Sinkhorn codes",
    paper="Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster "
          "Assignments, NeurIPS 2020, https://arxiv.org/abs/2006.09882",
    default_recipe="swav-quick",
)
class SwAV(Method):
    """Encoder -> projector -> L2-normalise -> prototypes (bias-free linear, unit-norm rows).

    Prototypes are re-normalised in :meth:`on_step_end`, after the optimiser step (the official
    code does it before the next forward: the same weights reach every forward, and the forward
    stays free of side effects). Codes come from the global views only (the leading views of the
    first resolution) and never carry gradient.
    """

    queue_fill: torch.Tensor  # () long buffer: valid rows in the queue
    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: SwAVConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        # Row i holds both global views' projections of one past image (the official code keeps
        # one queue per view of ``crops_for_assign 0 1``).
        self.queue = FeatureQueue(cfg.queue_length, 2 * cfg.proj_dim) if cfg.queue_length else None
        self.register_buffer("queue_fill", torch.zeros((), dtype=torch.long))

    def _distributed(self) -> bool:
        return self.cfg.gather_distributed and is_initialized()

    def _queue_fill(self) -> int:
        """``queue_fill`` from a Python-side copy (the buffer is read once per build or load;
        :meth:`on_step_end` keeps the copy in step), so no step waits for the device."""
        return self.host_value("queue_fill", lambda: int(self.queue_fill))

    def queue_ready(self, ctx: StepContext) -> bool:
        """Whether this step's codes use the queue: from ``epoch_queue_starts``, once it is full."""
        return (self.queue is not None and ctx.epoch >= self.cfg.epoch_queue_starts
                and self._queue_fill() >= self.cfg.queue_length)

    def queued(self, view: int) -> torch.Tensor:
        """The queue's projections of global view ``view``, shape (L, proj_dim)."""
        assert self.queue is not None
        return self.queue.features.view(self.cfg.queue_length, 2, self.cfg.proj_dim)[:, view]

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        num_global = count_global(views)
        if self.queue is not None and num_global != 2:
            raise ValueError(f"SwAV's queue holds 2 global views; the augmentation gives {num_global}")
        z = forward_views(lambda x: F.normalize(self.projector(self.encoder(x)), dim=1), views)
        scores = [prototype_scores(v, self.prototypes.weight) for v in z]
        use_queue = self.queue_ready(ctx)
        with torch.no_grad():
            codes = [sinkhorn(scores[t].detach(), self.cfg.epsilon, self.cfg.sinkhorn_iterations,
                              shared=prototype_scores(self.queued(t), self.prototypes.weight) if use_queue else None,
                              distributed=self._distributed()) for t in range(num_global)]
        loss = swapped_prediction_loss(scores, codes, crop_pairs(num_global, len(views)), self.cfg.temperature)
        state = {"z": torch.cat(z[:num_global], dim=1).detach()} if self.queue is not None else {}
        return StepOutput(loss=loss, logs={"queue_used": float(use_queue)}, state=state)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        if ctx.epoch < self.cfg.freeze_prototypes_epochs:  # no update at all (AdamW decay included)
            self.prototypes.weight.grad = None

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))
        if self.queue is None:
            return {}
        if ctx.epoch >= self.cfg.epoch_queue_starts:
            z = gather_no_grad(out.state["z"])  # (W * B, 2D): the global batch, on every rank
            self.queue.enqueue(z)
            fill = min(self._queue_fill() + z.shape[0], self.cfg.queue_length)
            self.queue_fill.fill_(fill)
            self.set_host_value("queue_fill", fill)
        return {"queue_fill": float(self._queue_fill())}
