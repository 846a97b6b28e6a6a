"""VICReg (Bardes, Ponce, LeCun, ICLR 2022): Variance-Invariance-Covariance Regularisation of the
two views' embeddings; no negatives, no predictor, no stop-gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import gather_with_grad, is_initialized
from sslbench.methods.base import LogValue, Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.registry import register_method


def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """VICReg's invariance term s(Z, Z') (Bardes et al. 2022, Eq. 5), the mean squared error
    ``s = (1 / (N D)) sum_b sum_j (z_bj - z'_bj)^2`` (the repo's ``F.mse_loss``; the paper's
    ``1/N sum_b ||z_b - z'_b||^2`` divided by D).

    Shape:
        z1, z2: (N, D). Returns a scalar >= 0.
    """
    return F.mse_loss(z1, z2)


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term v(Z) (Eq. 1-2), a hinge on each dimension's standard deviation:

        v(Z) = (1 / D) sum_j max(0, gamma - sqrt(Var(z_j) + eps)),

    with the unbiased variance over the batch.

    Args:
        z: embeddings.
        gamma: target standard deviation (1).
        eps: numerical stabiliser inside the square root (1e-4).

    Shape:
        z: (N, D) with N >= 2. Returns a scalar in [0, gamma].
    """
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term c(Z) (Eq. 3-4): the sum of the squared off-diagonal entries of
    the covariance matrix, divided by D,

        C(Z) = (1 / (N - 1)) sum_b (z_b - zbar)(z_b - zbar)^T,   c(Z) = (1 / D) sum_{i != j} C_ij^2.

    Shape:
        z: (N, D) with N >= 2. Returns a scalar >= 0.
    """
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    diagonal = torch.eye(d, dtype=torch.bool, device=z.device)
    return cov.masked_fill(diagonal, 0).pow(2).sum() / d


@dataclass(frozen=True)
class VICRegConfig:
    """VICReg hyperparameters (defaults: paper §4.1 / facebookresearch/vicreg ``main_vicreg.py``).

    The loss is the repo's: ``lambda s(Z, Z') + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')]``; the
    paper's Eq. 6 sums the two variance terms without the 1/2 (solo-learn follows the paper: its
    ``var_loss_weight`` is ``2 mu`` here).

    Attributes:
        proj_hidden_dim: expander hidden width (8192).
        proj_dim: expander output D (8192; ``--mlp 8192-8192-8192``).
        proj_layers: linear layers (3; BN + ReLU after all but the last).
        sim_weight: lambda, invariance weight (``--sim-coeff 25``).
        var_weight: mu, variance weight (``--std-coeff 25``).
        cov_weight: nu, covariance weight (``--cov-coeff 1``).
        gamma: target standard deviation of the variance hinge (1).
        eps: stabiliser of the standard deviation (1e-4).
        gather_distributed: under data parallelism, compute the variance and covariance terms
            over the whole global batch (embeddings gathered with gradients), as the repo's
            ``FullGatherLayer``; the invariance term stays per rank (its mean over ranks is the
            joint batch's). Off: every term on the rank's own slice. No effect in one process.
    """

    proj_hidden_dim: int = 8192
    proj_dim: int = 8192
    proj_layers: int = 3
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    gamma: float = 1.0
    eps: float = 1e-4
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        if min(self.proj_hidden_dim, self.proj_dim, self.proj_layers) < 1:
            raise ValueError("expander sizes must be >= 1")
        if min(self.sim_weight, self.var_weight, self.cov_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.gamma <= 0 or self.eps <= 0:
            raise ValueError(f"gamma and eps must be > 0, got {self.gamma} and {self.eps}")


@register_method(
    "vicreg", config=VICRegConfig, family="redundancy reduction, variance-covariance",
    paper="Bardes, Ponce & LeCun, VICReg: Variance-Invariance-Covariance Regularization for "
          "Self-Supervised Learning, ICLR 2022, https://arxiv.org/abs/2105.04906",
    default_recipe="vicreg-quick",
)
class VICReg(Method):
    """Encoder -> expander; invariance between the views, variance and covariance per view.

    With ``gather_distributed`` under data parallelism, the variance and covariance terms are
    computed on all ranks' embeddings (gathered with gradients: the gather's backward sums the
    ranks' identical gradients, DDP averages them), so loss and gradients equal the joint
    batch's.
    """

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: VICRegConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        # The repo's last linear layer has no bias; mlp's has one, which cancels in all three
        # terms (differences and centred statistics): it receives zero gradient.
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        cfg = self.cfg
        z1, z2 = forward_views(lambda x: self.projector(self.encoder(x)), views[:2])
        inv = invariance_loss(z1, z2)
        if cfg.gather_distributed and is_initialized():
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        var = 0.5 * (variance_loss(z1, cfg.gamma, cfg.eps) + variance_loss(z2, cfg.gamma, cfg.eps))
        cov = covariance_loss(z1) + covariance_loss(z2)
        loss = cfg.sim_weight * inv + cfg.var_weight * var + cfg.cov_weight * cov
        return StepOutput(loss=loss, logs={"invariance": inv.detach(), "variance": var.detach(),
                                           "covariance": cov.detach()})

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, LogValue]:
        return dict(out.logs)  # this step's values again, as 0-d tensors (no sync)
