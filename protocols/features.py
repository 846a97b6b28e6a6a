"""Feature extraction from a frozen encoder, and the encoder-mode bookkeeping shared by protocols."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["extract_features", "frozen_eval"]


@contextlib.contextmanager
def frozen_eval(encoder: nn.Module) -> Iterator[nn.Module]:
    """Puts every submodule in eval mode and every parameter at ``requires_grad=False``.

    On exit each submodule's ``training`` flag and each parameter's ``requires_grad`` are restored
    one by one (``encoder.train(flag)`` would overwrite deliberately mixed modes, e.g. a backbone
    with frozen BatchNorm layers).
    """
    modes = [(m, m.training) for m in encoder.modules()]
    grads = [(p, p.requires_grad) for p in encoder.parameters()]
    encoder.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield encoder
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


def _num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    preprocess: Callable[[Tensor], Tensor],
    progress: str | None = None,
    subset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Embeds every image of ``dataset`` with a frozen encoder.

    The encoder runs in eval mode under ``torch.no_grad`` (its modes are restored afterwards) and
    must already live on ``device``.

    Args:
        encoder: maps preprocessed images (B, C, H, W) to features (B, D).
        dataset: anything with ``.batches(batch_size, shuffle=False)`` yielding objects with
            ``images`` (uint8), ``labels`` and ``indices``, and ``len()``.
        batch_size: images per forward pass.
        device: where preprocessing and the forward pass run.
        preprocess: maps a uint8 batch (already on ``device``) to the encoder's float input.
        progress: a tqdm description, or None for no bar.
        subset: optional boolean mask over the dataset (N,); only those images are embedded.

    Returns:
        ``(features, labels)`` on the CPU, rows in dataset order (restricted to ``subset``).

    Shape:
        - features: (N, D) float32
        - labels: (N,) int64
    """
    n = len(dataset)
    if subset is not None:
        if subset.dtype != torch.bool or subset.shape != (n,):
            raise ValueError(f"subset must be a bool mask of shape ({n},), got {subset.dtype} {tuple(subset.shape)}.")
        subset = subset.cpu()
        n_out = int(subset.sum())
        position = torch.cumsum(subset.long(), 0) - 1  # dataset index -> output row
    else:
        n_out = n
    features: Tensor | None = None
    labels = torch.empty(n_out, dtype=torch.int64)
    bar = tqdm(total=_num_batches(n, batch_size), desc=progress, disable=progress is None, leave=False)
    with frozen_eval(encoder), bar:
        for batch in dataset.batches(batch_size, shuffle=False):
            indices = torch.as_tensor(batch.indices).long().cpu()
            images = batch.images
            batch_labels = torch.as_tensor(batch.labels).long().cpu()
            if subset is not None:
                keep = subset[indices]
                images = images[keep.to(images.device)]
                indices, batch_labels = position[indices[keep]], batch_labels[keep]
            bar.update(1)
            if indices.numel() == 0:
                continue
            out = encoder(preprocess(images.to(device)))
            if out.ndim != 2 or out.shape[0] != indices.numel():
                raise ValueError(
                    f"The encoder returned shape {tuple(out.shape)} for {indices.numel()} images; "
                    "an encoder must map (B, C, H, W) images to (B, D) features (pool and flatten)."
                )
            if features is None:
                features = torch.empty(n_out, out.shape[1], dtype=torch.float32)
            features[indices] = out.float().cpu()
            labels[indices] = batch_labels
    if features is None:
        raise ValueError("No images to embed: the dataset (or subset) is empty.")
    return features, labels
