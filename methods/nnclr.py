"""NNCLR (Dwibedi et al., ICCV 2021): SimCLR whose positive is the nearest neighbour of a view's
projection in a support set (a FIFO queue of past projections), contrasted with the predictions
of the other view."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import gather_no_grad, gather_with_grad, is_initialized, rank
from sslbench.methods.base import Method, StepContext, StepOutput, forward_views
from sslbench.methods.heads import mlp
from sslbench.methods.losses import fp32, fp32_matmul
from sslbench.methods.momentum import FeatureQueue
from sslbench.methods.registry import register_method


@dataclass(frozen=True)
class NNCLRConfig:
    """NNCLR hyperparameters (defaults: the paper's ImageNet values; head sizes as quoted
    by lightly's ``NNCLRProjectionHead`` / ``NNCLRPredictionHead``).

    Attributes:
        temperature: tau (0.1).
        support_set_size: entries of the support set Q (98,304, the best of the paper's
            support-set ablation).
        proj_hidden_dim: projector hidden width; the projector is 3 layers, each with BN (2048).
        proj_dim: d, the embedding size (256).
        pred_hidden_dim: predictor hidden width (4096).
        symmetric: also add the transposed term of §3.2, implementation details (each prediction
            classified against the neighbours of the batch), as VISSL and the Keras example do;
            off: Eq. 2 alone, as solo-learn does.
        gather_distributed: under data parallelism, use the whole global batch's predictions
            (gathered with gradients) and neighbours as negatives; off: the rank's own slice.
            The support set always receives every rank's projections. No effect in one process.
    """

    temperature: float = 0.1
    support_set_size: int = 98304
    proj_hidden_dim: int = 2048
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    symmetric: bool = True
    gather_distributed: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if min(self.support_set_size, self.proj_hidden_dim, self.proj_dim, self.pred_hidden_dim) < 1:
            raise ValueError("support_set_size and head sizes must be >= 1")


@torch.no_grad()
def nearest_neighbour(z: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NN(z, Q) = argmin_{q in Q} ||z - q||_2 for L2-normalised z and q, i.e. the entry of
    highest cosine similarity; no gradient.

    Shape:
        z: (B, D); support: (K, D). Returns the neighbours (B, D) and their rows (B,).
    """
    idx = (F.normalize(z, dim=1) @ F.normalize(support, dim=1).T).argmax(dim=1)
    return support[idx], idx


def nnclr_loss(nn_a: torch.Tensor, p_b: torch.Tensor, temperature: float, *, symmetric: bool = True,
               all_nn_a: torch.Tensor | None = None, all_p_b: torch.Tensor | None = None,
               offset: int = 0) -> torch.Tensor:
    """NNCLR's loss for one pair of views (Dwibedi et al. 2021, Eq. 2 and §3.2).

    With the neighbours ``n_i = NN(z_i, Q)`` of view a and the predictions ``p_i`` of view b
    (all L2-normalised here),

        L_i  = -log( exp(n_i . p_i / tau) / sum_k exp(n_i . p_k / tau) )    (Eq. 2),
        L'_i = -log( exp(n_i . p_i / tau) / sum_k exp(n_k . p_i / tau) )    (the §3.2 symmetrisation),

    returns mean_i L_i, or mean_i (L_i + L'_i) / 2 with ``symmetric``, the logits in float32
    (autocast off). The neighbours receive no gradient. Global batch: ``all_nn_a`` / ``all_p_b`` hold all ranks' M rows (this rank's at
    ``offset``); the mean over ranks then equals the joint batch's loss.

    Args:
        nn_a: nearest neighbours of view a's projections.
        p_b: predictions of view b (row i: the same image).
        temperature: tau > 0.
        symmetric: add the transposed term.
        all_nn_a: the global batch's neighbours (None: this batch).
        all_p_b: the global batch's predictions.
        offset: row of the global batch where this rank's rows start.

    Shape:
        nn_a, p_b: (N, D); all_nn_a, all_p_b: (M, D). Returns a scalar.
    """
    nn_a, p_b = fp32(nn_a.detach(), p_b)
    nn_a, p_b = F.normalize(nn_a, dim=1), F.normalize(p_b, dim=1)
    cand_p = p_b if all_p_b is None else F.normalize(fp32(all_p_b)[0], dim=1)
    labels = torch.arange(nn_a.shape[0], device=nn_a.device) + offset
    loss = F.cross_entropy(fp32_matmul(nn_a, cand_p.T) / temperature, labels)
    if not symmetric:
        return loss
    cand_nn = nn_a if all_nn_a is None else F.normalize(fp32(all_nn_a.detach())[0], dim=1)
    return (loss + F.cross_entropy(fp32_matmul(p_b, cand_nn.T) / temperature, labels)) / 2


@register_method(
    "nnclr", config=NNCLRConfig, family="contrastive, nearest-neighbour positives",
    paper="Dwibedi et al., With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning "
          "of Visual Representations, ICCV 2021, https://arxiv.org/abs/2104.14548",
    default_recipe="nnclr-quick",
)
class NNCLR(Method):
    """Encoder -> projector z -> predictor p; positives NN(z) from the support set."""

    low_precision_views = True  # the views only enter the networks (bf16 views on CUDA)

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: NNCLRConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        # 3 linear layers, each followed by BN, ReLU after all but the last (the paper, as quoted by lightly).
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=3, last_bn=True)
        # [pred_hidden, d], BN + ReLU on the hidden layer only.
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.support_set = FeatureQueue(cfg.support_set_size, cfg.proj_dim)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        z1, z2 = forward_views(lambda x: self.projector(self.encoder(x)), views[:2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        z1, z2 = F.normalize(z1.detach(), dim=1), F.normalize(z2.detach(), dim=1)
        nn1, _ = nearest_neighbour(z1, self.support_set.features)  # the queue before this step
        nn2, _ = nearest_neighbour(z2, self.support_set.features)
        cfg = self.cfg
        if cfg.gather_distributed and is_initialized():
            off = rank() * z1.shape[0]
            all_nn1, all_nn2, all_p1, all_p2 = (gather_no_grad(nn1), gather_no_grad(nn2),
                                                gather_with_grad(p1), gather_with_grad(p2))
            loss = (nnclr_loss(nn1, p2, cfg.temperature, symmetric=cfg.symmetric, all_nn_a=all_nn1,
                               all_p_b=all_p2, offset=off)
                    + nnclr_loss(nn2, p1, cfg.temperature, symmetric=cfg.symmetric, all_nn_a=all_nn2,
                                 all_p_b=all_p1, offset=off)) / 2
        else:
            loss = (nnclr_loss(nn1, p2, cfg.temperature, symmetric=cfg.symmetric)
                    + nnclr_loss(nn2, p1, cfg.temperature, symmetric=cfg.symmetric)) / 2
        return StepOutput(loss=loss, state={"keys": z1})

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> dict[str, float]:
        # The first view's projections enter the support set after the loss (solo-learn, VISSL);
        # under data parallelism all ranks' rows, in rank order, so every replica's set is the same.
        self.support_set.enqueue_from_all_ranks(out.state["keys"])
        return {}
