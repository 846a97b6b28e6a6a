"""BYOL (Grill et al., NeurIPS 2020): an online network with a predictor regresses an EMA
target's projection of the other view; no negatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslbench.benchmark.schedules import cosine_momentum
from sslbench.methods.base import Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.losses import byol_loss
from sslbench.methods.momentum import ema_update, momentum_copy
from sslbench.methods.multicrop import count_global, crop_pairs
from sslbench.methods.registry import register_method


@dataclass(frozen=True)
class BYOLConfig:
    """BYOL hyperparameters (defaults: paper §3.3 and §3.2).

    Attributes:
        proj_hidden_dim: projector hidden width (4096).
        proj_dim: projector output (256).
        pred_hidden_dim: predictor hidden width (4096).
        base_momentum: tau_base of the target EMA, raised to 1 on a cosine (0.996; 0.99 in the
            300-epoch ablations).
    """

    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    base_momentum: float = 0.996

    def __post_init__(self) -> None:
        if not 0 <= self.base_momentum <= 1:
            raise ValueError(f"base_momentum must be in [0, 1], got {self.base_momentum}")


@register_method(
    "byol", config=BYOLConfig, family="self-distillation, EMA target + predictor",
    paper="Grill et al., Bootstrap Your Own Latent, NeurIPS 2020, https://arxiv.org/abs/2006.07733",
    default_recipe="byol-quick",
)
class BYOL(Method):
    """Online: encoder -> projector -> predictor. Target: EMA of encoder and projector."""

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: BYOLConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.target_encoder = momentum_copy(encoder)
        self.target_projector = momentum_copy(self.projector)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        # Multi-crop (2 global + N local views): targets from the global views only, every view
        # predicts the targets of the other global views (solo-learn's multi-crop BYOL), scaled
        # so that two views give the paper's symmetrised L + L~ exactly.
        num_global = count_global(views)
        p = forward_views(lambda x: self.predictor(self.projector(self.encoder(x))), views)
        with torch.no_grad():
            z = forward_views(lambda x: self.target_projector(self.target_encoder(x)), views[:num_global])
        pairs = crop_pairs(num_global, len(views))
        loss = sum((byol_loss(p[j], z[i]) for i, j in pairs), torch.zeros((), device=p[0].device))
        return StepOutput(loss=loss * (2 / len(pairs)))

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        m = cosine_momentum(ctx.step, ctx.total_steps, self.cfg.base_momentum)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)
        return {"ema_momentum": m}
