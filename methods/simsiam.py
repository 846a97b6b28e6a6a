"""SimSiam (Chen & He, CVPR 2021): a Siamese network whose one branch predicts the other's
projection through a small predictor, with a stop-gradient on the target; no negatives, no
momentum encoder, no large batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.config import added_key
from sslbench.methods.base import LogValue, Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.registry import register_method


def negative_cosine(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """SimSiam's negative cosine similarity ``D`` (Chen & He 2021, Eq. 1) with the stop-gradient
    of Eq. 3:

        D(p, z) = - mean_i  (p_i / ||p_i||) . (sg(z_i) / ||sg(z_i)||).

    Args:
        p: predictions (the branch that receives the gradient).
        z: projections of the other view, detached here (``sg``).
        stop_gradient: False lets the gradient flow into ``z`` too (the collapse ablation of §4.1).

    Shape:
        p, z: (N, D). Returns a scalar in [-1, 1].
    """
    return -F.cosine_similarity(p, z.detach() if stop_gradient else z, dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                 stop_gradient: bool = True) -> torch.Tensor:
    """The symmetrised loss of SimSiam (Eq. 4): ``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``
    (without ``sg`` when ``stop_gradient`` is False).

    Shape:
        p1, p2, z1, z2: (N, D). Returns a scalar in [-1, 1] (-1: every prediction is parallel
        to the other view's projection).
    """
    return 0.5 * (negative_cosine(p1, z2, stop_gradient) + negative_cosine(p2, z1, stop_gradient))


@dataclass(frozen=True)
class SimSiamConfig:
    """SimSiam hyperparameters (defaults: the ImageNet setting, paper §4 and facebookresearch/simsiam
    ``builder.py`` / ``main_simsiam.py``).

    Attributes:
        proj_hidden_dim: projector hidden width (the repo uses the backbone's width, 2048 for
            ResNet-50).
        proj_dim: projector output d (``--dim 2048``; Table 5: 2048 best).
        proj_layers: linear layers in the projector, each followed by BN, the output's BN without
            affine (3 on ImageNet, §4 "Projection MLP"; 2 on CIFAR, App. D).
        pred_hidden_dim: predictor bottleneck (``--pred-dim 512``, §4 "Prediction MLP": 2048 ->
            512 (BN, ReLU) -> 2048, no BN on the output).
        fix_pred_lr: keep the predictor's learning rate at its peak instead of decaying it
            (``--fix-pred-lr``, the README recipe; §4: 68.1 vs 67.7 when decayed).
        stop_gradient: detach the targets (Eq. 3). False is the paper's ablation (§4.1, Fig. 2),
            where ResNet-50 collapses to a constant output. With simsiam-quick (small CNN) it does
            not (BatchNorm in every layer keeps the features spread: normalised std ~0.65, no
            collapse alarm) but collapses dimensionally: the monitor's RankMe falls to ~0.5-0.6x
            the stop-gradient run's within an epoch (MEASURED). Added after runs existed
            (``added_key``): left out of the stored config while True.
    """

    proj_hidden_dim: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3
    pred_hidden_dim: int = 512
    fix_pred_lr: bool = True
    stop_gradient: bool = added_key(True)

    def __post_init__(self) -> None:
        if min(self.proj_hidden_dim, self.proj_dim, self.pred_hidden_dim) < 1:
            raise ValueError("head sizes must be >= 1")
        if self.proj_layers < 1:
            raise ValueError(f"proj_layers must be >= 1, got {self.proj_layers}")


@register_method(
    "simsiam", config=SimSiamConfig, family="self-distillation, stop-gradient + predictor",
    paper="Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021, "
          "https://arxiv.org/abs/2011.10566",
    default_recipe="simsiam-quick",
)
class SimSiam(Method):
    """Encoder -> projector (z) -> predictor (p); ``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``.

    The two views go through the encoder and the projector as one batch (``forward_views``), so
    batch norm sees both views at once; the official code runs the views one after the other
    (per-view BN statistics).
    """

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: SimSiamConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        # Every projector layer has BN; the output BN has no affine (builder.py).
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim,
                             num_layers=cfg.proj_layers, last_bn=True)
        # Bottleneck predictor: Linear -> BN -> ReLU -> Linear (with bias, no BN).
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        z1, z2 = forward_views(lambda x: self.projector(self.encoder(x)), views[:2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        loss = simsiam_loss(p1, p2, z1, z2, self.cfg.stop_gradient)
        # Collapse monitor of §4.1 / Fig. 2: the per-dimension std of l2-normalised z, which
        # is ~1/sqrt(d) for well-spread outputs and 0 for collapsed ones.
        z_std = F.normalize(z1.detach(), dim=1).std(dim=0).mean()
        return StepOutput(loss=loss, logs={"z_std": z_std})

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, LogValue]:
        return dict(out.logs)  # this step's values again, as 0-d tensors (no sync)

    def param_groups(self) -> list[dict[str, Any]]:
        """Encoder + projector, and the predictor (``fixed_lr`` when ``fix_pred_lr``).

        As in the official ``main_simsiam.py``, weight decay applies to every parameter,
        biases and BN included (§4 "Optimizer"); SimSiam trains with SGD, not LARS.
        """
        in_predictor = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in in_predictor]
        predictor = [p for p in self.predictor.parameters() if p.requires_grad]
        return [{"params": rest}, {"params": predictor, "fixed_lr": self.cfg.fix_pred_lr}]
