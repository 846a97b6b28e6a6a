"""RotNet (Gidaris, Singh & Komodakis, ICLR 2018): every image of the batch is presented in all
four rotations (0, 90, 180, 270 degrees, by transposes and flips: no interpolation, so the
rotation leaves no resampling artefact to detect), and a classifier on the encoder's features
predicts which rotation it sees (4-way cross-entropy). The evaluated encoder is the plain
backbone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.methods.base import Method, StepContext, StepOutput
from sslbench.methods.heads import mlp
from sslbench.methods.registry import register_method


def rotate_batch(images: torch.Tensor, angles: tuple[int, ...] = (0, 90, 180, 270),
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in every rotation of ``angles`` (multiples of 90 degrees, counter-clockwise,
    ``torch.rot90`` over height and width), grouped by rotation, with the rotation's index in
    ``angles`` as label: rows ``k B .. (k + 1) B - 1`` are the batch rotated by ``angles[k]``.

    ``torch.rot90(rotated, -angles[k] // 90, dims=(-2, -1))`` gives the images back.

    Shape:
        images: (B, C, S, S) (square: a quarter turn keeps the shape); return: (K B, C, S, S) and
        (K B,) int64 labels, K = len(angles).
    """
    quarters = [a // 90 for a in angles]
    rotated = torch.cat([torch.rot90(images, q, dims=(-2, -1)) for q in quarters])
    labels = torch.arange(len(angles), device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RotNet's objective (Gidaris et al. 2018, §2, eq. 1-2): the mean over images and rotations
    of ``-log F^y(g(X, y))``, the softmax score of the applied rotation y:
    ``L = -1/(K B) sum_{b, y} log softmax(s_{b, y})[y]``.

    Shape:
        logits: (K B, K); labels: (K B,) int64; return: ().
    """
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class RotationConfig:
    """RotNet hyperparameters (defaults: the paper's 4 rotations; the official CIFAR-10 network
    ends in global average pooling and one linear layer, gidariss/FeatureLearningRotNet
    ``architectures/NetworkInNetwork.py``, as open-mmlab/mmselfsup's ResNet-50 ``ClsHead``).

    Attributes:
        angles: the rotations, multiples of 90 degrees (the paper's Table 2 ablation: 4 rotations
            89.06 on CIFAR-10, 2 rotations (0, 180) 87.46 [S: PAPERS.md §2.18]).
        head_hidden_dim: 0: a linear classifier on the encoder's features (the paper's and
            mmselfsup's); > 0: an MLP with one hidden Linear -> BN -> ReLU layer this wide.
    """

    angles: tuple[int, ...] = (0, 90, 180, 270)
    head_hidden_dim: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "angles", tuple(int(a) for a in self.angles))  # a JSON list too
        if len(self.angles) < 2 or len(set(a % 360 for a in self.angles)) != len(self.angles) \
                or any(a % 90 for a in self.angles):
            raise ValueError(f"angles must be >= 2 distinct multiples of 90 degrees, got {self.angles}")
        if self.head_hidden_dim < 0:
            raise ValueError(f"head_hidden_dim must be >= 0, got {self.head_hidden_dim}")


@register_method(
    "rotation", config=RotationConfig, family="pretext task, rotation classification (4-way)",
    paper="Gidaris, Singh & Komodakis, Unsupervised Representation Learning by Predicting Image "
          "Rotations, ICLR 2018, https://arxiv.org/abs/1803.07728",
    default_recipe="rotation-quick",
)
class RotNet(Method):
    """Encoder on all rotations of the batch at once (one forward, batch norm over all of them,
    as the paper puts the 4 rotated copies of an image in the same mini-batch) -> classifier."""

    num_views = 1

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: RotationConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        k = len(cfg.angles)
        self.classifier = (mlp(feature_dim, cfg.head_hidden_dim, k) if cfg.head_hidden_dim
                           else nn.Linear(feature_dim, k))

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        rotated, labels = rotate_batch(views[0], self.cfg.angles)
        logits = self.classifier(self.encoder(rotated))
        loss = rotation_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(loss=loss, logs={"pretext_acc": accuracy})
