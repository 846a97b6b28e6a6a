"""Jigsaw Clustering (Chen et al., CVPR 2021, https://arxiv.org/abs/2104.00323): one branch, two
tasks on montages of tiles from different images.

Every image of the batch gives ``k = m x m`` tiles (m = 2): tile j is the j-th region (row-major)
of the image's j-th augmented view, each region ``1/m + cross_ratio`` of the side, so neighbours
overlap (:func:`tile_regions`). The ``n k`` tiles are stitched into n montages of m x m tiles,
each montage holding tiles of k different images (:func:`jigsaw_assignment`, :func:`montage`).
The encoder's last feature map of a montage is cut back into its m x m cells, each cell
average-pooled (:func:`cell_features`) to one feature per tile. Two losses on these features:

* clustering (:func:`jigsaw_cluster_loss`): a supervised-contrastive loss over all tiles of the
  batch, whose positives are the other tiles of the same source image (the official
  ``SupCluLoss``);
* location (:func:`location_loss`): each tile's original position, a k-way classification.

The evaluated encoder is the backbone with its global pooling, as always.

Official code: github.com/dvlab-research/JigsawClustering (``JigClu/jigclu.py``, ``losses.py``,
``loader.py``, ``resnet_jigclu.py``, ``main.py``; README command). Deviations, each for a reason:
    * Per-tile augmentation. Official ``JigCluTransform``: cut the 4 regions of the raw image, then
      augment each (RandomResizedCrop 112 px of the region, colour, blur, flip). Here the views of
      the augmentation recipe are augmented whole images (sslbench's batched augmentation), and
      tile j is region j of view j: each tile still gets its own crop, colour and flip draws, so
      the tiles of an image cannot be matched by shared colour statistics. ``jigsawcluster-*``
      augmentation recipes (registered below) give the k views; their side makes the regions the
      official tile size (140 px views -> 112 px tiles -> 224 px montages). Region boundaries are
      rounded to whole pixels.
    * Montage assignment. Official: one uniformly random permutation of all ``4n`` tiles of the
      global batch, so a montage may hold two tiles of one image (rarely, at n = 256). Here a
      montage always holds k different images (:func:`jigsaw_assignment`); each tile's position in
      the montage is still independent of its original position.
    * Cells. Official: the ResNet-50 map (7 x 7 at 224 px) is bilinearly resized to 8 x 8, then
      average-pooled to 2 x 2. Here a map whose side divides by m is pooled as it is (exact cells,
      no blending across tile borders); only other sides are resized, to the next multiple of m.
    * Data parallelism: each process builds montages of its own images and contrasts its own
      tiles (official: all GPUs' images are gathered and shuffled together and the loss runs on
      the gathered features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.augment import AugmentRecipe, get_augment_recipe, register_augment_recipe
from sslbench.benchmark.backbones import feature_map
from sslbench.methods.base import Method, StepContext, StepOutput
from sslbench.methods.losses import fp32, fp32_matmul
from sslbench.methods.registry import register_method

_OFFICIAL = "dvlab-research/JigsawClustering"


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def jigsaw_cluster_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float,
                        base_temperature: float = 0.07, *, check_positives: bool = True) -> torch.Tensor:
    """Jigsaw Clustering's clustering loss: supervised contrastive over the tiles (the paper's
    clustering branch; the official ``JigClu/losses.py::SupCluLoss``, Khosla et al. 2020's
    ``SupConLoss`` with one view per sample, ``contrast_mode="all"``).

    For N tiles with L2-normalised embeddings z and source-image labels y, every tile i is an
    anchor, ``P(i) = {p != i : y_p = y_i}`` its positives and ``A(i) = {a != i}``::

        L = -(tau / tau_base) * 1/N sum_i 1/|P(i)| sum_{p in P(i)}
                log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) )

    The factor ``tau / tau_base`` is the official code's (``base_temperature`` 0.07 while the
    README trains with tau 0.3, so the loss is scaled by 0.3 / 0.07). The logits are float32
    (autocast off).

    Args:
        z: L2-normalised tile embeddings.
        labels: each tile's source image; every tile needs at least one positive.
        temperature: tau.
        base_temperature: tau_base of the scale factor.
        check_positives: raise if some tile has no positive (reads the device: the method, whose
            montages give every tile m * m - 1 positives by construction, skips it).

    Shape:
        z: (N, D); labels: (N,) int; returns ().

    Raises:
        ValueError: some tile has no other tile of its image.
    """
    n = z.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    num_pos = positives.sum(dim=1)
    if check_positives and bool((num_pos == 0).any()):
        raise ValueError("every tile needs another tile of the same image (a positive)")
    (z,) = fp32(z)
    logits = fp32_matmul(z, z.T) / temperature
    log_norm = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_norm
    mean_log_prob_pos = (log_prob * positives).sum(dim=1) / num_pos
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def location_loss(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Jigsaw Clustering's location loss (the paper's location branch): cross-entropy of each tile's original
    position among the m x m, from a linear head on the tile's pooled feature (official
    ``fc_loc`` + ``nn.CrossEntropyLoss``): ``L = -1/N sum_i log softmax(logits_i)[pos_i]``.

    Shape:
        logits: (N, m * m); positions: (N,) int in [0, m * m); returns ().
    """
    return F.cross_entropy(logits, positions)


