"""DINO (Caron et al., ICCV 2021): a student matches the centred, sharpened output distribution of
an EMA teacher across multi-crop views (self-distillation with no labels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import is_initialized, mean_over_ranks
from sslbench.benchmark.schedules import cosine_momentum
from sslbench.methods.base import LogValue, Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import DINOHead
from sslbench.methods.momentum import ema_update, momentum_copy
from sslbench.methods.multicrop import count_global, crop_pairs
from sslbench.methods.registry import register_method


@dataclass(frozen=True)
class DINOConfig:
    """DINO hyperparameters (defaults: the paper's ViT-S/16 ImageNet implementation details and
    facebookresearch/dino ``main_dino.py``).

    Attributes:
        out_dim: K, the head's output count (65,536).
        hidden_dim, bottleneck_dim, head_layers: the head's MLP (2048 hidden, 256 bottleneck, 3
            linear layers).
        use_bn_in_head: batch norm in the head's hidden layers (off; repo option).
        norm_last_layer: fix the weight-normalised last layer's g to 1 (repo default; off in the
            300-epoch ViT-S recipe).
        student_temp: tau_s (0.1).
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: tau_t rises linearly
            from 0.04 to 0.07 over the first 30 epochs (paper; repo default 0.04 constant).
        center_momentum: m of the centre's EMA (0.9).
        base_momentum: teacher EMA momentum, raised to 1 on a cosine (0.996).
        freeze_last_layer: epochs during which the last layer gets no update (1).
        clip_grad: per-parameter gradient-norm clip on the student (3.0; 0 = off).
        gather_distributed: under data parallelism, average the teacher's batch mean over ranks
            before the centre update (the official code all-reduces it); the loss is per-sample
            given the centre and needs no gather. No effect in one process.
    """

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9
    base_momentum: float = 0.996
    freeze_last_layer: int = 1
    clip_grad: float = 3.0
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        if min(self.out_dim, self.hidden_dim, self.bottleneck_dim, self.head_layers) < 1:
            raise ValueError("head sizes must be >= 1")
        if min(self.student_temp, self.teacher_temp, self.warmup_teacher_temp) <= 0:
            raise ValueError("temperatures must be > 0")
        if min(self.warmup_teacher_temp_epochs, self.freeze_last_layer, self.clip_grad) < 0:
            raise ValueError("warmup_teacher_temp_epochs, freeze_last_layer and clip_grad must be >= 0")
        if not (0 <= self.center_momentum <= 1 and 0 <= self.base_momentum <= 1):
            raise ValueError("center_momentum and base_momentum must be in [0, 1]")


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """tau_t at ``epoch``: ``linspace(warmup_temp, temp, warmup_epochs)[epoch]`` during the
    warm-up, ``temp`` afterwards (the official ``teacher_temp_schedule``)."""
    if epoch >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)


def dino_loss(student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """DINO's cross-entropy (Caron et al. 2021, Eq. 1-3 and Algorithm 1).

    With ``P_t^i = softmax((g_t(x_i) - c) / tau_t)`` for the teacher's global views i and
    ``log P_s^j = log_softmax(g_s(x_j) / tau_s)`` for every student view j,

        L = 1/|pairs| sum_{(i, j), i != j} mean_b  - sum_k P_t^i[b, k] log P_s^j[b, k],

    the pairs being every global view i against every other view j
    (:func:`~sslbench.methods.multicrop.crop_pairs`). The teacher receives no gradient.

    Args:
        student_out: student head outputs, the global views first.
        teacher_out: teacher head outputs of the global views.
        center: c, the EMA of the teacher outputs' batch mean.
        student_temp: tau_s > 0.
        teacher_temp: tau_t > 0.

    Shape:
        student_out: V tensors (B, K); teacher_out: G <= V tensors (B, K); center: (1, K).
        Returns a scalar.
    """
    dtype = torch.promote_types(student_out[0].dtype, torch.float32)  # bf16 autocast -> fp32
    targets = [F.softmax((t.detach().to(dtype) - center) / teacher_temp, dim=-1) for t in teacher_out]
    log_probs = [F.log_softmax(s.to(dtype) / student_temp, dim=-1) for s in student_out]
    pairs = crop_pairs(len(teacher_out), len(student_out))
    return sum((-(targets[i] * log_probs[j]).sum(dim=-1).mean() for i, j in pairs),
               torch.zeros((), dtype=dtype, device=center.device)) / len(pairs)


@register_method(
    "dino", config=DINOConfig, family="self-distillation, EMA teacher + centring",
    paper="Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021, "
          "https://arxiv.org/abs/2104.14294",
    default_recipe="dino-quick",
)
class DINO(Method):
    """Student: encoder -> DINO head on every view. Teacher: EMA of both, on the global views."""

    center: torch.Tensor  # (1, K) buffer
    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: DINOConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.head = DINOHead(feature_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                             num_layers=cfg.head_layers, use_bn=cfg.use_bn_in_head,
                             norm_last_layer=cfg.norm_last_layer)
        self.teacher_encoder = momentum_copy(encoder)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        num_global = count_global(views)
        # As the official MultiCropWrapper: the backbone once per resolution, the head once on
        # all views together (a BN in the head then sees every view of the batch).
        student = self.head(torch.cat(forward_views(self.encoder, views))).chunk(len(views))
        with torch.no_grad():
            teacher = self.teacher_head(torch.cat(forward_views(self.teacher_encoder, views[:num_global])))
        cfg = self.cfg
        temp = teacher_temperature(ctx.epoch, cfg.warmup_teacher_temp, cfg.teacher_temp,
                                   cfg.warmup_teacher_temp_epochs)
        loss = dino_loss(list(student), list(teacher.chunk(num_global)), self.center, cfg.student_temp, temp)
        batch_center = teacher.to(self.center.dtype).mean(dim=0, keepdim=True)
        return StepOutput(loss=loss, logs={"teacher_temp": temp}, state={"batch_center": batch_center})

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Clips each student gradient's norm to ``clip_grad``, then drops the last layer's
        gradients during the first ``freeze_last_layer`` epochs (official ``clip_gradients`` and
        ``cancel_gradients_last_layer``: ``grad = None``, so not even weight decay moves it)."""
        if self.cfg.clip_grad > 0:
            for p in self.parameters():
                if p.grad is not None:
                    norm = torch.linalg.vector_norm(p.grad)
                    p.grad.mul_((self.cfg.clip_grad / (norm + 1e-6)).clamp(max=1.0))
        if ctx.epoch < self.cfg.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, LogValue]:
        batch_center = out.state["batch_center"]
        if self.cfg.gather_distributed and is_initialized():
            batch_center = mean_over_ranks(batch_center)  # equal batches per rank: the global mean
        self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1.0 - self.cfg.center_momentum)
        m = cosine_momentum(ctx.step, ctx.total_steps, self.cfg.base_momentum)
        ema_update(self.teacher_encoder, self.encoder, m)
        ema_update(self.teacher_head, self.head, m)
        return {"ema_momentum": m, "teacher_temp": out.logs["teacher_temp"]}  # the schedule's float
