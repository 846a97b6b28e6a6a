"""SimCLR v2 (Chen et al., NeurIPS 2020): SimCLR with a deeper projector (3 layers, batch norm on
every layer), an optional MoCo-style memory of momentum-encoder keys as extra negatives, and
fine-tuning from a middle layer of the projector (the semi-supervised protocol's starting point)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.methods.base import StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.momentum import FeatureQueue, ema_update, momentum_copy
from sslbench.methods.registry import register_method
from sslbench.methods.simclr import SimCLR, SimCLRConfig, simclr_loss


@dataclass(frozen=True)
class SimCLRV2Config(SimCLRConfig):
    """SimCLR v2 hyperparameters: SimCLR's keys (loss variants included) with v2's defaults.

    Attributes:
        temperature: tau (0.1; google-research/simclr tf2 ``--temperature`` default).
        proj_hidden_dim: hidden width; 0 = the backbone's feature dimension, as the tf2 code's
            ``ProjectionHead`` (hidden layers as wide as their input).
        proj_layers: linear layers of the projector (3, the paper and ``--num_proj_layers``).
        memory_size: K momentum-encoder keys kept as extra negatives for every anchor (the paper's
            "memory mechanism from MoCo"; 65,536 on ImageNet); 0 = no memory and no key encoder.
        memory_momentum: EMA m of the key encoder and projector (0.999, paper's settings).
        finetune_from_layer: how many projector layers :meth:`SimCLRV2.finetune_module` keeps
            on the encoder (1: the paper's choice with 1 % / 10 % labels; 0: the encoder alone,
            its choice with 100 % labels; ``--ft_proj_selector`` in the tf2 code).
    """

    temperature: float = 0.1
    proj_hidden_dim: int = 0
    proj_layers: int = 3
    memory_size: int = 0
    memory_momentum: float = 0.999
    finetune_from_layer: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {self.memory_size}")
        if not 0 <= self.memory_momentum <= 1:
            raise ValueError(f"memory_momentum must be in [0, 1], got {self.memory_momentum}")
        if not 0 <= self.finetune_from_layer <= self.proj_layers:
            raise ValueError(f"finetune_from_layer must be in [0, proj_layers={self.proj_layers}], "
                             f"got {self.finetune_from_layer}")


class ChannelScale(nn.Module):
    """A learnable per-channel scale: after a non-affine BN it makes the tf2 code's output
    ``BatchNormalization(center=False, scale=True)`` (gamma without beta)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


@register_method(
    "simclrv2", config=SimCLRV2Config, family="contrastive, in-batch negatives (+ momentum memory)",
    paper="Chen et al., Big Self-Supervised Models are Strong Semi-Supervised Learners, "
          "NeurIPS 2020, https://arxiv.org/abs/2006.10029",
    default_recipe="simclrv2-quick",
)
class SimCLRV2(SimCLR):
    """SimCLR with v2's projector; with ``memory_size > 0`` a momentum copy of encoder and
    projector encodes both views, and its L2-normalised keys join a FIFO memory (after the step)
    whose entries are extra negatives of every anchor (before the step: never this batch's keys).

    Projector (google-research/simclr tf2 ``model.ProjectionHead``): ``proj_layers - 1`` blocks
    Linear (no bias) -> BN -> ReLU, then Linear (no bias) -> BN with a scale and no shift.

    Fine-tuning: :meth:`finetune_module` returns a copy of the encoder followed by the first
    ``finetune_from_layer`` projector layers, an ``images -> features`` module of width
    :attr:`finetune_dim` for the semi-supervised protocol to fine-tune with a new linear head.
    """

    cfg: SimCLRV2Config

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: SimCLRV2Config) -> None:
        super().__init__(encoder, feature_dim, cfg)
        if cfg.memory_size:
            self.key_encoder = momentum_copy(encoder)
            self.key_projector = momentum_copy(self.projector)
            self.memory = FeatureQueue(cfg.memory_size, cfg.proj_dim)

    def build_projector(self, feature_dim: int, cfg: SimCLRConfig) -> nn.Sequential:
        head = mlp(feature_dim, cfg.proj_hidden_dim or feature_dim, cfg.proj_dim,
                   num_layers=cfg.proj_layers, last_bn=True)
        return nn.Sequential(*head, ChannelScale(cfg.proj_dim))

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        z1, z2 = forward_views(lambda x: self.projector(self.encoder(x)), views[:2])
        if not self.cfg.memory_size:
            loss, logs = simclr_loss(z1, z2, self.cfg)
            return StepOutput(loss=loss, logs=logs)
        with torch.no_grad():
            k1, k2 = forward_views(lambda x: self.key_projector(self.key_encoder(x)), views[:2])
        loss, logs = simclr_loss(z1, z2, self.cfg, memory=self.memory.features)
        return StepOutput(loss=loss, logs=logs, state={"keys": F.normalize(torch.cat([k1, k2]), dim=1)})

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        if not self.cfg.memory_size:
            return {}
        ema_update(self.key_encoder, self.encoder, self.cfg.memory_momentum)
        ema_update(self.key_projector, self.projector, self.cfg.memory_momentum)
        # As MoCo v2: every rank enqueues all ranks' keys, view by view in rank order, so the
        # replicas keep one memory, equal to one process's on the joint batch.
        self.memory.enqueue_from_all_ranks(out.state["keys"], 2)
        return {}

    @property
    def finetune_dim(self) -> int:
        """Width of :meth:`finetune_module`'s output."""
        k, cfg = self.cfg.finetune_from_layer, self.cfg
        if k == 0:
            return self.feature_dim
        return cfg.proj_dim if k == cfg.proj_layers else cfg.proj_hidden_dim or self.feature_dim

    def finetune_module(self) -> nn.Module:
        """A copy of ``encoder`` followed by the first ``finetune_from_layer`` projector layers
        (hidden layers end with their ReLU; the last layer with its BN and scale).

        Shape:
            input: (B, C, H, W) images; output: (B, :attr:`finetune_dim`).
        """
        k, layers = self.cfg.finetune_from_layer, list(self.projector)
        kept = layers if k == self.cfg.proj_layers else layers[: 3 * k]
        return copy.deepcopy(nn.Sequential(self.encoder, *kept))
