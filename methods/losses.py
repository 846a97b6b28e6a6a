"""Losses as pure functions: formula, shapes and paper in each docstring.

They take embeddings and return a scalar; they never gather across processes by themselves
(distributed negatives are the caller's opt-in).

The InfoNCE family (selectable in SimCLR and MoCo with the config key ``loss``) is split in two:
a function that turns a method's embeddings into per-anchor cosine similarities with its positive
and its negatives (:func:`simclr_similarities` for SimCLR's 2N in-batch formulation,
:func:`moco_similarities` for MoCo's query / key / queue), and one function per variant
``(pos, neg, ...) -> loss`` (:func:`info_nce_from_similarities`, :func:`binary_nce`,
:func:`debiased_contrastive`, :func:`hard_negative_contrastive`, :func:`flat_nce`,
:func:`align_uniform`), dispatched by :func:`contrastive_loss`.

Logits in full precision: every similarity that is divided by a temperature (here and in the
methods) goes through :func:`fp32_matmul` / :func:`fp32_einsum`, which upcast half-precision
inputs and run the product with autocast off. (``.float()`` alone does not do it: autocast casts
a matmul's inputs back to bf16; with tau = 0.1 a bf16 NT-Xent is 0.7 % off in value and 2 % in
gradient.) On float32 inputs without autocast the helpers are the plain product, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.nn.functional as F

from sslbench.benchmark.config import added_key

# ---------------------------------------------------------------------------------------------
# Full-precision logits
# ---------------------------------------------------------------------------------------------


def no_autocast(x: torch.Tensor) -> ContextManager[None]:
    """A context with autocast off on ``x``'s device type (the one place the helpers below turn
    it off; modules that must run a layer in full precision, e.g. SwAV's prototypes, use it too)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def fp32(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor in float32 if it is half precision (bf16 / fp16), else unchanged (float32 and
    float64 stay as they are: a no-op on them). Differentiable: gradients flow back in the
    input's dtype."""
    return [x.float() if x.dtype in (torch.float16, torch.bfloat16) else x for x in xs]


def fp32_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32 (float64 if either input is) with autocast off, for logits that are
    divided by a temperature. The plain ``a @ b`` on float32 inputs outside autocast.

    Shape:
        as :func:`torch.matmul`, e.g. a: (N, D), b: (D, M) -> (N, M); batched (B, N, D) @ (B, D, M).
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    with no_autocast(a):
        return a.to(dtype) @ b.to(dtype)


