"""Representation diagnostics: pure tensor functions on embeddings, with closed forms in tests.

* :func:`alignment` and :func:`uniformity` (Wang & Isola, ICML 2020, https://arxiv.org/abs/2005.10242);
* :func:`rankme`, the effective rank of the embedding (Garrido et al., ICML 2023,
  https://arxiv.org/abs/2210.02885);
* :func:`normalized_std`, the standard deviation of L2-normalised embeddings against 1/sqrt(d),
  SimSiam's collapse monitor (Chen & He, CVPR 2021, §4.1), and :func:`collapse_warning`;
* :func:`covariance_spectrum`, the eigenvalues of the embedding covariance.

They take embeddings, never a model: the diagnostics protocol and the online monitor feed them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: :func:`normalized_std` x sqrt(d) below this trips the collapse alarm (1 for embeddings spread
#: over the sphere, 0 for a collapsed one; SimSiam without stop-gradient reaches 0 at once).
COLLAPSE_THRESHOLD = 0.25


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Alignment of positive pairs, ``E_i ||u_i - v_i||_2^alpha`` with ``u, v`` the L2-normalised
    rows (Wang & Isola 2020, Eq. 4); 0 for identical views, at most ``2^alpha``.

    Shape:
        z1, z2: (N, D), row i of both is the same image. Returns a scalar.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    u, v = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    return (u - v).norm(dim=1).pow(alpha).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Uniformity, ``log E_{i != j} exp(-t ||u_i - u_j||_2^2)`` over the distinct pairs of
    L2-normalised rows (Wang & Isola 2020, Eq. 5); lower is more uniform.

    Shape:
        z: (N, D) with N >= 2. Returns a scalar.
    """
    if z.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {z.shape[0]}")
    u = F.normalize(z.double(), dim=1)
    sq = torch.pdist(u).pow(2)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


def rankme(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe, the effective rank ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / ||s||_1 + eps``
    and ``s`` the singular values of the embedding matrix (Garrido et al. 2023, Eq. 1); between 1
    (rank one) and ``min(N, D)`` (equal singular values).

    Shape:
        z: (N, D). Returns a scalar.
    """
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return torch.exp(-(p * torch.log(p)).sum())


def normalized_std(z: torch.Tensor) -> torch.Tensor:
    """The mean over dimensions of the standard deviation (over the batch) of the L2-normalised
    embeddings; ``1/sqrt(d)`` for embeddings spread isotropically over the sphere, 0 for a
    collapsed output (SimSiam §4.1, Fig. 2).

    Shape:
        z: (N, D) with N >= 2. Returns a scalar.
    """
    if z.shape[0] < 2:
        raise ValueError(f"a standard deviation needs at least 2 embeddings, got {z.shape[0]}")
    return F.normalize(z.double(), dim=1).std(dim=0).mean()


def collapse_warning(z: torch.Tensor, threshold: float = COLLAPSE_THRESHOLD) -> str | None:
    """A one-paragraph warning when the embeddings have collapsed (``normalized_std(z) * sqrt(d)
    < threshold``), else None.

    Shape:
        z: (N, D).
    """
    ratio = float(normalized_std(z)) * math.sqrt(z.shape[1])
    if ratio >= threshold:
        return None
    return (f"Representation collapse: the standard deviation of the L2-normalised embeddings is "
            f"{ratio:.3f} x 1/sqrt(d) (d = {z.shape[1]}; about 1 when they spread over the sphere, 0 "
            f"when every image maps to the same point; alarm below {threshold}). The method is "
            "learning a constant: check its stop-gradient, predictor, temperature or learning rate.")


def covariance_spectrum(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the embedding covariance ``(Z - mean)^T (Z - mean) / (N - 1)``, descending.

    Shape:
        z: (N, D) with N >= 2. Returns (D,).
    """
    if z.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 embeddings, got {z.shape[0]}")
    zc = z.double() - z.double().mean(dim=0)
    cov = zc.T @ zc / (z.shape[0] - 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0)
