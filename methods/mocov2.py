"""MoCo v2 (Chen et al. 2020): a momentum key encoder and a queue of negatives, with v2's MLP
projector, temperature 0.2 and "aug+" (MoCo v1: He et al., CVPR 2020); InfoNCE or another loss of
the InfoNCE family (``loss``: see :mod:`sslbench.methods.losses`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.config import added_key
from sslbench.benchmark.distributed import gather_no_grad, gather_with_grad, is_initialized
from sslbench.methods.base import Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.losses import (
    WHOLE_BATCH_LOSSES,
    LossVariantConfig,
    contrastive_loss,
    info_nce,
    info_nce_from_similarities,
    moco_similarities,
)
from sslbench.methods.momentum import FeatureQueue, ema_update, momentum_copy
from sslbench.methods.registry import register_method


@dataclass(frozen=True)
class MoCoV2Config(LossVariantConfig):
    """MoCo v2 hyperparameters (defaults: the official repo's ``--mlp --moco-t 0.2 --aug-plus --cos``),
    plus the loss-variant keys of :class:`~sslbench.methods.losses.LossVariantConfig`
    (``loss="infonce"``: MoCo's InfoNCE).

    Attributes:
        temperature: tau (0.2).
        queue_size: K negatives (65,536).
        momentum: key-encoder EMA m (0.999).
        proj_hidden_dim: MLP hidden width; 0 means the backbone's feature dimension (as in the repo).
        proj_dim: output dimension (128).
        symmetric: also contrast view 2 against view 1 and sum the two losses (the repo's CIFAR-10
            demo); both key sets are enqueued.
        gather_distributed: under data parallelism, evaluate a loss that is not a mean over
            queries (``align_uniform``: a log-mean over all query-queue pairs) on the whole global
            batch on every rank (queries gathered with gradients, keys without), so W ranks give
            the joint-batch loss. The per-query losses need nothing: the queue is the same on
            every rank. No effect in one process.
    """

    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999
    proj_hidden_dim: int = 0
    proj_dim: int = 128
    symmetric: bool = False
    gather_distributed: bool = added_key(False)  # added after runs existed (hash unchanged)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")


@register_method(
    "mocov2", config=MoCoV2Config, family="contrastive, momentum encoder + queue",
    paper="Chen et al., Improved Baselines with Momentum Contrastive Learning, 2020, "
          "https://arxiv.org/abs/2003.04297",
    default_recipe="mocov2-quick",
)
class MoCoV2(Method):
    """Query = projector(encoder(view 1)); key = momentum copies on view 2; InfoNCE vs the queue."""

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: MoCoV2Config) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        hidden = cfg.proj_hidden_dim or feature_dim
        self.projector = mlp(feature_dim, hidden, cfg.proj_dim, hidden_bn=False)
        self.key_encoder = momentum_copy(encoder)
        self.key_projector = momentum_copy(self.projector)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    def _keys(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            keys = forward_views(lambda x: self.key_projector(self.key_encoder(x)), views)
        return [F.normalize(k, dim=1) for k in keys]

    def _loss(self, q: torch.Tensor, k: torch.Tensor, logs: dict[str, Any]) -> torch.Tensor:
        cfg, queue = self.cfg, self.queue.features
        if cfg.loss == "infonce":
            return info_nce(q, k, queue, cfg.temperature)
        if cfg.gather_distributed and is_initialized() and cfg.loss in WHOLE_BATCH_LOSSES:
            q, k = gather_with_grad(q), gather_no_grad(k)
        pos, neg = moco_similarities(q, k, queue)
        infonce = info_nce_from_similarities(pos.detach(), neg.detach(), cfg.temperature)
        logs["infonce"] = logs.get("infonce", 0.0) + infonce
        return contrastive_loss(pos, neg, cfg.temperature, cfg)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        logs: dict[str, Any] = {}
        if self.cfg.symmetric:
            q1, q2 = forward_views(lambda x: self.projector(self.encoder(x)), views[:2])
            k1, k2 = self._keys(views[:2])
            loss = self._loss(q1, k2, logs) + self._loss(q2, k1, logs)
            keys = torch.cat([k1, k2])
        else:
            q1 = self.projector(self.encoder(views[0]))
            (keys,) = self._keys(views[1:2])
            loss = self._loss(q1, keys, logs)
        return StepOutput(loss=loss, logs=logs, state={"keys": keys})

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        # Order equals the repo's (momentum update before the next keys, enqueue after the loss);
        # the keys of all ranks are enqueued.
        ema_update(self.key_encoder, self.encoder, self.cfg.momentum)
        ema_update(self.key_projector, self.projector, self.cfg.momentum)
        self.queue.enqueue_from_all_ranks(out.state["keys"], 2 if self.cfg.symmetric else 1)
        return {}