def fp32_einsum(equation: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.einsum(equation, a, b)`` in float32 (or float64) with autocast off (einsum's
    inner ``bmm`` is autocast to bf16 otherwise), e.g. ``"bd,bkd->bk"`` for scores against
    gathered memory rows."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    with no_autocast(a):
        return torch.einsum(equation, a.to(dtype), b.to(dtype))


def _two_view_candidates(z1: torch.Tensor, z2: torch.Tensor, all_z1: torch.Tensor | None,
                         all_z2: torch.Tensor | None, offset: int
                         ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The 2N normalised anchors ``[z1; z2]`` and the 2M normalised candidates (the global batch's
    ``[all_z1; all_z2]``, or the anchors themselves), validated; returns ``(u, candidates, N, M)``."""
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if (all_z1 is None) != (all_z2 is None):
        raise ValueError("all_z1 and all_z2 must be given together")
    n = z1.shape[0]
    u = F.normalize(torch.cat(fp32(z1, z2)), dim=1)
    if all_z1 is None or all_z2 is None:
        return u, u, n, n
    if all_z1.shape != all_z2.shape or all_z1.shape[1:] != z1.shape[1:]:
        raise ValueError(f"all_z1 and all_z2 must be (M, {z1.shape[1]}), got "
                         f"{tuple(all_z1.shape)} and {tuple(all_z2.shape)}")
    m = all_z1.shape[0]
    if not 0 <= offset <= m - n:
        raise ValueError(f"offset {offset} does not place {n} rows inside the {m} global rows")
    return u, F.normalize(torch.cat(fp32(all_z1, all_z2)), dim=1), n, m


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, *,
            all_z1: torch.Tensor | None = None, all_z2: torch.Tensor | None = None,
            offset: int = 0) -> torch.Tensor:
    """NT-Xent, SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020, Eq. 1).

    With the 2N embeddings ``u = normalize([z1; z2])`` and ``s_ij = u_i . u_j / tau``, the loss
    of anchor ``i`` whose positive is ``p(i)`` (the other view of the same image) is

        l_i = -log( exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik) ),

    averaged over all 2N anchors. The other 2N - 2 embeddings of the batch are the negatives.

    Global negatives (SimCLR's global batch under data parallelism): ``all_z1`` / ``all_z2``
    hold the projections of the whole global batch of M images (this rank's N rows at
    ``offset : offset + N``, e.g. from ``gather_with_grad``). The anchors stay this rank's 2N
    embeddings; the candidates ``k`` become all 2M embeddings ``normalize([all_z1; all_z2])``,
    so each anchor has 2M - 2 negatives. The mean of this loss over the ranks equals the loss
    of one process on the joint batch. Without them, M = N and ``offset = 0``.

    Args:
        z1: projections of the first views.
        z2: projections of the second views (row i is the same image as row i of ``z1``).
        temperature: tau > 0.
        all_z1: first-view projections of the global batch (None: this batch only).
        all_z2: second-view projections of the global batch, row-aligned with ``all_z1``.
        offset: row of ``all_z1`` / ``all_z2`` where this rank's batch starts.

    Shape:
        z1, z2: (N, D); all_z1, all_z2: (M, D) with M >= N. Returns a scalar.
    """
    u, candidates, n, m = _two_view_candidates(z1, z2, all_z1, all_z2, offset)
    logits = fp32_matmul(u, candidates.T) / temperature
    rows = torch.arange(n, device=u.device)
    own = torch.cat([rows + offset, rows + m + offset])  # anchor i's own column (masked out)
    positive = torch.cat([own[n:], own[:n]])  # the other view of the same image
    self_mask = torch.zeros(2 * n, 2 * m, dtype=torch.bool, device=u.device)
    self_mask[torch.arange(2 * n, device=u.device), own] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with a queue of negatives, MoCo's loss (He et al. 2020, Eq. 1).

    For a query ``q_i`` with positive key ``k_i`` and negatives ``n_j`` from the queue (all
    L2-normalised here):

        l_i = -log( exp(q_i . k_i / tau) / (exp(q_i . k_i / tau) + sum_j exp(q_i . n_j / tau)) ),

    averaged over the batch. Keys and queue receive no gradient. The logits are float32
    (:func:`fp32_matmul`).

    Args:
        q: queries (online encoder).
        k: keys (momentum encoder), row i is the positive of ``q_i``.
        queue: negatives.
        temperature: tau > 0.

    Shape:
        q, k: (N, D); queue: (K, D). Returns a scalar.
    """
    q, k, queue = fp32(q, k.detach(), queue.detach())
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = fp32_matmul(q, F.normalize(queue, dim=1).T)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al. 2020, Eq. 2): the mean squared error between
    L2-normalised prediction and target,

        L = mean_i || p_i/||p_i|| - z_i/||z_i|| ||^2 = mean_i (2 - 2 cos(p_i, z_i)).

    The target receives no gradient (stop-gradient).

    Args:
        p: online predictions.
        z: target projections.

    Shape:
        p, z: (N, D). Returns a scalar in [0, 4].
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


# ---------------------------------------------------------------------------------------------
# The InfoNCE family: per-anchor similarities, then one function per variant.
# ---------------------------------------------------------------------------------------------

#: the variants :func:`contrastive_loss` dispatches (the config key ``loss``).
LOSS_VARIANTS = ("infonce", "nce", "dcl", "hcl", "flatnce", "align_uniform")
#: variants whose value is not a mean of per-anchor terms (a log-mean over all pairs), so a
#: data-parallel caller must evaluate them on the whole global batch to match one process.
WHOLE_BATCH_LOSSES = ("align_uniform",)