# ---------------------------------------------------------------------------------------------
# Tiles, montages and cells (the bookkeeping)
# ---------------------------------------------------------------------------------------------


def tile_regions(grid: int, cross_ratio: float, side: int) -> tuple[int, list[int]]:
    """The tile side and the tile starts (rows and columns alike) in a ``side`` px view.

    Each region spans ``1/m + cross_ratio`` of the side (rounded to whole pixels), the m regions of
    a row evenly spaced from the first pixel to the last. For m = 2 this is the official
    ``JigCluTransform``: ``[0, side/2 + c side)`` and ``[side/2 - c side, side)``.

    Returns:
        ``(t, starts)``: the tile side in px and the m start offsets in px.
    """
    t = round(min(1.0, 1.0 / grid + cross_ratio) * side)
    if t < 1:
        raise ValueError(f"a {side} px view gives empty tiles")
    return t, [round(r * (side - t) / (grid - 1)) for r in range(grid)]


def cut_tiles(views: list[torch.Tensor], grid: int, cross_ratio: float) -> torch.Tensor:
    """Tile j (row-major position) of every image: region j of view j (:func:`tile_regions`).

    Shape:
        views: m * m tensors (B, C, S, S); returns (B, m * m, C, t, t).
    """
    side = views[0].shape[-1]
    t, starts = tile_regions(grid, cross_ratio, side)
    tiles = []
    for j, view in enumerate(views):
        top, left = starts[j // grid], starts[j % grid]
        tiles.append(view[:, :, top:top + t, left:left + t])
    return torch.stack(tiles, dim=1)


def jigsaw_assignment(n: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tile fills each slot of each montage: k tiles of k different images per montage.

    With a random permutation pi of the n images and the stride ``s = n // k``, slot p of montage i
    holds an image ``pi[(i + p s) mod n]`` (distinct over p since ``p s < n``; for k | n the
    images fall into groups of k whose tiles are spread over k montages). Each image has its own
    random bijection from slots to its original tile positions, so every tile is used exactly
    once and a tile's slot says nothing about its position.

    Args:
        n: images (and montages) in the batch, ``>= k``.
        k: tiles per image (m * m).
        generator: the source of the draws (its device is the outputs').

    Shape:
        returns ``(source, position)``, each (n, k) int64: slot p of montage i holds tile
        ``position[i, p]`` of image ``source[i, p]``.
    """
    if n < k:
        raise ValueError(f"a batch of {n} images cannot fill montages of {k} different images")
    device = generator.device
    perm = torch.randperm(n, generator=generator, device=device)
    stride = n // k
    rows = (torch.arange(n, device=device)[:, None] + stride * torch.arange(k, device=device)) % n
    source = perm[rows]
    slot_to_position = torch.rand(n, k, generator=generator, device=device).argsort(dim=1)  # per image
    slots = torch.arange(k, device=device).expand(n, k)
    return source, slot_to_position[source, slots]


def montage(tiles: torch.Tensor, source: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Stitches montages: slot p (row-major) of montage i is tile ``position[i, p]`` of image
    ``source[i, p]``.

    Shape:
        tiles: (B, k, C, t, t); source, position: (n, k); returns (n, C, m t, m t), m = sqrt(k).
    """
    _, k, c, t, _ = tiles.shape
    m = math.isqrt(k)
    chosen = tiles[source, position]  # (n, k, C, t, t)
    n = chosen.shape[0]
    return chosen.view(n, m, m, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(n, c, m * t, m * t)


def cell_features(features: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pools each of the m x m cells of a montage's feature map: one feature per slot.

    A map whose sides are not multiples of m is first resized bilinearly to the next multiples
    (the official code resizes ResNet-50's 7 x 7 to 8 x 8).

    Shape:
        features: (n, D, h, w); returns (n * m * m, D), row ``i * m * m + p`` for slot p of
        montage i (the order of ``source.flatten()``).
    """
    n, d, h, w = features.shape
    if h % grid or w % grid:
        h, w = grid * math.ceil(h / grid), grid * math.ceil(w / grid)
        features = F.interpolate(features, size=(h, w), mode="bilinear", align_corners=False)
    cells = features.reshape(n, d, grid, h // grid, grid, w // grid).mean(dim=(3, 5))  # (n, D, m, m)
    return cells.permute(0, 2, 3, 1).reshape(n * grid * grid, d)


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JigsawClusterConfig:
    """Jigsaw Clustering hyperparameters (defaults: the official README's ImageNet command and
    ``main.py`` / ``JigClu/*.py`` defaults).

    Attributes:
        grid: m, tiles per side (2: the paper's and the code's, which hard-codes 4 tiles).
        cross_ratio: regions extend this fraction of the side past the middle (0.3,
            ``--cross-ratio 0.3``).
        temperature: tau of the clustering loss (0.3, README ``--loss-t 0.3``; main.py's default
            is 0.07).
        base_temperature: the clustering loss is scaled by ``tau / base_temperature`` (0.07,
            ``SupCluLoss``'s default, which ``JigClu`` leaves unchanged).
        proj_hidden_dim: hidden width of the clustering projector Linear -> ReLU -> Linear; 0 is
            the backbone's feature dimension (the official ``dim_mlp``, 2048 for ResNet-50).
        proj_dim: the tile embedding (128, ``--proj-dim``).
        cluster_weight: weight of the clustering loss (1.0, ``--loss_clu``).
        location_weight: weight of the location loss (1.0, ``--loss_loc``).
    """

    grid: int = 2
    cross_ratio: float = 0.3
    temperature: float = 0.3
    base_temperature: float = 0.07
    proj_hidden_dim: int = 0
    proj_dim: int = 128
    cluster_weight: float = 1.0
    location_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ValueError(f"grid must be >= 2 (tiles per side), got {self.grid}")
        if not 0 <= self.cross_ratio <= 1 - 1 / self.grid:
            raise ValueError(f"cross_ratio must be in [0, 1 - 1/grid], got {self.cross_ratio}")
        if self.temperature <= 0 or self.base_temperature <= 0:
            raise ValueError("temperature and base_temperature must be > 0")
        if self.proj_hidden_dim < 0 or self.proj_dim < 1:
            raise ValueError("proj_hidden_dim must be >= 0 and proj_dim >= 1")
        if min(self.cluster_weight, self.location_weight) < 0:
            raise ValueError("loss weights must be >= 0")


@register_method(
    "jigsawcluster", config=JigsawClusterConfig,
    family="clustering + pretext, jigsaw montages (intra- and inter-image), one branch",
    paper="Chen et al., Jigsaw Clustering for Unsupervised Visual Representation Learning, "
          "CVPR 2021, https://arxiv.org/abs/2104.00323",
    default_recipe="jigsawcluster-quick",
)
class JigsawCluster(Method):
    """Tiles of m x m views -> montages -> the encoder's feature map -> one pooled feature per
    tile -> clustering projector (L2-normalised) and location head.

    The montage assignment is drawn from ``ctx.generator`` (seeded by the run's seed and the step),
    so a resumed run draws the same montages.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: JigsawClusterConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        self.num_views = cfg.grid ** 2  # one view per tile position
        hidden = cfg.proj_hidden_dim or feature_dim
        self.projector = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, cfg.proj_dim))
        self.location_head = nn.Linear(feature_dim, self.num_views)

    def tile_features(self, views: list[torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
        """Pooled encoder features of every tile and the tile's source image and position.

        Shape:
            views: k tensors (B, C, S, S); returns (B k, D) features and (B k,) source / position.
        """
        k = self.num_views
        if len(views) < k or any(v.shape != views[0].shape for v in views[:k]):
            raise ValueError(f"Jigsaw Clustering needs {k} views of one size (one per tile), got "
                             f"{[tuple(v.shape) for v in views]}")
        tiles = cut_tiles(views[:k], self.cfg.grid, self.cfg.cross_ratio)
        source, position = jigsaw_assignment(tiles.shape[0], k, ctx.generator(views[0].device))
        fmap = feature_map(self.encoder, montage(tiles, source, position), what="Jigsaw Clustering")
        return cell_features(fmap, self.cfg.grid), source.flatten(), position.flatten()

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        f, source, position = self.tile_features(views, ctx)
        z = F.normalize(self.projector(f).float(), dim=1)  # normalised in float32 (the logits too)
        # Every image gives its m * m >= 4 tiles to the batch (jigsaw_assignment): no check needed.
        loss_clu = jigsaw_cluster_loss(z, source, self.cfg.temperature, self.cfg.base_temperature,
                                       check_positives=False)
        logits = self.location_head(f)
        loss_loc = location_loss(logits, position)
        loss = self.cfg.cluster_weight * loss_clu + self.cfg.location_weight * loss_loc
        accuracy = (logits.detach().argmax(dim=1) == position).float().mean()
        logs = {"loss_cluster": loss_clu.detach(), "loss_location": loss_loc.detach(),
                "location_accuracy": accuracy}
        return StepOutput(loss=loss, logs=logs)


# ---------------------------------------------------------------------------------------------
# Augmentation recipes: k = 4 independently augmented views, one per tile position
# ---------------------------------------------------------------------------------------------
# Registered here, with the method, so that every process that can build the method (sweep cells
# rebuild configs without the recipe modules) also resolves its augmentation.

register_augment_recipe(AugmentRecipe(
    "jigsawcluster-fmnist", (replace(get_augment_recipe("fmnist").views[0], size=20),) * 4,
    "Jigsaw Clustering on Fashion-MNIST (sslbench): the 'fmnist' view (crop 0.2-1, flip, brightness "
    "and contrast 0.4 p 0.8) at 20 px, four times, one view per tile (a 16 px region with "
    "cross_ratio 0.3 -> 32 px montages). The official per-tile pipeline is MoCo v2's aug+; colour "
    "here as 'fmnist' (grayscale 28 px images, no blur).",
))
register_augment_recipe(AugmentRecipe(
    "jigsawcluster-imagenet", (replace(get_augment_recipe("mocov2").views[0], size=140),) * 4,
    f"{_OFFICIAL} main.py: per tile RandomResizedCrop(112, scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, "
    "0.1) p 0.8, grayscale 0.2, Gaussian blur sigma 0.1-2 p 0.5, flip (= 'mocov2'). Here four "
    "whole-image views at 140 px whose 0.8 region (cross_ratio 0.3) is the official 112 px tile; "
    "deviations: the crop is drawn on the whole image before the region cut (official: inside the "
    "region), blur kernel 10 % of the side (official: PIL radius sigma).",
))
