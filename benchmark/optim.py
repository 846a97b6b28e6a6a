"""Optimisers: SGD, LARS and AdamW over a method's parameter groups.

Parameter groups come from ``Method.param_groups()``: each is a dict with ``params`` and, for
biases and normalisation weights, ``weight_decay=0`` and ``lars_exclude=True`` (BYOL/SimCLR
exclude them from both weight decay and LARS adaptation). The engine sets every group's ``lr``
each step from the schedule, multiplied by the group's optional ``lr_scale``; a group with
``fixed_lr=True`` keeps the peak learning rate (x ``lr_scale``) throughout (SimSiam's predictor,
``fix_pred_lr`` in the official code).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sslbench.benchmark.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and the layer-wise trust ratio of You et al. (2017).

    For each parameter ``w`` with gradient ``g`` (weight decay folded in, ``g <- g + wd * w``),
    the update is scaled by ``eta * ||w|| / ||g||`` when both norms are positive; groups with
    ``lars_exclude=True`` (biases, norms) get plain SGD. This follows the BYOL / SimCLR / MoCo v3
    implementations (trust ratio computed after weight decay, no clipping).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (the engine overwrites it every step).
        momentum: heavy-ball momentum.
        weight_decay: L2 weight decay.
        eta: trust coefficient.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.001, foreach: bool | None = None) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        lars_exclude=False)
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102 - torch.optim API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            foreach = self.foreach if self.foreach is not None else params[0].is_cuda
            (self._group_foreach if foreach else self._group_loop)(group, params)
        return loss

    def _group_loop(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """One parameter at a time (a handful of kernels each: ~440 launches for a ResNet-18)."""
        for p in params:
            g = p.grad
            assert g is not None
            if group["weight_decay"] != 0:
                g = g.add(p, alpha=group["weight_decay"])
            if not group["lars_exclude"]:
                w_norm = torch.linalg.vector_norm(p)
                g_norm = torch.linalg.vector_norm(g)
                trust = torch.where((w_norm > 0) & (g_norm > 0),
                                    group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                g = g.mul(trust)
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.clone(g).detach()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(g)
            p.add_(state["momentum_buffer"], alpha=-group["lr"])

    def _group_foreach(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """The same update with multi-tensor kernels: a few launches for the whole group."""
        grads = [p.grad for p in params if p.grad is not None]
        if group["weight_decay"] != 0:
            grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
        if not group["lars_exclude"]:
            w_norm = torch.stack(list(torch._foreach_norm(params)))
            g_norm = torch.stack(list(torch._foreach_norm(grads)))
            trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                torch.ones_like(w_norm))
            grads = list(torch._foreach_mul(grads, list(trust.unbind())))
        states = [self.state[p] for p in params]
        if all("momentum_buffer" in s for s in states):
            bufs = [s["momentum_buffer"] for s in states]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
        else:  # the first step: the buffers start as the (scaled) gradients
            for s, g in zip(states, grads, strict=True):
                s["momentum_buffer"] = torch.clone(g).detach()
            bufs = [s["momentum_buffer"] for s in states]
        torch._foreach_add_(params, bufs, alpha=-group["lr"])


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig, lr: float, *,
                    foreach: bool | None = None) -> torch.optim.Optimizer:
    """Builds the configured optimiser.

    Groups without an explicit ``weight_decay`` get ``cfg.weight_decay``; the ``lr_scale``,
    ``fixed_lr`` and ``lars_exclude`` keys are kept in the group for the engine and LARS.

    Args:
        groups: the method's parameter groups.
        cfg: the optimiser config.
        lr: the peak (scaled) learning rate.
        foreach: multi-tensor LARS updates (None: on CUDA parameters; ``train.foreach``).
    """
    groups = [dict(g) for g in groups]
    for g in groups:
        g.setdefault("weight_decay", cfg.weight_decay)
        g.setdefault("lr_scale", 1.0)
        g.setdefault("lars_exclude", False)
        g.setdefault("fixed_lr", False)
        g["lr"] = lr * g["lr_scale"]
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta, foreach=foreach)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every group's learning rate to ``lr x lr_scale`` (groups with ``fixed_lr`` keep theirs)."""
    for g in optimizer.param_groups:
        if not g.get("fixed_lr", False):
            g["lr"] = lr * g.get("lr_scale", 1.0)
