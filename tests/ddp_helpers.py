"""Runs functions in several CPU processes joined by gloo (as lightly's tests/ddp_helpers.py).

The workers live in this module (not in the test module) because ``spawn`` re-imports them by
module name in each child; ``tests/test_distributed.py`` puts this folder on ``sys.path``, which
``multiprocessing`` hands on to the children.

Each worker gets the torchrun variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and joins the group itself, exactly as under torchrun. Results
come back as files: ``torch.save`` per rank into a folder the test then reads.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from sslbench.methods import StepContext

WORLD_SIZE = 2
BATCH = 8  # the joint batch; each of the 2 ranks takes 4 images
IMAGE = 16


def free_port() -> int:
    """A TCP port that is free right now on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(fn: Callable[..., None], *args: Any, world_size: int = WORLD_SIZE) -> None:
    """Runs ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes; re-raises the
    first worker's exception."""
    port = free_port()
    mp.spawn(_entry, args=(fn, world_size, port, args), nprocs=world_size, join=True)


def _entry(rank: int, fn: Callable[..., None], world_size: int, port: int, args: tuple[Any, ...]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # 2 processes on a 2-core machine
    fn(rank, world_size, *args)


# ----------------------------------------------------------------------------------------------
# One training step of a method (the equivalence tests)

HEADS = {
    "simclr": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    "mocov2": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.queue_size=40"],
    "byol": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32"],
    "mocov1": ["method.proj_dim=16", "method.queue_size=40"],
    "mocov3": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32"],
    "simclrv2": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.memory_size=40"],
    "dino": ["method.hidden_dim=32", "method.bottleneck_dim=16", "method.out_dim=64"],
    "instdisc": ["method.embed_dim=16"],
    "invaspread": ["method.embed_dim=16"],
    "nnclr": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32",
              "method.support_set_size=40"],
    "swav": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.num_prototypes=10"],
    "simsiam": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=8"],
    "barlowtwins": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    "vicreg": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
}
CASES = {  # name -> (recipe, extra overrides)
    "simclr": ("simclr-quick", ["method.gather_distributed=true"]),
    "simclr-local-negatives": ("simclr-quick", ["method.gather_distributed=false"]),
    "mocov2": ("mocov2-quick", []),  # symmetric: both views' keys are enqueued
    "mocov2-asymmetric": ("mocov2-quick", ["method.symmetric=false"]),
    "byol": ("byol-quick", []),
    "mocov1": ("mocov1-quick", []),  # auto -> the cross-rank batch shuffle of the keys
    "mocov1-asymmetric": ("mocov1-quick", ["method.symmetric=false"]),
    "mocov1-split": ("mocov1-quick", ["method.shuffle_bn=split"]),
    "mocov3": ("mocov3-quick", ["method.gather_distributed=true"]),
    "mocov3-local": ("mocov3-quick", ["method.gather_distributed=false"]),
    "simclrv2": ("simclrv2-quick", ["method.gather_distributed=true"]),
    "simclrv2-alignuniform": ("simclrv2-quick", ["method.gather_distributed=true",
                                                 "method.loss=align_uniform"]),
    **{f"simclr-{v}": (f"simclr-{v}-quick", ["method.gather_distributed=true"])
       for v in ("nce", "dcl", "hcl", "flatnce", "alignuniform")},
    **{f"mocov2-{v}": ("mocov2-quick", [f"method.loss={v}", "method.gather_distributed=true"])
       for v in ("nce", "dcl", "hcl", "flatnce", "align_uniform")},
    "dino": ("dino-quick", []),  # the recipe all-reduces the centre (gather_distributed)
    "instdisc": ("instdisc-quick", []),  # full softmax over the bank
    "instdisc-nce": ("instdisc-quick", ["method.loss=nce", "method.num_negatives=16"]),
    "instdisc-sampled-softmax": ("instdisc-quick", ["method.loss=softmax", "method.num_negatives=16"]),
    "invaspread": ("invaspread-quick", ["method.gather_distributed=true"]),
    "invaspread-grad-candidates": ("invaspread-quick", ["method.gather_distributed=true",
                                                        "method.detach_candidates=false"]),
    "invaspread-local": ("invaspread-quick", ["method.gather_distributed=false"]),
    "nnclr": ("nnclr-quick", ["method.gather_distributed=true"]),
    "nnclr-asymmetric": ("nnclr-quick", ["method.gather_distributed=true", "method.symmetric=false"]),
    "nnclr-local": ("nnclr-quick", ["method.gather_distributed=false"]),
    "swav": ("swav-quick", ["method.gather_distributed=true"]),
    "swav-queue": ("swav-quick", ["method.gather_distributed=true", "method.queue_length=16",
                                  "method.epoch_queue_starts=0"]),
    "swav-local": ("swav-quick", ["method.gather_distributed=false"]),
    "simsiam": ("simsiam-quick", []),
    "barlowtwins": ("barlowtwins-quick", ["method.gather_distributed=true"]),
    "barlowtwins-local": ("barlowtwins-quick", ["method.gather_distributed=false"]),
    "vicreg": ("vicreg-quick", ["method.gather_distributed=true"]),
    "vicreg-local": ("vicreg-quick", ["method.gather_distributed=false"]),
}


