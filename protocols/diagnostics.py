"""Representation diagnostics: pure tensor functions on embeddings, and the protocol that runs them.

* :func:`alignment` and :func:`uniformity` (Wang & Isola, ICML 2020, https://arxiv.org/abs/2005.10242);
* :func:`rankme`, the effective rank of the embedding (Garrido et al., ICML 2023,
  https://arxiv.org/abs/2210.02885);
* :func:`normalized_std`, the standard deviation of L2-normalised embeddings in units of 1/sqrt(d),
  SimSiam's collapse monitor (Chen & He, CVPR 2021, §4.1), and :func:`collapse_warning`;
* :func:`covariance_spectrum`, the eigenvalues of the embedding covariance, summarised by
  :func:`top_eigenvalue_share` and :func:`eigenvalues_for_variance`.

The pure functions take embeddings, never a model: :func:`run_diagnostics` (the ``diagnostics``
protocol, on the test split) and the online monitor of pretraining
(:mod:`sslbench.benchmark.monitor`) feed them.

One convention throughout: ``normalized_std`` is always the std x sqrt(d) (1 for embeddings spread
isotropically over the sphere, 0 for a constant one), as a function, a metric and in the alarm.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.benchmark.augment import BatchAugment, get_augment_recipe
from sslbench.benchmark.errors import DatasetError
from sslbench.protocols.features import frozen_eval
from sslbench.protocols.linear import default_preprocess
from sslbench.protocols.output import ProtocolOutput
from sslbench.protocols.spec import DiagnosticsSpec

__all__ = [
    "COLLAPSE_THRESHOLD",
    "CollapseWarning",
    "alignment",
    "collapse_warning",
    "covariance_spectrum",
    "diagnostics_augment",
    "eigenvalues_for_variance",
    "normalized_std",
    "rankme",
    "run_diagnostics",
    "top_eigenvalue_share",
    "uniformity",
]

#: :func:`normalized_std` below this trips the collapse alarm. Calibrated on backbone features
#: (ReLU outputs, all >= 0, so their L2-normalised rows share a large mean direction and sit well
#: below 1 even when healthy), MEASURED with the small CNN, ResNet-18 and ViT-Ti at random init:
#: 0.16-0.39; after SimCLR / BYOL / SimSiam training: 0.49-0.65; a constant encoder: 0. (The value
#: 0.25 of earlier drafts tripped on random-init encoders.)
COLLAPSE_THRESHOLD = 0.05


class CollapseWarning(UserWarning):
    """The representation has collapsed (nearly every image maps to the same embedding)."""


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
    embeddings, in units of ``1/sqrt(d)``:

        normalized_std = sqrt(d) * mean_j std_i (z_ij / ||z_i||)

    1 for embeddings spread isotropically over the sphere, 0 for a collapsed (constant) output
    (SimSiam §4.1, Fig. 2, which plots the std itself against the 1/sqrt(d) line).

    Shape:
        z: (N, D) with N >= 2. Returns a scalar.
    """
    if z.shape[0] < 2:
        raise ValueError(f"a standard deviation needs at least 2 embeddings, got {z.shape[0]}")
    return F.normalize(z.double(), dim=1).std(dim=0).mean() * math.sqrt(z.shape[1])


def collapse_warning(z: torch.Tensor, threshold: float = COLLAPSE_THRESHOLD, context: str = "") -> str | None:
    """A one-paragraph warning when the embeddings have collapsed (``normalized_std(z) <
    threshold``), else None.

    Args:
        z: the embeddings.
        threshold: the alarm level (see :data:`COLLAPSE_THRESHOLD`).
        context: where they come from, put first (e.g. ``"Pretraining 'simsiam', step 120: "``).

    Shape:
        z: (N, D).
    """
    value = float(normalized_std(z))
    if value >= threshold:
        return None
    return (f"{context}Representation collapse: the standard deviation of the L2-normalised embeddings "
            f"is {value:.3f} x 1/sqrt(d) (d = {z.shape[1]}; about 0.2-0.6 for backbone features that "
            f"carry information, 0 when every image maps to the same point; alarm below {threshold}). "
            "The encoder is producing a constant, so no protocol will find anything in it: check the "
            "method's stop-gradient, predictor, temperature, weight decay or learning rate.")


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


def top_eigenvalue_share(eigenvalues: torch.Tensor) -> float:
    """The share of the total variance on the first principal direction, ``lambda_1 / sum_k lambda_k``
    (1 for a rank-one embedding, ``1/D`` for an isotropic one; 1 when the variance is 0).

    Shape:
        eigenvalues: (D,), descending (as :func:`covariance_spectrum` returns them).
    """
    total = float(eigenvalues.sum())
    return float(eigenvalues[0]) / total if total > 0 else 1.0


