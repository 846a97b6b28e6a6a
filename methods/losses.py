"""Losses as pure functions: formula, shapes and paper in each docstring.

They take embeddings and return a scalar; they never gather across processes by themselves
(distributed negatives are the caller's opt-in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if (all_z1 is None) != (all_z2 is None):
        raise ValueError("all_z1 and all_z2 must be given together")
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    if all_z1 is None or all_z2 is None:
        candidates, m = u, n
    else:
        if all_z1.shape != all_z2.shape or all_z1.shape[1:] != z1.shape[1:]:
            raise ValueError(f"all_z1 and all_z2 must be (M, {z1.shape[1]}), got "
                             f"{tuple(all_z1.shape)} and {tuple(all_z2.shape)}")
        m = all_z1.shape[0]
        if not 0 <= offset <= m - n:
            raise ValueError(f"offset {offset} does not place {n} rows inside the {m} global rows")
        candidates = F.normalize(torch.cat([all_z1, all_z2]), dim=1)
    logits = u @ candidates.T / temperature
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

    averaged over the batch. Keys and queue receive no gradient.

    Args:
        q: queries (online encoder).
        k: keys (momentum encoder), row i is the positive of ``q_i``.
        queue: negatives.
        temperature: tau > 0.

    Shape:
        q, k: (N, D); queue: (K, D). Returns a scalar.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ F.normalize(queue.detach(), dim=1).T
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