def build_case(case: str) -> torch.nn.Module:
    """The method of ``case`` in float64, with every batch norm in eval mode.

    Batch norm is the one layer whose output depends on how the batch is split: SyncBatchNorm
    would make it split-invariant but does not run on CPU, so here BN normalises with its
    (initial) running statistics and only its affine parameters train. Everything else in the
    methods is per-sample or an explicit cross-rank gather.
    """
    from sslbench.benchmark.engine import build_method
    from sslbench.benchmark.recipes import resolve

    recipe, extra = CASES[case]
    method_name = recipe.split("-")[0]
    cfg = resolve(recipe, ["data.dataset=synthetic", "train.device=cpu", *HEADS[method_name], *extra])
    method = build_method(cfg, 1, IMAGE, num_samples=BATCH).double()
    method.train()
    for m in method.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return method


def joint_views() -> list[torch.Tensor]:
    """Two views of the joint batch (the same on every rank)."""
    g = torch.Generator().manual_seed(1234)
    return [torch.randn(BATCH, 1, IMAGE, IMAGE, generator=g, dtype=torch.float64) for _ in range(2)]


def train_step(method: torch.nn.Module, model: torch.nn.Module, views: list[torch.Tensor],
               mean_loss: Callable[[torch.Tensor], torch.Tensor], indices: torch.Tensor) -> dict[str, Any]:
    """forward -> backward -> ``before_optimizer_step`` -> SGD step -> ``on_step_end``, as the
    engine does; returns the loss, the gradients and the state after the step."""
    params = [p for g in method.param_groups() for p in g["params"]]
    opt = torch.optim.SGD(params, lr=0.5)
    ctx = StepContext(step=0, total_steps=10, steps_per_epoch=10, indices=indices)
    out = model(views, ctx)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    method.before_optimizer_step(ctx)
    opt.step()
    method.on_step_end(out, ctx)
    return {"loss": mean_loss(out.loss.detach()), "grads": grads, "trainable": trainable,
            "state": {k: v.clone() for k, v in method.state_dict().items()}}


def single_process_step(case: str) -> dict[str, Any]:
    """The reference: one process, the joint batch."""
    method = build_case(case)
    return train_step(method, method, joint_views(), lambda x: x, torch.arange(BATCH))


def ddp_step_worker(rank: int, world_size: int, cases: list[str], out_dir: str) -> None:
    """Each rank: its contiguous slice of the joint batch, DDP, one step per case."""
    from sslbench.benchmark.distributed import (
        init_distributed,
        mean_over_ranks,
        read_dist_env,
        teardown,
        wrap_ddp,
    )

    env = read_dist_env()
    assert (env.rank, env.world_size) == (rank, world_size)
    assert init_distributed(env, torch.device("cpu"))
    try:
        n = BATCH // world_size
        results = {}
        for case in cases:
            method = build_case(case)
            views = [v[rank * n:(rank + 1) * n] for v in joint_views()]
            model = wrap_ddp(method, torch.device("cpu"))  # exactly as the engine wraps it
            results[case] = train_step(method, model, views, mean_over_ranks,
                                       torch.arange(rank * n, (rank + 1) * n))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        teardown()


# ----------------------------------------------------------------------------------------------
# The engine


def pretrain_worker(rank: int, world_size: int, overrides: list[str], out_dir: str,
                    tracking_uri: str | None) -> None:
    """Each rank runs ``pretrain`` as under torchrun (the engine joins and leaves the group);
    ``tracking_uri=None``: no MLflow."""
    import torch.distributed as dist

    from sslbench.benchmark.engine import Tracking, pretrain
    from sslbench.benchmark.recipes import resolve

    cfg = resolve("simclr-quick", overrides)
    tracking = Tracking(uri=tracking_uri) if tracking_uri else None
    result = pretrain(cfg, Path(out_dir) / "run", tracking=tracking, progress=False)
    assert not dist.is_initialized(), "the engine leaves the process group it joined"
    torch.save({"derived": result.derived.to_dict(), "is_main": result.is_main,
                "run_id": result.run_id, "metrics": result.metrics,
                "checkpoint_existed": result.checkpoint.exists()},
               Path(out_dir) / f"rank{rank}.pt")
