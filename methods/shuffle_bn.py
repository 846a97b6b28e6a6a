"""Shuffling BN (He et al., MoCo, CVPR 2020 §3.3, https://arxiv.org/abs/1911.05722).

A query and its positive key encoded in the same batch-norm (sub-)batch share its statistics:
"the intra-batch communication among samples (caused by BN) leaks information", and the model
learns to spot the positive by that signature instead of by content. MoCo encodes the keys of a
shuffled batch so that a query and its key are normalised over different sets of images:

* ``"ddp"``, data parallelism (facebookresearch/moco ``moco/builder.py``, ``_batch_shuffle_ddp``
  / ``_batch_unshuffle_ddp``): the key images of all ranks are gathered, one permutation is drawn
  and broadcast from rank 0, every rank encodes its slice of the permuted batch with its own
  (per-rank) BN, and the keys are gathered back and un-permuted. Needs per-rank BN statistics,
  not SyncBatchNorm (which would normalise every key with the same global statistics).
* ``"split"``, one process (the official CIFAR-10 demo, ``colab/moco_cifar10_demo.ipynb``):
  :class:`SplitBatchNorm` normalises ``num_splits`` sub-batches separately, simulating that many
  GPUs; the keys are encoded from a batch shuffled within the process.

:func:`resolve_shuffle_bn` maps ``"auto"`` to ``"ddp"`` under data parallelism, else ``"split"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import gather_no_grad, is_initialized, rank, world_size

SHUFFLE_BN_MODES = ("auto", "ddp", "split", "off")


def resolve_shuffle_bn(mode: str) -> str:
    """``"auto"`` -> ``"ddp"`` when a process group with several ranks is running, else
    ``"split"``; other modes unchanged.

    Raises:
        ValueError: not one of :data:`SHUFFLE_BN_MODES`.
    """
    if mode not in SHUFFLE_BN_MODES:
        raise ValueError(f"shuffle_bn must be one of {', '.join(SHUFFLE_BN_MODES)}, got {mode!r}")
    if mode == "auto":
        return "ddp" if is_initialized() else "split"
    return mode


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are computed over ``num_splits`` sub-batches,
    as on ``num_splits`` GPUs (the MoCo CIFAR-10 demo's layer). In eval mode: plain BN.

    Viewing the (N, C, H, W) input as (N / S, S * C, H, W) puts row ``n`` in sub-batch
    ``n mod S``; each sub-batch is normalised with its own mean and (biased) variance, and the
    running statistics become the mean over sub-batches of their updates.

    Args:
        num_features: channels C.
        num_splits: sub-batches S (>= 1; the batch must be divisible by it in training).
        eps, momentum, affine, track_running_stats: as :class:`torch.nn.BatchNorm2d`.

    Shape:
        input, output: (N, C, H, W) with N divisible by S.
    """

    def __init__(self, num_features: int, num_splits: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        n, c, s = x.shape[0], x.shape[1], self.num_splits
        if n % s:
            raise ValueError(f"SplitBatchNorm: batch {n} is not divisible by num_splits={s}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        stats = (self.running_mean, self.running_var)
        mean, var = (t.repeat(s) if t is not None else None for t in stats)
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        out = F.batch_norm(x.reshape(n // s, s * c, *x.shape[2:]), mean, var, weight, bias, True,
                           factor, self.eps)
        for running, split in zip(stats, (mean, var)):  # F.batch_norm updated the split copies
            if running is not None and split is not None:
                running.copy_(split.view(s, c).mean(dim=0))
        return out.reshape(x.shape)


def convert_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replaces every ``nn.BatchNorm2d`` in ``module`` (in place) by a :class:`SplitBatchNorm`
    with the same parameters and statistics; returns ``module``. The state-dict keys do not
    change, so checkpoints load into a plain backbone.

    Raises:
        ValueError: another kind of batch norm (e.g. BatchNorm1d, SyncBatchNorm, a norm fused
            with an activation), which cannot be split safely.
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            ref = child.weight if child.weight is not None else child.running_mean
            new = SplitBatchNorm(child.num_features, num_splits, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SplitBatchNorm):
            raise ValueError(f"cannot split the statistics of {type(child).__name__} at '{name}'; "
                             "use shuffle_bn='off' or 'ddp' with this backbone")
        else:
            convert_split_batchnorm(child, num_splits)
    return module


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, generator: torch.Generator, *,
                  across_ranks: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutes the batch (the global batch with ``across_ranks`` under data parallelism).

    Under data parallelism with ``across_ranks``, ``x`` is gathered from every rank, rank 0's
    permutation is broadcast, and this rank receives its slice of the permuted global batch.
    Without a process group (or ``across_ranks=False``) it permutes ``x`` in place of a gather.

    Args:
        x: this rank's batch.
        generator: draws the permutation (on ``x``'s device; e.g. ``ctx.generator(device)``).
        across_ranks: shuffle the global batch across ranks (the official DDP shuffle).

    Returns:
        This rank's slice of the permuted batch, and the index that undoes the permutation
        (pass it to :func:`batch_unshuffle`).

    Shape:
        x: (N, ...), N equal on every rank; returns (N, ...) and (W * N,) int64.
    """
    x_all = gather_no_grad(x) if across_ranks else x
    perm = torch.randperm(x_all.shape[0], generator=generator, device=x.device)
    if across_ranks and is_initialized():
        dist.broadcast(perm, src=0)
    ranks, me = (world_size(), rank()) if across_ranks else (1, 0)
    return x_all[perm.view(ranks, -1)[me]], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor, *, across_ranks: bool = True) -> torch.Tensor:
    """Undoes :func:`batch_shuffle`: this rank's rows of the outputs, back in its original order.

    Shape:
        x: (N, ...) outputs of the shuffled slice; idx_unshuffle: (W * N,); returns (N, ...).
    """
    x_all = gather_no_grad(x) if across_ranks else x
    ranks, me = (world_size(), rank()) if across_ranks else (1, 0)
    return x_all[idx_unshuffle.view(ranks, -1)[me]]


@torch.no_grad()
def shuffled_forward(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     generator: torch.Generator, *, across_ranks: bool) -> torch.Tensor:
    """``module`` applied to a shuffled batch, its outputs returned in ``x``'s order (no grad).

    Shape:
        x: (N, ...); returns (N, D), row i computed from ``x[i]``.
    """
    shuffled, idx_unshuffle = batch_shuffle(x, generator, across_ranks=across_ranks)
    return batch_unshuffle(module(shuffled), idx_unshuffle, across_ranks=across_ranks)
