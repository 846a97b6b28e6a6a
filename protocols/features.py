"""Feature extraction from a frozen encoder, and the encoder-mode bookkeeping shared by protocols.

On CUDA, extraction runs under bf16 autocast with channels-last inputs and a larger batch by
default, and keeps everything on the device until the end (no host sync per batch). On the CPU
nothing changes from fp32 at batch 512: protocol numbers there stay bit-identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "EXTRACT_PRECISIONS",
    "autocast_context",
    "default_extract_batch_size",
    "extract_features",
    "frozen_eval",
    "resolve_precision",
]

#: ``precision`` values of :func:`extract_features` (the training config's ``train.precision`` too).
EXTRACT_PRECISIONS = ("auto", "fp32", "bf16")
#: Images per forward pass when the caller gives none: the CPU value is the one every protocol
#: number so far was measured with; on CUDA, a larger batch (eval mode, no autograd state).
CPU_EXTRACT_BATCH_SIZE = 512
CUDA_EXTRACT_BATCH_SIZE = 1024


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


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision ``"fp32"`` or ``"bf16"`` that ``precision`` means on ``device``.

    ``"auto"`` is bf16 on CUDA (when the GPU supports it) and fp32 elsewhere, as the training's
    ``train.precision`` is.

    Raises:
        ValueError: ``precision`` is not one of :data:`EXTRACT_PRECISIONS`.
    """
    if precision not in EXTRACT_PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {EXTRACT_PRECISIONS}.")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    # Only a real GPU can say it lacks bf16; a CUDA device named on a CPU-only machine resolves as a GPU would.
    supported = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    return "bf16" if supported else "fp32"


def default_extract_batch_size(device: torch.device | str) -> int:
    """Images per forward pass of :func:`extract_features` when the caller gives none."""
    return CUDA_EXTRACT_BATCH_SIZE if torch.device(device).type == "cuda" else CPU_EXTRACT_BATCH_SIZE


def autocast_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The encoder's forward context for ``precision`` on ``device``: bf16 autocast, or nothing of
    its own for fp32 (an autocast the caller entered still applies, as for the training monitor,
    which runs under the training's)."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Any,
    *,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    preprocess: Callable[[Tensor], Tensor],
    progress: str | None = None,
    subset: Tensor | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
    output_device: torch.device | str | None = "cpu",
) -> tuple[Tensor, Tensor]:
    """Embeds every image of ``dataset`` with a frozen encoder.

    The encoder runs in eval mode under ``torch.no_grad`` (its modes are restored afterwards) and
    must already live on ``device``. Features and labels are scattered into tensors preallocated on
    ``device``; without ``subset`` no batch waits for the host (a subset costs one sync per batch,
    for its boolean selection). They are moved once, at the end, to ``output_device``.

    Args:
        encoder: maps preprocessed images (B, C, H, W) to features (B, D).
        dataset: anything with ``.batches(batch_size, shuffle=False)`` yielding objects with
            ``images`` (uint8), ``labels`` and ``indices``, and ``len()``.
        batch_size: images per forward pass; default :func:`default_extract_batch_size`
            (512 on the CPU, 1024 on CUDA).
        device: where preprocessing and the forward pass run.
        preprocess: maps a uint8 batch (already on ``device``) to the encoder's float input.
        progress: a tqdm description, or None for no bar.
        subset: optional boolean mask over the dataset (N,); only those images are embedded.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"fp32"`` or ``"bf16"``;
            :func:`resolve_precision` says which one ``"auto"`` is. The features are float32 in
            every case.
        channels_last: feed the encoder channels-last inputs (None: on CUDA). The encoder itself
            is not converted.
        output_device: where the returned tensors live; None keeps them on ``device``.

    Returns:
        ``(features, labels)``, rows in dataset order (restricted to ``subset``).

    Shape:
        - features: (N, D) float32
        - labels: (N,) int64
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if batch_size is None:
        batch_size = default_extract_batch_size(device)
    if channels_last is None:
        channels_last = device.type == "cuda"
    n = len(dataset)
    if subset is not None:
        if subset.dtype != torch.bool or subset.shape != (n,):
            raise ValueError(f"subset must be a bool mask of shape ({n},), got {subset.dtype} {tuple(subset.shape)}.")
        n_out = int(subset.sum())
        position = (torch.cumsum(subset.long(), 0) - 1).to(device)  # dataset index -> output row
        subset = subset.to(device)
    else:
        n_out = n
    features: Tensor | None = None
    labels = torch.empty(n_out, dtype=torch.int64, device=device)
    bar = tqdm(total=_num_batches(n, batch_size), desc=progress, disable=progress is None, leave=False)
    with frozen_eval(encoder), bar:
        for batch in dataset.batches(batch_size, shuffle=False):
            indices = torch.as_tensor(batch.indices).to(device, torch.int64, non_blocking=True)
            batch_labels = torch.as_tensor(batch.labels).to(device, torch.int64, non_blocking=True)
            images = batch.images.to(device, non_blocking=True)
            if subset is not None:
                keep = subset[indices]
                images, indices, batch_labels = images[keep], position[indices[keep]], batch_labels[keep]
            bar.update(1)
            if indices.numel() == 0:
                continue
            inputs = preprocess(images)
            if channels_last and inputs.ndim == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with autocast_context(precision, device):
                out = encoder(inputs)
            if out.ndim != 2 or out.shape[0] != indices.numel():
                raise ValueError(
                    f"The encoder returned shape {tuple(out.shape)} for {indices.numel()} images; "
                    "an encoder must map (B, C, H, W) images to (B, D) features (pool and flatten)."
                )
            if features is None:
                features = torch.empty(n_out, out.shape[1], dtype=torch.float32, device=device)
            features[indices] = out.float()
            labels[indices] = batch_labels
    if features is None:
        raise ValueError("No images to embed: the dataset (or subset) is empty.")
    if output_device is not None:
        features, labels = features.to(output_device), labels.to(output_device)
    return features, labels
