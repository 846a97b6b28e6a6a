"""MoCo v3 (Chen, Xie, He, ICCV 2021): online encoder + projector + predictor against a momentum
encoder + projector, a symmetric contrastive loss over the batch's keys (no queue), and the
frozen random patch projection for ViTs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import gather_no_grad, is_initialized, rank
from sslbench.benchmark.schedules import cosine_momentum
from sslbench.methods.base import Method, StepContext, StepOutput
from sslbench.methods.heads import mlp
from sslbench.methods.losses import fp32, fp32_matmul
from sslbench.methods.momentum import ema_update, momentum_copy
from sslbench.methods.registry import register_method


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float, *, all_k: torch.Tensor | None = None,
                offset: int = 0) -> torch.Tensor:
    """MoCo v3's contrastive loss ``ctr(q, k)`` (Chen et al. 2021, Alg. 1).

    With ``u = normalize(q)``, the keys ``v = normalize(k)`` of the (global) batch and
    ``s_ij = u_i . v_j / tau``, the loss of query ``i`` whose positive is key ``offset + i`` is

        l_i = -log( exp(s_{i,offset+i}) / sum_j exp(s_ij) ),

    averaged over the queries and multiplied by ``2 tau`` (Alg. 1; moco-v3 ``builder.py``). The
    batch's other keys are the negatives; keys get no gradient. The method sums both directions.
    The logits are float32 (autocast off).

    Under data parallelism ``all_k`` holds every rank's keys (``gather_no_grad``, the repo's
    ``concat_all_gather``), ``offset = rank * N``: the mean over ranks is the joint-batch loss, and
    DDP's gradient average its gradient (keys carry none).

    Args:
        q: predictions of the online network (queries).
        k: this batch's keys (momentum network), row i the positive of ``q[i]``.
        temperature: tau > 0.
        all_k: keys of the global batch (None: ``k``).
        offset: row of ``all_k`` where this rank's keys start.

    Shape:
        q, k: (N, D); all_k: (M, D) with M >= N. Returns a scalar.
    """
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    keys = k if all_k is None else all_k
    n, m = q.shape[0], keys.shape[0]
    if keys.shape[1:] != q.shape[1:] or not 0 <= offset <= m - n:
        raise ValueError(f"offset {offset} does not place {n} keys inside keys of shape {tuple(keys.shape)}")
    q, keys = fp32(q, keys.detach())
    logits = fp32_matmul(F.normalize(q, dim=1), F.normalize(keys, dim=1).T) / temperature
    labels = torch.arange(n, device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


@dataclass(frozen=True)
class MoCoV3Config:
    """MoCo v3 hyperparameters (defaults: facebookresearch/moco-v3 ``main_moco.py`` / ``builder.py``,
    ResNet-50; the ViT values are in the ``mocov3-vit-imagenet`` recipe).

    Attributes:
        temperature: tau (1.0 for ResNet-50, the repo default; 0.2 for ViT, CONFIG.md).
        proj_hidden_dim: projector hidden width (``--moco-mlp-dim`` 4096).
        proj_dim: projector / predictor output (``--moco-dim`` 256).
        pred_hidden_dim: predictor hidden width (``--moco-mlp-dim`` 4096).
        proj_layers: projector linear layers (``MoCo_ResNet``: 2; ``MoCo_ViT``: 3).
        pred_last_bn: non-affine BN on the predictor output (``MoCo_ResNet``: no; ``MoCo_ViT``: yes).
        base_momentum: momentum-encoder EMA m (0.99; 0.996 for 1000 epochs, CONFIG.md).
        momentum_cosine: raise m to 1 on a half cosine (``--moco-m-cos``, in every CONFIG.md command).
        freeze_patch_embed: ViT only: a frozen random (Xavier-uniform) patch projection, the paper's
            stability trick §4.2 (``--stop-grad-conv1``).
        gather_distributed: under data parallelism, contrast each rank's queries against the keys
            of the whole global batch (gathered without gradient, labels offset by rank x N), as
            the repo does; off: each rank's own keys only. No effect in one process.
    """

    temperature: float = 1.0
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    proj_layers: int = 2
    pred_last_bn: bool = False
    base_momentum: float = 0.99
    momentum_cosine: bool = True
    freeze_patch_embed: bool = False
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if min(self.proj_hidden_dim, self.proj_dim, self.pred_hidden_dim, self.proj_layers) < 1:
            raise ValueError("head sizes and proj_layers must be >= 1")
        if not 0 <= self.base_momentum <= 1:
            raise ValueError(f"base_momentum must be in [0, 1], got {self.base_momentum}")


def freeze_patch_projection(encoder: nn.Module) -> nn.Conv2d:
    """Re-initialises a ViT's patch projection as the official ``vits.py`` does (uniform with
    bound ``sqrt(6 / (C p^2 + D))``, zero bias) and freezes it (MoCo v3 §4.2, "random patch
    projection"); returns the projection.

    Raises:
        ValueError: the encoder has no ViT patch embedding (``patch_embed.proj`` convolution).
    """
    proj = getattr(getattr(encoder, "patch_embed", None), "proj", None)
    if not isinstance(proj, nn.Conv2d):
        raise ValueError(f"freeze_patch_embed needs a ViT backbone with a patch embedding "
                         f"(patch_embed.proj); {type(encoder).__name__} has none")
    bound = math.sqrt(6.0 / (proj.weight[0].numel() + proj.out_channels))
    with torch.no_grad():
        nn.init.uniform_(proj.weight, -bound, bound)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
    for p in proj.parameters():
        p.requires_grad_(False)
    return proj


@register_method(
    "mocov3", config=MoCoV3Config, family="contrastive, momentum encoder + in-batch keys",
    paper="Chen, Xie, He, An Empirical Study of Training Self-Supervised Vision Transformers, ICCV 2021, "
          "https://arxiv.org/abs/2104.02057",
    default_recipe="mocov3-quick",
)
class MoCoV3(Method):
    """q = predictor(projector(encoder(x))); k = momentum projector(momentum encoder(x));
    loss ``ctr(q1, k2) + ctr(q2, k1)``. Heads as ``moco-v3/moco/builder.py`` (BN in every hidden
    layer, a non-affine BN on the projector output); deviation: the predictor's last linear layer
    keeps a bias when it has no output BN (``heads.mlp``), the repo's has none."""

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: MoCoV3Config) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        if cfg.freeze_patch_embed:
            freeze_patch_projection(self.encoder)
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers,
                             last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, last_bn=cfg.pred_last_bn)
        self.momentum_encoder = momentum_copy(self.encoder)
        self.momentum_projector = momentum_copy(self.projector)

    def _ctr(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.cfg.gather_distributed and is_initialized():
            return mocov3_loss(q, k, self.cfg.temperature, all_k=gather_no_grad(k), offset=rank() * q.shape[0])
        return mocov3_loss(q, k, self.cfg.temperature)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        # One forward per view, as the repo (each view's BN statistics of its own).
        q1, q2 = (self.predictor(self.projector(self.encoder(v))) for v in views[:2])
        with torch.no_grad():
            k1, k2 = (self.momentum_projector(self.momentum_encoder(v)) for v in views[:2])
        return StepOutput(loss=self._ctr(q1, k2) + self._ctr(q2, k1))

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The EMA momentum used before step ``step``'s keys (the repo's ``adjust_moco_momentum``
        at that iteration): ``1 - (1 - m) (1 + cos(pi step / total)) / 2``, or m without the cosine."""
        if not self.cfg.momentum_cosine:
            return self.cfg.base_momentum
        return cosine_momentum(step, total_steps, self.cfg.base_momentum)

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        # The repo updates the momentum network at the start of step t+1 with m(t+1); this hook
        # runs after step t's optimiser step, so it uses m(t+1): the same sequence of targets.
        m = self.momentum_at(ctx.step + 1, ctx.total_steps)
        ema_update(self.momentum_encoder, self.encoder, m)
        ema_update(self.momentum_projector, self.projector, m)
        return {"ema_momentum": m}
