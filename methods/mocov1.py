"""MoCo v1 (He et al., CVPR 2020): a momentum key encoder, a queue of negatives, a linear 128-d
head, temperature 0.07 and shuffling BN."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import is_initialized
from sslbench.methods.base import Method, StepContext, StepOutput
from sslbench.methods.losses import info_nce
from sslbench.methods.momentum import FeatureQueue, ema_update, momentum_copy
from sslbench.methods.registry import register_method
from sslbench.methods.shuffle_bn import (
    SHUFFLE_BN_MODES,
    convert_split_batchnorm,
    resolve_shuffle_bn,
    shuffled_forward,
)


@dataclass(frozen=True)
class MoCoV1Config:
    """MoCo v1 hyperparameters (defaults: paper §3.3 / facebookresearch/moco ``main_moco.py``).

    Attributes:
        temperature: tau (0.07, paper §3.1 and the repo's ``--moco-t`` default).
        queue_size: K negatives (65,536; ablated in paper Fig. 3).
        momentum: key-encoder EMA m (0.999; paper Table 4 ablation).
        proj_dim: output of the linear fc head (128; paper §3.3 "a fc layer ... 128-D").
        shuffle_bn: ``"auto"`` (``"ddp"`` under data parallelism, else ``"split"``), ``"ddp"``
            (the paper's shuffle across GPUs), ``"split"`` (the CIFAR-10 demo's SplitBatchNorm,
            one process), ``"off"`` (plain BN: the leaking baseline of paper Fig. 5 / §3.3).
        bn_splits: sub-batches of SplitBatchNorm (8: the paper's 8 GPUs; the demo's default).
        symmetric: also contrast view 2 against view 1's keys and sum the losses (the CIFAR-10
            demo's ``--symmetric``; the paper is asymmetric); both key sets are enqueued.
    """

    temperature: float = 0.07
    queue_size: int = 65536
    momentum: float = 0.999
    proj_dim: int = 128
    shuffle_bn: str = "auto"
    bn_splits: int = 8
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.queue_size < 1 or self.proj_dim < 1:
            raise ValueError(f"queue_size and proj_dim must be >= 1, got {self.queue_size}, {self.proj_dim}")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if self.shuffle_bn not in SHUFFLE_BN_MODES:
            raise ValueError(f"shuffle_bn must be one of {', '.join(SHUFFLE_BN_MODES)}, got {self.shuffle_bn!r}")
        if self.bn_splits < 1:
            raise ValueError(f"bn_splits must be >= 1, got {self.bn_splits}")


@register_method(
    "mocov1", config=MoCoV1Config, family="contrastive, momentum encoder + queue",
    paper="He et al., Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020, "
          "https://arxiv.org/abs/1911.05722",
    default_recipe="mocov1-quick",
)
class MoCoV1(Method):
    """Query = fc(encoder(view 1)); key = momentum copies on a shuffled view 2; InfoNCE vs the queue.

    With ``shuffle_bn="split"`` the batch norms of both encoders become :class:`SplitBatchNorm`
    (as in the CIFAR-10 demo, whose query and key encoders share the layer type); eval-mode
    features, and the state-dict keys, are those of the plain backbone.
    """

    #: MoCo needs per-rank BN statistics under data parallelism (shuffling BN): the engine must
    #: not convert this method's batch norms to SyncBatchNorm (the official code does not).
    sync_batchnorm = False
    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: MoCoV1Config) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.shuffle_bn = resolve_shuffle_bn(cfg.shuffle_bn)
        if self.shuffle_bn == "split":
            convert_split_batchnorm(self.encoder, cfg.bn_splits)
        self.projector = nn.Linear(feature_dim, cfg.proj_dim)  # v1: one fc layer, no MLP
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projector = momentum_copy(self.projector)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    def _key_net(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_projector(self.key_encoder(x))

    def _keys(self, view: torch.Tensor, ctx: StepContext, stream: int) -> torch.Tensor:
        """L2-normalised keys of one view, encoded from a shuffled batch (no gradient)."""
        with torch.no_grad():
            if self.shuffle_bn == "off":
                keys = self._key_net(view)
            else:
                keys = shuffled_forward(self._key_net, view, ctx.generator(view.device, stream),
                                        across_ranks=self.shuffle_bn == "ddp")
        return F.normalize(keys, dim=1)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        if self.shuffle_bn == "ddp" and not is_initialized():
            raise RuntimeError("shuffle_bn='ddp' shuffles keys across data-parallel ranks but no "
                               "process group is running; use 'auto' or 'split' in one process")
        tau, queue = self.cfg.temperature, self.queue.features
        # One forward per view, as the official code (each view's BN statistics of its own).
        q1 = self.projector(self.encoder(views[0]))
        k2 = self._keys(views[1], ctx, stream=1)
        loss = info_nce(q1, k2, queue, tau)
        keys = k2
        if self.cfg.symmetric:
            q2 = self.projector(self.encoder(views[1]))
            k1 = self._keys(views[0], ctx, stream=0)
            loss = loss + info_nce(q2, k1, queue, tau)
            keys = torch.cat([k1, k2])  # the demo's enqueue order
        return StepOutput(loss=loss, state={"keys": keys})

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        # The repo updates the key encoder before the next keys and enqueues after the loss; the
        # same order here, with the keys of all ranks.
        ema_update(self.key_encoder, self.encoder, self.cfg.momentum)
        ema_update(self.key_projector, self.projector, self.cfg.momentum)
        self.queue.enqueue_from_all_ranks(out.state["keys"], 2 if self.cfg.symmetric else 1)
        return {}
