"""SimCLR (Chen et al., ICML 2020): two views, an MLP projector, NT-Xent with in-batch negatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslbench.benchmark.distributed import gather_with_grad, is_initialized, rank
from sslbench.methods.base import Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.losses import nt_xent
from sslbench.methods.registry import register_method


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR hyperparameters (defaults: paper §2.3 / App. B.9).

    Attributes:
        temperature: NT-Xent tau (0.1 at batch 4096 on ImageNet, Table 5; 0.5 on CIFAR, B.9).
        proj_hidden_dim: projector hidden width (2048 for ResNet-50).
        proj_dim: projector output (128).
        proj_layers: linear layers in the projector (2 in v1, 3 in v2).
        gather_distributed: under data parallelism, contrast each rank's anchors against the
            projections of the whole global batch (gathered with gradients), as the paper does
            with its 4096-image batch over TPU cores; off: negatives from the rank's own slice
            only (2B/W - 2 of them). No effect in one process.
    """

    temperature: float = 0.5
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if min(self.proj_hidden_dim, self.proj_dim, self.proj_layers) < 1:
            raise ValueError("projector sizes must be >= 1")


@register_method(
    "simclr", config=SimCLRConfig, family="contrastive, in-batch negatives",
    paper="Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, "
          "ICML 2020, https://arxiv.org/abs/2002.05709",
    default_recipe="simclr-quick",
)
class SimCLR(Method):
    """Encoder -> projector -> NT-Xent between the two views of each image."""

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: SimCLRConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        z1, z2 = forward_views(lambda x: self.projector(self.encoder(x)), views[:2])
        if self.cfg.gather_distributed and is_initialized():
            all_z1, all_z2 = gather_with_grad(z1), gather_with_grad(z2)
            loss = nt_xent(z1, z2, self.cfg.temperature, all_z1=all_z1, all_z2=all_z2,
                           offset=rank() * z1.shape[0])
        else:
            loss = nt_xent(z1, z2, self.cfg.temperature)
        return StepOutput(loss=loss)
