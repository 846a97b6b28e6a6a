"""How a run executes: cuDNN autotuning, deterministic algorithms, ``torch.compile``.

These are the ``train.*`` execution settings (:class:`~sslbench.benchmark.config.TrainConfig`):
they change speed and, at most, floating-point rounding, never the computation, so they stay out
of the config hash. :func:`execution_settings` applies the process-wide ones for the duration of
a run and restores what was there before; :func:`compile_modules` compiles a method's networks in
place (``nn.Module.compile``), so parameter names, ``state_dict`` keys and checkpoints are the
same as without it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from sslbench.benchmark.config import TrainConfig
from sslbench.benchmark.errors import ConfigError

#: cuBLAS needs a fixed workspace for deterministic matmuls (PyTorch's reproducibility notes).
CUBLAS_WORKSPACE = ":4096:8"


def switch(value: str, device: torch.device) -> bool:
    """An ``auto|on|off`` setting: ``auto`` means on for CUDA."""
    return value == "on" or (value == "auto" and device.type == "cuda")


def cudnn_benchmark(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether cuDNN autotunes its convolution algorithms (never in deterministic mode)."""
    if cfg.deterministic:
        return False
    return switch(cfg.cudnn_benchmark, device)


@contextlib.contextmanager
def execution_settings(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Applies ``cudnn_benchmark`` and ``deterministic`` for the block, then restores them.

    Deterministic mode turns on ``torch.use_deterministic_algorithms`` (an op without a
    deterministic implementation is then an error naming it, at the first step), sets
    ``CUBLAS_WORKSPACE_CONFIG`` when it is unset (it must be set before the process's first cuBLAS
    call: export it yourself when CUDA was used earlier in the same process) and turns cuDNN
    autotuning off.
    """
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    set_env = cfg.deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    try:
        if set_env:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = cudnn_benchmark(cfg, device)
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        if set_env:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def compile_modules(method: nn.Module, mode: str) -> list[str]:
    """Compiles, in place, each network (child module with parameters) of ``method``.

    ``nn.Module.compile`` keeps the module object and its parameter names, so the optimiser,
    EMA hooks, ``state_dict`` and checkpoints are those of the uncompiled run. The method's own
    step logic (losses, queues, EMA) stays eager. ``reduce-overhead`` replays the compiled graphs
    with CUDA graphs.

    Returns:
        The names of the compiled children.

    Raises:
        ConfigError: an unknown mode.
    """
    if mode == "off":
        return []
    if mode not in ("default", "reduce-overhead"):
        raise ConfigError(f"train.compile={mode!r} is not a torch.compile mode sslbench uses.",
                          "Use off, default or reduce-overhead.")
    names = []
    for name, child in method.named_children():
        if any(True for _ in child.parameters()):
            child.compile(mode=mode)
            names.append(name)
    return names