def eigenvalues_for_variance(eigenvalues: torch.Tensor, fraction: float = 0.9) -> int:
    """The fewest principal directions that hold ``fraction`` of the variance: the smallest ``k``
    with ``sum_{i<=k} lambda_i >= fraction * sum_i lambda_i`` (1 when the variance is 0).

    Shape:
        eigenvalues: (D,), descending.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    total = float(eigenvalues.sum())
    if total <= 0:
        return 1
    cumulative = torch.cumsum(eigenvalues.double(), 0) / total
    # a relative tolerance, so that fraction=1 is reached despite rounding in the cumulative sum
    reached = cumulative >= fraction - 1e-12
    return int(torch.nonzero(reached)[0]) + 1


# --------------------------------------------------------------------------------------------
# The ``diagnostics`` protocol
# --------------------------------------------------------------------------------------------

#: images per forward pass of the diagnostics protocol
BATCH_SIZE = 256


def diagnostics_augment(spec: DiagnosticsSpec, image_size: int) -> str:
    """The augmentation recipe of the two views: ``spec.augment``, where ``"auto"`` is
    ``simclr-small`` for images up to 64 px and ``simclr`` above."""
    if spec.augment != "auto":
        return spec.augment
    return "simclr-small" if image_size <= 64 else "simclr"


def run_diagnostics(
    encoder: nn.Module,
    test: Any,
    spec: DiagnosticsSpec,
    *,
    device: torch.device | str = "cpu",
    preprocess: Callable[[Tensor], Tensor] | None = None,
    normalization: tuple[Sequence[float], Sequence[float], int] | None = None,
) -> ProtocolOutput:
    """The ``diagnostics`` protocol: representation statistics of a frozen encoder on the first
    ``spec.max_images`` images of the test split.

    * ``alignment``: :func:`alignment` (exponent ``spec.alpha``) between the features of two
      augmented views of each image (recipe :func:`diagnostics_augment`, seeded by ``spec.seed``);
    * on the features of the plain (``preprocess``-ed) images: ``uniformity`` (temperature
      ``spec.t``), ``rankme``, ``normalized_std`` (x sqrt(d): 1 spread, 0 collapsed), ``collapse``
      (1.0 when ``normalized_std < COLLAPSE_THRESHOLD``, else 0.0), and from the covariance
      spectrum ``top_eigenvalue_share`` and ``eigenvalues_90`` (directions holding 90 % of the
      variance).

    The encoder runs in eval mode under ``torch.no_grad`` (modes restored afterwards) and must
    already live on ``device``. A collapsed encoder also raises a :class:`CollapseWarning`.

    Args:
        encoder: maps preprocessed images (B, C, H, W) to features (B, D).
        test: the test split (``.batches``, ``.info``, ``len()``); labels are not used.
        spec: the protocol's settings.
        device: where augmentation and the forward passes run.
        preprocess: plain preprocessing of uint8 batches; default ``to_float_normalized`` with
            ``test.info``'s mean, std and image size.
        normalization: ``(mean, std, image_size)`` the encoder expects, when it differs from the
            test data's own (a transfer); the views are normalised and sized with it.

    Returns:
        metrics as above; params ``feature_dim``, ``num_images``, ``augment``; artifact
        ``covariance_spectrum.json`` (every eigenvalue, descending).

    Raises:
        DatasetError: fewer than two test images.
    """
    n = min(len(test), spec.max_images)
    if n < 2:
        raise DatasetError(f"The diagnostics protocol needs at least 2 test images; the split has {len(test)}.",
                           "Evaluate on a larger test split.")
    info = test.info
    mean, std, size = normalization or (info.mean, info.std, info.image_size)
    recipe_name = diagnostics_augment(spec, size)
    augment = BatchAugment(get_augment_recipe(recipe_name), tuple(mean), tuple(std), size)
    preprocess = preprocess or default_preprocess(info)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    plain: list[Tensor] = []
    view1: list[Tensor] = []
    view2: list[Tensor] = []
    seen = 0
    with torch.no_grad(), frozen_eval(encoder):
        for batch in test.batches(BATCH_SIZE, shuffle=False):
            images = batch.images[: n - seen].to(device)
            seen += images.shape[0]
            v1, v2 = augment(images, generator)[:2]
            for out, x in ((plain, preprocess(images)), (view1, v1), (view2, v2)):
                features = encoder(x)
                if features.ndim != 2:
                    raise ValueError(f"The encoder returned shape {tuple(features.shape)}; an encoder must map "
                                     "(B, C, H, W) images to (B, D) features (pool and flatten).")
                out.append(features.double().cpu())
            if seen >= n:
                break
    z = torch.cat(plain)
    spectrum = covariance_spectrum(z)
    std = float(normalized_std(z))
    metrics = {
        "alignment": float(alignment(torch.cat(view1), torch.cat(view2), alpha=spec.alpha)),
        "uniformity": float(uniformity(z, t=spec.t)),
        "rankme": float(rankme(z)),
        "normalized_std": std,
        "collapse": float(std < COLLAPSE_THRESHOLD),
        "top_eigenvalue_share": top_eigenvalue_share(spectrum),
        "eigenvalues_90": float(eigenvalues_for_variance(spectrum, 0.9)),
    }
    message = collapse_warning(z, context=f"Diagnostics on {n} '{info.name}' test images: ")
    if message is not None:
        warnings.warn(CollapseWarning(message), stacklevel=2)
    params: dict[str, float | str] = {"feature_dim": float(z.shape[1]), "num_images": float(n),
                                      "augment": recipe_name}
    artifact = json.dumps({"eigenvalues": spectrum.tolist(), "num_images": n, "feature_dim": z.shape[1]})
    return ProtocolOutput(metrics=metrics, params=params, artifacts={"covariance_spectrum.json": artifact})
