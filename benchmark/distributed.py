"""Data-parallel training across processes (``torch.distributed``), one process per GPU.

A cell runs on several GPUs and nodes when it is started as several processes, with the same
command and config as on one GPU:

* by **torchrun**, e.g. ``torchrun --nproc-per-node 4 -m sslbench.benchmark.cli pretrain ...``
  (multi-node: add ``--nnodes``, ``--node-rank`` / ``--rdzv-endpoint``), which exports
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
* as **SLURM tasks started by submitit**, one task per GPU (``tasks_per_node`` = GPUs per node,
  ``nodes`` = N): when ``SLURM_JOB_ID`` is set and ``SLURM_NTASKS > 1``, submitit's
  ``TorchDistributedEnvironment`` derives the same variables from the SLURM environment.

Anything else is one process (``world_size == 1``) and nothing here communicates: every helper
is the identity (or a no-op) when no process group is initialised.

``data.batch_size`` is the global batch (see :func:`sslbench.benchmark.config.derive`): the
learning-rate scaling, the step counts and the config hash do not depend on the number of GPUs.

Collectives that sit inside a loss carry gradients (:func:`gather_with_grad`), and methods opt
in to them explicitly (STYLE.md: no hidden collectives).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sslbench.benchmark.errors import SSLBenchError

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a data-parallel job.

    Attributes:
        rank: global rank in [0, world_size).
        local_rank: rank on this node (selects the GPU).
        world_size: number of processes (GPUs) in the job.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, config.json and MLflow runs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def read_dist_env() -> DistEnv:
    """Reads the job layout from ``os.environ`` (torchrun's variables first, then SLURM tasks).

    For SLURM tasks started by submitit (``SUBMITIT_EXECUTOR=slurm``), submitit's
    ``TorchDistributedEnvironment`` exports ``MASTER_ADDR`` (the job's first node),
    ``MASTER_PORT`` (kept if set, else derived from the job id), ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` into ``os.environ`` for ``env://`` initialisation. ``CUDA_VISIBLE_DEVICES``
    is left alone (see :func:`rank_device`).

    Raises:
        SSLBenchError: the variables are malformed or inconsistent.
    """
    env = os.environ
    if all(k in env for k in _TORCHRUN_VARS):
        return _parse(env)
    tasks = _int(env, "SLURM_NTASKS", "1") if env.get("SLURM_JOB_ID") else 1
    if tasks > 1:
        if env.get("SUBMITIT_EXECUTOR") != "slurm":  # submitit's helper only runs in its own jobs
            raise SSLBenchError(
                f"This SLURM job has SLURM_NTASKS={tasks} tasks but was not started by submitit, "
                "and RANK/WORLD_SIZE are not set, so the process layout is unknown.",
                "Start one task per GPU through submitit (sslbench's SLURM launcher), or torchrun "
                "in one task per node; to run a single process here, set RANK=0 WORLD_SIZE=1.",
            )
        from submitit.helpers import TorchDistributedEnvironment

        # overwrite=True: export() refuses to run when e.g. MASTER_PORT is already set, although
        # it reads (keeps) that port itself.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return _parse(env)
    return DistEnv()


def _int(env: Mapping[str, str], key: str, default: str | None = None) -> int:
    raw = env.get(key, default)
    try:
        return int(raw if raw is not None else "missing")
    except ValueError:
        raise SSLBenchError(f"Environment variable {key}={raw!r} is not an integer.",
                            "Start the job with torchrun or as SLURM tasks, or unset it.") from None


def _parse(env: Mapping[str, str]) -> DistEnv:
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local_rank = _int(env, "LOCAL_RANK", str(rank))
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise SSLBenchError(f"Inconsistent process layout: RANK={rank}, WORLD_SIZE={world}, "
                            f"LOCAL_RANK={local_rank}.",
                            "RANK must be in [0, WORLD_SIZE) and LOCAL_RANK >= 0.")
    if world > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise SSLBenchError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set.",
                                "Start the job with torchrun (which sets them) or export them.")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world)


def rank_device(device: torch.device, env: DistEnv) -> torch.device:
    """The device this rank trains on: ``cuda:<local_rank>`` when several processes share CUDA
    (``cuda:0`` when each task sees only its own GPU, as with SLURM GPU binding); CPU unchanged.

    Raises:
        SSLBenchError: the node has fewer GPUs than ranks.
    """
    if device.type != "cuda" or not env.distributed:
        return device
    count = torch.cuda.device_count()
    index = 0 if count == 1 else env.local_rank
    if index >= count:
        raise SSLBenchError(f"Local rank {env.local_rank} has no GPU: this node shows {count}.",
                            "Start one process per GPU (torchrun --nproc-per-node, or SLURM "
                            "tasks_per_node equal to the GPUs per node).")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(env: DistEnv, device: torch.device) -> bool:
    """Joins the process group: NCCL for CUDA, gloo for CPU; nothing for one process.

    Returns:
        True when this call created the group (the caller then calls :func:`teardown`); False
        for one process or when a group already exists (its owner tears it down).

    Raises:
        SSLBenchError: an existing group has another size than ``env``.
    """
    if not env.distributed:
        return False
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size:
            raise SSLBenchError(f"A process group of size {dist.get_world_size()} already exists "
                                f"but the environment says WORLD_SIZE={env.world_size}.",
                                "Destroy the existing group first.")
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                            world_size=env.world_size)
    return True


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """Wraps ``module`` in ``DistributedDataParallel`` (gradients averaged over ranks).

    Buffers are synchronised once, at construction, and never in ``forward``: MoCo keeps its
    queue identical across ranks itself (broadcasting it every step would cost a 32 MB copy),
    and running BN statistics do not enter training (rank 0's are the ones saved).
    """
    from torch.nn.parallel import DistributedDataParallel

    # torch 2.15 renames broadcast_buffers (deprecated) to forward_sync_buffers.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync: dict[str, Any] = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
                               else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   **no_sync)


def teardown() -> None:
    """Leaves the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    """A process group with more than one member is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` from all ranks, in rank order, keeping the autograd graph.

    The backward pass sums every rank's gradient for rank r's slice and returns it to rank r
    (a reduce-scatter), so each rank's parameters receive the gradient of the *sum* of all
    ranks' losses through their own inputs; DDP's average then yields the gradient of the mean
    loss over ranks, i.e. of the single-process loss on the joint batch. The identity without a
    process group.

    Shape:
        x: (B, ...) with the same B on every rank; returns (world_size * B, ...).
    """
    if not is_initialized():
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch >= 2.9 flags it in favour of a private functional-collectives API; it remains
        # the public autograd-aware all_gather across torch versions (>= 2.2 supported).
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(x)
    return torch.cat(parts)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` from all ranks, in rank order, without gradient (e.g. MoCo's keys).

    Shape:
        x: (B, ...) with the same B on every rank; returns (world_size * B, ...).
    """
    if not is_initialized():
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


@torch.no_grad()
def reduce_over_ranks(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The elementwise ``op`` (``"sum"`` or ``"max"``) of ``x`` over ranks, without gradient (a
    copy; ``x`` itself without a process group)."""
    if op not in ("sum", "max"):
        raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
    if not is_initialized():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return out


@torch.no_grad()
def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (a copy; ``x`` itself without a process group)."""
    if not is_initialized():
        return x
    return reduce_over_ranks(x) / dist.get_world_size()  # gloo has no AVG


def barrier() -> None:
    """Waits for every rank (nothing without a process group)."""
    if is_initialized():
        dist.barrier()
