"""Barlow Twins (Zbontar et al., ICML 2021): make the cross-correlation matrix of the two views'
batch-standardised embeddings close to the identity (invariance + redundancy reduction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sslbench.benchmark.distributed import gather_with_grad, is_initialized
from sslbench.methods.base import LogValue, Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.registry import register_method


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The empirical cross-correlation matrix of Barlow Twins (Zbontar et al. 2021, Eq. 2).

    Each embedding dimension is standardised over the batch, ``z^ = (z - mean_b z) /
    sqrt(var_b z + eps)`` (biased variance: a non-affine ``BatchNorm1d`` in training mode, as
    the official code), then

        C_ij = sum_b z^1_bi z^2_bj / N.

    Args:
        z1: embeddings of the first views.
        z2: embeddings of the second views (row b is the same image as row b of ``z1``).
        eps: added to the variance (BN's default).

    Shape:
        z1, z2: (N, D) with N >= 2. Returns (D, D).
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(f"need two (N >= 2, D) embeddings of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")

    def standardize(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)

    return standardize(z1).T @ standardize(z2) / z1.shape[0]


def barlow_twins_loss(c: torch.Tensor, lambd: float) -> torch.Tensor:
    """Barlow Twins' objective (Zbontar et al. 2021, Eq. 1) on a cross-correlation matrix:

        L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2.

    The first term (invariance) makes each dimension agree across the views, the second
    (redundancy reduction) decorrelates the dimensions.

    Args:
        c: the cross-correlation matrix (:func:`cross_correlation`).
        lambd: lambda >= 0, the weight of the off-diagonal terms.

    Shape:
        c: (D, D). Returns a scalar >= 0.
    """
    on_diag = (c.diagonal() - 1).pow(2).sum()
    diagonal = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
    off_diag = c.masked_fill(diagonal, 0).pow(2).sum()
    return on_diag + lambd * off_diag


@dataclass(frozen=True)
class BarlowTwinsConfig:
    """Barlow Twins hyperparameters (defaults: paper §2-§3 / facebookresearch/barlowtwins ``main.py``).

    Attributes:
        proj_hidden_dim: projector hidden width (8192).
        proj_dim: projector output D (8192; ``--projector 8192-8192-8192``).
        proj_layers: linear layers (3; BN + ReLU after all but the last).
        lambd: lambda, the off-diagonal weight (paper: 5e-3; repo default 0.0051).
        scale_loss: constant factor on the loss. 1 is the paper's loss; the README's command for
            the released model used ``--scale-loss 0.024`` (an early repo version: 1/32 with
            lambda 3.9e-3), which the current repo replaces by the biases' own learning rate
            (``bias_lr_scale``); solo-learn keeps it (0.024 by default, 0.1 on CIFAR).
        bias_lr_scale: learning-rate factor of biases and BN parameters relative to the weights
            (paper / repo: 0.0048 / 0.2 = 0.024, under LARS).
        gather_distributed: under data parallelism, compute C over the whole global batch (each
            rank's embeddings gathered with gradients), as the repo does with SyncBN and a sum
            of C over GPUs; off: each rank standardises and correlates its own slice. No effect
            in one process.
    """

    proj_hidden_dim: int = 8192
    proj_dim: int = 8192
    proj_layers: int = 3
    lambd: float = 0.0051
    scale_loss: float = 1.0
    bias_lr_scale: float = 0.0048 / 0.2
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        if min(self.proj_hidden_dim, self.proj_dim, self.proj_layers) < 1:
            raise ValueError("projector sizes must be >= 1")
        if self.lambd < 0:
            raise ValueError(f"lambd must be >= 0, got {self.lambd}")
        if self.scale_loss <= 0 or self.bias_lr_scale <= 0:
            raise ValueError(f"scale_loss and bias_lr_scale must be > 0, got {self.scale_loss} "
                             f"and {self.bias_lr_scale}")


@register_method(
    "barlowtwins", config=BarlowTwinsConfig, family="redundancy reduction, cross-correlation",
    paper="Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, "
          "ICML 2021, https://arxiv.org/abs/2103.03230",
    default_recipe="barlowtwins-quick",
)
class BarlowTwins(Method):
    """Encoder -> projector; the loss pushes the views' cross-correlation matrix to the identity.

    Under data parallelism with ``gather_distributed``, every rank gathers all ranks'
    embeddings with :func:`gather_with_grad` and computes the loss of the joint batch; the
    gather's backward sums the ranks' identical gradients and DDP averages them, so the
    gradients are the joint batch's. (The official code sums C with a non-differentiable
    ``all_reduce``, which leaves its gradients 1/world_size too small: lightly issue #1977.)
    """

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: BarlowTwinsConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        # The repo's last linear layer has no bias; mlp's has one, which the batch
        # standardisation cancels (it receives zero gradient).
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        z1, z2 = forward_views(lambda x: self.projector(self.encoder(x)), views[:2])
        if self.cfg.gather_distributed and is_initialized():
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        c = cross_correlation(z1, z2)
        loss = self.cfg.scale_loss * barlow_twins_loss(c, self.cfg.lambd)
        on_diag = (c.detach().diagonal() - 1).pow(2).sum()
        return StepOutput(loss=loss, logs={"on_diag": on_diag})

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, LogValue]:
        return dict(out.logs)  # this step's values again, as 0-d tensors (no sync)

    def param_groups(self) -> list[dict[str, Any]]:
        """Weights (LARS, weight decay), and biases + BN parameters at ``bias_lr_scale`` times
        the learning rate, without weight decay or LARS adaptation (repo ``main.py``)."""
        groups = super().param_groups()
        for g in groups:
            if g.get("lars_exclude"):
                g["lr_scale"] = self.cfg.bias_lr_scale
        return groups
