"""Shared pieces for momentum (EMA) targets and feature queues."""

from __future__ import annotations

import copy

import torch
from torch import nn

from sslbench.benchmark.distributed import gather_no_grad


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to serve as an EMA target / key encoder."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- m * target + (1 - m) * online``, for parameters only.

    Buffers (BN running statistics) are left alone, as in MoCo's ``_momentum_update_key_encoder``
    and lightly's ``update_momentum``: the target keeps statistics of its own forward passes.

    Two multi-tensor kernels (``_foreach_mul_``, then ``_foreach_add_`` with ``alpha = 1 - m``)
    instead of two launches per parameter; the same operations as
    ``t.mul_(m).add_(o, alpha=1 - m)`` parameter by parameter (``lerp_`` would round differently).

    Raises:
        ValueError: the two modules' parameters differ in number or shape (pairing them would
            silently drop or misalign some).
    """
    targets: list[torch.Tensor] = list(target.parameters())
    onlines: list[torch.Tensor] = list(online.parameters())
    if len(targets) != len(onlines):
        raise ValueError(f"EMA target has {len(targets)} parameters, the online network {len(onlines)}")
    for i, (t, o) in enumerate(zip(targets, onlines)):
        if t.shape != o.shape:
            raise ValueError(f"EMA parameter {i}: target shape {tuple(t.shape)}, online {tuple(o.shape)}")
    if not targets:
        return
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, onlines, alpha=1.0 - momentum)


class FeatureQueue(nn.Module):
    """A FIFO queue of L2-normalised features (MoCo's dictionary, NNCLR's support set).

    The queue is a buffer, so it is saved with the method's ``state_dict`` and resume is exact.
    Initialised with random unit vectors, as MoCo does.

    Args:
        size: number of entries K.
        dim: feature dimension D.
    """

    features: torch.Tensor  # (K, D) buffer
    ptr: torch.Tensor  # () long buffer: the next slot to overwrite

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("features", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replaces the oldest entries with ``keys`` (wrapping around the end).

        Shape:
            keys: (B, D) with B <= K.
        """
        size = self.features.shape[0]
        n = keys.shape[0]
        if n > size:
            keys, n = keys[-size:], size
        idx = (self.ptr + torch.arange(n, device=keys.device)) % size
        self.features[idx] = keys.detach().to(self.features.dtype)
        self.ptr.copy_((self.ptr + n) % size)

    @torch.no_grad()
    def enqueue_from_all_ranks(self, keys: torch.Tensor, num_views: int = 1) -> None:
        """Enqueues the keys of every data-parallel rank (MoCo's ``concat_all_gather``), view by
        view in rank order, so every replica keeps the queue one process keeps on the joint batch
        (and rank 0's checkpoint is every rank's). In one process: :meth:`enqueue`.

        Always on under data parallelism, not an opt-in: it carries no gradient, and per-rank
        queues would make the replicas diverge.

        Shape:
            keys: (num_views * B, D), the views' keys concatenated view after view.
        """
        self.enqueue(torch.cat([gather_no_grad(k) for k in keys.chunk(num_views)]))
