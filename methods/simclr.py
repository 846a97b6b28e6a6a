"""SimCLR (Chen et al., ICML 2020): two views, an MLP projector, NT-Xent with in-batch negatives
(or another loss of the InfoNCE family, ``loss``: see :mod:`sslbench.methods.losses`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sslbench.benchmark.distributed import gather_with_grad, is_initialized, rank
from sslbench.methods.base import Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.losses import (
    WHOLE_BATCH_LOSSES,
    LossVariantConfig,
    contrastive_loss,
    info_nce_from_similarities,
    nt_xent,
    simclr_similarities,
)
from sslbench.methods.registry import register_method


@dataclass(frozen=True)
class SimCLRConfig(LossVariantConfig):
    """SimCLR hyperparameters (defaults: paper §2.3 / App. B.9), plus the loss-variant keys of
    :class:`~sslbench.methods.losses.LossVariantConfig` (``loss="infonce"``: NT-Xent).

    Attributes:
        temperature: NT-Xent tau (0.1 at batch 4096 on ImageNet, Table 5; 0.5 on CIFAR, B.9).
        proj_hidden_dim: projector hidden width (2048 for ResNet-50); 0 means the backbone's
            feature dimension (SimCLR v2's choice).
        proj_dim: projector output (128).
        proj_layers: linear layers in the projector (2 in v1, 3 in v2).
        gather_distributed: under data parallelism, contrast each rank's anchors against the
            projections of the whole global batch (gathered with gradients), as the paper does
            with its 4096-image batch over TPU cores; off: negatives from the rank's own slice
            only (2B/W - 2 of them). No effect in one process. Losses that are not a mean over
            anchors (``align_uniform``) are then evaluated on the whole global batch on every rank.
    """

    temperature: float = 0.5
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if min(self.proj_dim, self.proj_layers) < 1 or self.proj_hidden_dim < 0:
            raise ValueError("projector sizes must be >= 1 (proj_hidden_dim >= 0)")


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, cfg: SimCLRConfig,
                memory: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """SimCLR's loss on the projections of the two views, with ``cfg``'s variant and gathering.

    ``infonce`` without a memory is :func:`nt_xent` itself; the other variants go through
    :func:`simclr_similarities` (and log InfoNCE's value beside theirs). ``memory`` holds extra
    negatives for every anchor (SimCLR v2's momentum-encoder keys), without gradient.

    Shape:
        z1, z2: (N, D); memory: (K, D). Returns a scalar and the logs.
    """
    tau = cfg.temperature
    gather = cfg.gather_distributed and is_initialized()
    all_z1 = all_z2 = None
    offset = 0
    if gather:
        all_z1, all_z2 = gather_with_grad(z1), gather_with_grad(z2)
        if cfg.loss in WHOLE_BATCH_LOSSES:  # every rank evaluates the joint-batch loss
            z1, z2 = all_z1, all_z2
        else:
            offset = rank() * z1.shape[0]
    if cfg.loss == "infonce" and memory is None:
        return nt_xent(z1, z2, tau, all_z1=all_z1, all_z2=all_z2, offset=offset), {}
    pos, neg = simclr_similarities(z1, z2, all_z1=all_z1, all_z2=all_z2, offset=offset,
                                   extra_negatives=memory)
    loss = contrastive_loss(pos, neg, tau, cfg)
    logs = {} if cfg.loss == "infonce" else {
        "infonce": info_nce_from_similarities(pos.detach(), neg.detach(), tau)}
    return loss, logs


@register_method(
    "simclr", config=SimCLRConfig, family="contrastive, in-batch negatives",
    paper="Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, "
          "ICML 2020, https://arxiv.org/abs/2002.05709",
    default_recipe="simclr-quick",
)
class SimCLR(Method):
    """Encoder -> projector -> NT-Xent between the two views of each image."""

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: SimCLRConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.projector = self.build_projector(feature_dim, cfg)

    def build_projector(self, feature_dim: int, cfg: SimCLRConfig) -> nn.Sequential:
        """SimCLR's projector: ``proj_layers - 1`` blocks of Linear -> BN -> ReLU, then Linear."""
        return mlp(feature_dim, cfg.proj_hidden_dim or feature_dim, cfg.proj_dim,
                   num_layers=cfg.proj_layers)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        z1, z2 = forward_views(lambda x: self.projector(self.encoder(x)), views[:2])
        loss, logs = simclr_loss(z1, z2, self.cfg)
        return StepOutput(loss=loss, logs=logs)
