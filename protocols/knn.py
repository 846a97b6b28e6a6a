"""Weighted k-nearest-neighbour classification on frozen features (pure tensor code).

The InstDisc rule (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018) as used by DINO ``eval_knn.py`` and lightly ``knn_predict``: features
are L2-normalised, the ``k`` training features with the highest cosine similarity to a test
feature vote for their labels, each with weight ``exp(sim / T)``; the class with the largest summed
weight wins.

Version history (:class:`~sslbench.protocols.spec.KNNSpec` ``version``):
    1: initial implementation. Ties between equal class scores go to the smaller class index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KNN_BLOCK_ELEMENTS", "knn_chunk_size", "knn_classify", "knn_predict", "topk_correct"]

#: Test rows per similarity block on the CPU (every CPU number so far was measured with it).
CPU_CHUNK_SIZE = 1024
#: On CUDA the block of ``chunk × N`` similarities is sized to at most this many elements
#: (2^28 float32 = 1 GiB; top-k and the vote add a few ``chunk × k`` tensors).
KNN_BLOCK_ELEMENTS = 2**28


def knn_predict(
    features: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> Tensor:
    """Class scores of a weighted kNN vote with cosine similarity.

    ``scores[b, c] = sum_{j in topk_j(sim[b, j])} exp(sim[b, j] / T) * [bank_labels[j] == c]`` with
    ``sim[b, j] = <f_b / |f_b|, m_j / |m_j|>``. Both ``features`` and ``bank`` are L2-normalised
    *inside* this function, so callers may pass raw features (the result is invariant to the scale
    of each row). ``k`` is clamped to the bank size.

    Args:
        features: query features.
        bank: reference (training) features.
        bank_labels: integer labels of the bank rows, in ``[0, num_classes)``.
        num_classes: number of classes C.
        k: number of neighbours (>= 1).
        temperature: T > 0 of the vote weights.

    Returns:
        Class scores; ``argmax`` along dim 1 is the prediction.

    Shape:
        - features: (B, D)
        - bank: (N, D)
        - bank_labels: (N,)
        - output: (B, C), same dtype as ``features``.
    """
    if features.ndim != 2 or bank.ndim != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(f"features {tuple(features.shape)} and bank {tuple(bank.shape)} must be (B, D) and (N, D).")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels {tuple(bank_labels.shape)} must be ({bank.shape[0]},).")
    if bank.shape[0] == 0:
        raise ValueError("The kNN bank is empty.")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1.")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    k = min(k, bank.shape[0])
    sim = F.normalize(features, dim=1) @ F.normalize(bank, dim=1).T  # (B, N)
    top_sim, top_idx = sim.topk(k, dim=1)  # (B, k)
    weights = (top_sim / temperature).exp()
    scores = torch.zeros(features.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, bank_labels[top_idx], weights)


def topk_correct(scores: Tensor, labels: Tensor, ks: tuple[int, ...]) -> dict[int, int]:
    """Counts the rows whose true class is among the ``k`` best-scored classes, for each ``k``.

    Ties are broken deterministically toward the smaller class index (as :func:`torch.argmax`
    does), so a class ranks ahead of the true one when its score is larger, or equal with a smaller
    index.

    Shape:
        - scores: (B, C)
        - labels: (B,)
    """
    counts = _topk_correct_counts(scores, labels, ks).tolist()
    return {k: int(c) for k, c in zip(ks, counts)}


def _topk_correct_counts(scores: Tensor, labels: Tensor, ks: tuple[int, ...]) -> Tensor:
    """:func:`topk_correct` as an int64 tensor (len(ks),) on the scores' device (no host sync)."""
    true = scores.gather(1, labels[:, None])  # (B, 1)
    cls = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > true) | ((scores == true) & (cls[None, :] < labels[:, None]))
    rank = ahead.sum(dim=1)  # 0 = predicted first
    return torch.stack([(rank < k).sum() for k in ks])


def knn_chunk_size(num_bank: int, device: torch.device | str) -> int:
    """Test rows per similarity block of :func:`knn_classify` when the caller gives none.

    :data:`CPU_CHUNK_SIZE` on the CPU; on CUDA as many rows as keep the ``chunk × num_bank`` block
    within :data:`KNN_BLOCK_ELEMENTS` (at least 1).
    """
    if torch.device(device).type != "cuda":
        return CPU_CHUNK_SIZE
    return max(1, KNN_BLOCK_ELEMENTS // max(1, num_bank))


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    k: int,
    temperature: float,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of the weighted kNN classifier of :func:`knn_predict`.

    Everything runs on the bank's device (pass ``train_features`` on CUDA to run there); test rows
    are processed ``chunk_size`` at a time, bounding the similarity matrix to ``chunk_size × N``
    entries, and the correct counts stay on the device until the end. The result does not depend
    on ``chunk_size``.

    Args:
        train_features: bank features (need not be normalised).
        train_labels: bank labels.
        test_features: query features (need not be normalised).
        test_labels: query labels.
        num_classes: number of classes C.
        k: number of neighbours, clamped to the train-set size.
        temperature: T of the vote weights.
        chunk_size: test rows per similarity block; default :func:`knn_chunk_size` (1024 on the
            CPU, sized from :data:`KNN_BLOCK_ELEMENTS` on CUDA).

    Returns:
        ``{"top1": %, "top5": %}``; ``"top5"`` only when ``num_classes >= 5``.

    Shape:
        - train_features: (N, D)
        - train_labels: (N,)
        - test_features: (M, D)
        - test_labels: (M,)
    """
    if chunk_size is None:
        chunk_size = knn_chunk_size(train_features.shape[0], train_features.device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1.")
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"test_labels {tuple(test_labels.shape)} must be ({test_features.shape[0]},).")
    if test_features.shape[0] == 0:
        raise ValueError("The kNN test set is empty.")
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}).")
    ks = (1, 5) if num_classes >= 5 else (1,)
    bank = F.normalize(train_features, dim=1)  # normalised once, not once per chunk
    train_labels = train_labels.to(bank.device)
    correct = torch.zeros(len(ks), dtype=torch.int64, device=bank.device)
    for start in range(0, test_features.shape[0], chunk_size):
        queries = test_features[start : start + chunk_size].to(bank.device)
        scores = knn_predict(queries, bank, train_labels, num_classes, k, temperature)
        labels = test_labels[start : start + chunk_size].to(bank.device)
        correct += _topk_correct_counts(scores, labels, ks)
    total = test_features.shape[0]
    return {f"top{kk}": 100.0 * int(c) / total for kk, c in zip(ks, correct.tolist())}