@dataclass(frozen=True)
class LossVariantConfig:
    """The loss-variant keys shared by SimCLR, SimCLR v2 and MoCo v2 (their configs inherit them).

    Attributes:
        loss: one of :data:`LOSS_VARIANTS` (``infonce``: the method's own NT-Xent / InfoNCE).
        tau_plus: class prior tau+ of the debiased (``dcl``) and hard-negative (``hcl``) losses
            (0.1: the default and best STL-10 value of github.com/chingyaoc/DCL and
            github.com/joshr17/HCL; 0 gives the biased loss back).
        beta: concentration beta of ``hcl``'s importance weights (1.0: the HCL repo's default
            and its best STL-10 value; 0 gives ``dcl``).
        align_alpha: exponent alpha of the alignment term of ``align_uniform`` (2, Wang & Isola
            2020 and github.com/SsnL/align_uniform's default).
        unif_t: t of the uniformity term's Gaussian potential (2, same sources).
        unif_weight: lambda, the weight of the uniformity term (1, the repo's ``unif_w``).
    """

    # added after SimCLR and MoCo v2 runs existed: left out of their config hash while default
    loss: str = added_key("infonce")
    tau_plus: float = added_key(0.1)
    beta: float = added_key(1.0)
    align_alpha: float = added_key(2.0)
    unif_t: float = added_key(2.0)
    unif_weight: float = added_key(1.0)

    def __post_init__(self) -> None:
        if self.loss not in LOSS_VARIANTS:
            raise ValueError(f"unknown loss '{self.loss}'; valid losses: {', '.join(LOSS_VARIANTS)}")
        if not 0 <= self.tau_plus < 1:
            raise ValueError(f"tau_plus must be in [0, 1), got {self.tau_plus}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.align_alpha <= 0 or self.unif_t <= 0 or self.unif_weight < 0:
            raise ValueError(f"need align_alpha > 0, unif_t > 0, unif_weight >= 0, got "
                             f"{self.align_alpha}, {self.unif_t}, {self.unif_weight}")


def simclr_similarities(z1: torch.Tensor, z2: torch.Tensor, *, all_z1: torch.Tensor | None = None,
                        all_z2: torch.Tensor | None = None, offset: int = 0,
                        extra_negatives: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's 2N anchors as (positive, negatives) cosine similarities.

    With ``u = normalize([z1; z2])``, anchor ``i`` has the positive ``cos(u_i, u_p(i))`` (the other
    view of its image) and the 2N - 2 negatives ``cos(u_i, u_k)``, ``k != i, p(i)``, in the order of
    ``[z1; z2]``. Global negatives as in :func:`nt_xent`: with ``all_z1`` / ``all_z2`` (the M-image
    global batch, this batch at rows ``offset : offset + N``) the candidates are the 2M global
    embeddings and each anchor has 2M - 2 negatives. ``extra_negatives`` (e.g. SimCLR v2's memory
    of momentum-encoder keys) are appended to every anchor's negatives, without gradient. The
    similarities are float32 (:func:`fp32_matmul`).

    Shape:
        z1, z2: (N, D); all_z1, all_z2: (M, D); extra_negatives: (K, D).
        Returns pos (2N,) and neg (2N, 2M - 2 + K).
    """
    u, candidates, n, m = _two_view_candidates(z1, z2, all_z1, all_z2, offset)
    sims = fp32_matmul(u, candidates.T)
    rows = torch.arange(2 * n, device=u.device)
    own = torch.cat([rows[:n] + offset, rows[:n] + m + offset])  # anchor i's own column
    partner = torch.cat([own[n:], own[:n]])  # the other view of the same image
    pos = sims[rows, partner]
    # Every column but those two, in order, gathered (a boolean mask would make the host wait
    # for the device to count the kept entries): with lo < hi the row's two excluded columns,
    # the j-th kept column is j + [j >= lo] + [j >= hi - 1].
    lo, hi = torch.minimum(own, partner)[:, None], torch.maximum(own, partner)[:, None]
    j = torch.arange(2 * m - 2, device=u.device)
    neg = sims.gather(1, j + (j >= lo).long() + (j >= hi - 1).long())
    if extra_negatives is not None:
        (extra,) = fp32(extra_negatives.detach())
        neg = torch.cat([neg, fp32_matmul(u, F.normalize(extra, dim=1).T)], dim=1)
    return pos, neg


def moco_similarities(q: torch.Tensor, k: torch.Tensor,
                      queue: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's queries as (positive, negatives) cosine similarities: ``cos(q_i, k_i)`` and
    ``cos(q_i, n_j)`` for the K queue entries, in float32. Keys and queue receive no gradient.

    Shape:
        q, k: (N, D); queue: (K, D). Returns pos (N,) and neg (N, K).
    """
    q, k, queue = fp32(q, k.detach(), queue.detach())
    q = F.normalize(q, dim=1)
    pos = (q * F.normalize(k, dim=1)).sum(dim=1)
    return pos, fp32_matmul(q, F.normalize(queue, dim=1).T)


def info_nce_from_similarities(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE (Oord et al. 2018; SimCLR's NT-Xent, MoCo's loss) on per-anchor similarities,

        l_i = -log( exp(pos_i / tau) / (exp(pos_i / tau) + sum_j exp(neg_ij / tau)) ),

    averaged over anchors; equal to :func:`nt_xent` / :func:`info_nce` on the same inputs.

    Shape:
        pos: (A,); neg: (A, K). Returns a scalar.
    """
    pos, neg = fp32(pos, neg)  # the exponentials overflow in half precision
    logits = torch.cat([pos[:, None], neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device))


def binary_nce(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """Binary noise-contrastive estimation (Gutmann & Hyvarinen 2010) as InstDisc uses it (Wu et
    al., CVPR 2018, §3.2; zhirongw/lemniscate.pytorch ``NCECriterion``): each similarity is
    classified as data (the positive) or noise (the K negatives, noise ratio m = K, uniform noise
    P_n = 1/n over n instances) by ``h(s) = P(s) / (P(s) + m P_n)`` with the model
    ``P(s) = exp(s / tau) / Z``, and

        l_i = -log h(pos_i) - sum_j log(1 - h(neg_ij)).

    Z is InstDisc's Monte-Carlo estimate from the anchor's own noise samples
    (``Z_i = n / m sum_j exp(neg_ij / tau)``), treated as a constant (detached) as in the repo;
    n then cancels and ``h(s) = sigmoid(s / tau - logsumexp_j(neg_ij / tau))``. (The repo fixes
    one Z from the first batch instead, which would make the loss stateful.) Averaged over anchors.

    Shape:
        pos: (A,); neg: (A, K). Returns a scalar.
    """
    pos, neg = fp32(pos, neg)  # the exponentials overflow in half precision
    pos, neg = pos / temperature, neg / temperature
    log_mz = torch.logsumexp(neg, dim=1, keepdim=True).detach()  # log(m Z_i / n)
    terms = -F.logsigmoid(pos[:, None] - log_mz).squeeze(1) - F.logsigmoid(log_mz - neg).sum(dim=1)
    return terms.mean()


def _debiased(pos: torch.Tensor, neg: torch.Tensor, temperature: float, tau_plus: float,
              beta: float) -> torch.Tensor:
    """DCL / HCL in log-space, shifted by each anchor's largest logit (the loss is invariant to
    a common factor of all its exponentials, the clamp's floor included)."""
    pos, neg = fp32(pos, neg)  # the exponentials overflow in half precision
    pos, neg = pos / temperature, neg / temperature
    n = neg.shape[1]
    shift = torch.maximum(pos, neg.max(dim=1).values).detach()
    e_pos = torch.exp(pos - shift)
    e_neg = torch.exp(neg - shift[:, None])
    if beta == 0:
        neg_sum = e_neg.sum(dim=1)
    else:  # sum_j w_j e^{neg_j} / mean_j w_j with w_j = e^{beta neg_j}
        neg_sum = n * (torch.softmax(beta * neg, dim=1) * e_neg).sum(dim=1)
    ng = (neg_sum - tau_plus * n * e_pos) / (1 - tau_plus)
    ng = torch.maximum(ng, n * torch.exp(-1 / temperature - shift))
    return (torch.log(e_pos + ng) - (pos - shift)).mean()


def debiased_contrastive(pos: torch.Tensor, neg: torch.Tensor, temperature: float,
                         tau_plus: float) -> torch.Tensor:
    """Debiased contrastive loss (Chuang et al., NeurIPS 2020, arXiv 2007.00224, the debiased
    objective with M = 1 positive; github.com/chingyaoc/DCL ``main.py``). With
    ``P = exp(pos_i / t)`` and N negatives,

        Ng_i = max( (-tau+ N P + sum_j exp(neg_ij / t)) / (1 - tau+),  N exp(-1 / t) ),
        l_i  = -log( P / (P + Ng_i) ),

    averaged over anchors. ``Ng`` estimates the sum over *true* negatives by removing the expected
    share tau+ of same-class samples among the negatives; the floor is its smallest possible value
    (cosine >= -1). With tau+ = 0 the floor never binds and this is InfoNCE with N negatives.

    Shape:
        pos: (A,); neg: (A, N). Returns a scalar.
    """
    return _debiased(pos, neg, temperature, tau_plus, 0.0)


def hard_negative_contrastive(pos: torch.Tensor, neg: torch.Tensor, temperature: float,
                              tau_plus: float, beta: float) -> torch.Tensor:
    """Hard-negative contrastive loss (Robinson et al., ICLR 2021, arXiv 2010.04592, the
    hard-sampling objective with M = 1 positive; github.com/joshr17/HCL ``image/main.py``): DCL
    whose negatives are importance-weighted towards the hard ones, ``w_ij = exp(beta neg_ij / t)``,

        Ng_i = max( (-tau+ N P + N sum_j w_ij exp(neg_ij / t) / sum_j w_ij) / (1 - tau+),
                    N exp(-1 / t) ),
        l_i  = -log( P / (P + Ng_i) ),

    averaged over anchors. As in the repo, the weights are not detached. beta = 0 gives
    :func:`debiased_contrastive`.

    Shape:
        pos: (A,); neg: (A, N). Returns a scalar.
    """
    return _debiased(pos, neg, temperature, tau_plus, beta)


def flat_nce(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """FlatNCE (Chen et al. 2021, arXiv 2107.01152; github.com/Junya-Chen/FlatCLR). With
    ``c_i = logsumexp_j((neg_ij - pos_i) / tau)``,

        l_i = exp(c_i - sg(c_i)) - 1,

    averaged over anchors (``sg``: stop-gradient). Its value is 0 at every step; its gradient is
    ``grad c_i``, which is InfoNCE's per-anchor gradient divided by ``1 - p_i`` where ``p_i`` is
    the softmax probability of the positive (InfoNCE ``= log(1 + e^c)``, ``d/dc = 1 - p``): it does
    not vanish when the positive dominates, the small-batch failure FlatNCE addresses. Log
    InfoNCE beside it to monitor training (the methods do).

    Shape:
        pos: (A,); neg: (A, K). Returns a scalar (0).
    """
    pos, neg = fp32(pos, neg)  # the exponentials overflow in half precision
    c = torch.logsumexp((neg - pos[:, None]) / temperature, dim=1)
    return (torch.exp(c - c.detach()) - 1).mean()


def align_uniform(pos: torch.Tensor, neg: torch.Tensor, alpha: float = 2.0, t: float = 2.0,
                  weight: float = 1.0) -> torch.Tensor:
    """Alignment + uniformity (Wang & Isola, ICML 2020, arXiv 2005.10242, the definitions of
    L_align and L_uniform; github.com/SsnL/align_uniform): for unit vectors
    ``||u - v||^2 = 2 - 2 cos(u, v)``, and

        L_align   = mean_i ||u_i - u_p(i)||^alpha = mean_i (2 - 2 pos_i)^(alpha / 2),
        L_uniform = log mean_{(i, j)} exp(-t ||u_i - u_j||^2) = log mean_{ij} exp(2t neg_ij - 2t),
        L = L_align + weight * L_uniform,

    the log of one mean over all (anchor, negative) pairs, i.e. over pairs of different images
    (SimCLR's form: both views of the batch, same- and cross-view; the repo averages
    ``uniform(x)`` and ``uniform(y)`` over same-view pairs, an estimate of the same expectation
    E_{x, y iid} from fewer pairs; MoCo's form: query vs queue). No temperature. Not a mean of
    per-anchor terms: under data parallelism evaluate it on the whole global batch
    (:data:`WHOLE_BATCH_LOSSES`).

    Shape:
        pos: (A,); neg: (A, K). Returns a scalar.
    """
    pos, neg = fp32(pos, neg)  # the exponentials overflow in half precision
    align = (2 - 2 * pos).clamp_min(0).pow(alpha / 2).mean()
    count = torch.full((), float(neg.numel()), dtype=neg.dtype, device=neg.device)  # no host copy
    uniform = torch.logsumexp((2 * t * (neg - 1)).flatten(), dim=0) - torch.log(count)
    return align + weight * uniform


def contrastive_loss(pos: torch.Tensor, neg: torch.Tensor, temperature: float,
                     cfg: LossVariantConfig) -> torch.Tensor:
    """The variant ``cfg.loss`` on per-anchor similarities (see each function).

    Shape:
        pos: (A,); neg: (A, K). Returns a scalar.
    """
    if cfg.loss == "infonce":
        return info_nce_from_similarities(pos, neg, temperature)
    if cfg.loss == "nce":
        return binary_nce(pos, neg, temperature)
    if cfg.loss == "dcl":
        return debiased_contrastive(pos, neg, temperature, cfg.tau_plus)
    if cfg.loss == "hcl":
        return hard_negative_contrastive(pos, neg, temperature, cfg.tau_plus, cfg.beta)
    if cfg.loss == "flatnce":
        return flat_nce(pos, neg, temperature)
    if cfg.loss == "align_uniform":
        return align_uniform(pos, neg, cfg.align_alpha, cfg.unif_t, cfg.unif_weight)
    raise ValueError(f"unknown loss '{cfg.loss}'; valid losses: {', '.join(LOSS_VARIANTS)}")
