"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016): the view is cut into a 3 x 3 grid, one tile is
taken at a random position inside each cell (so neighbouring tiles do not touch: no edge
continuity to exploit), the tiles are shuffled by one of P fixed permutations, and the Context-Free
Network classifies which one: the backbone encodes every tile on its own (shared weights), the
tile features are concatenated and an MLP scores the P permutations.

The permutation set is chosen once, greedily, so that the permutations are far apart in Hamming
distance (:func:`hamming_permutation_set`); it is stored as a buffer of the method. The tile
geometry is in pixels of the view: cells of ``side // 3`` pixels (the grid centred in the view),
tiles of ``tile_size`` pixels. The evaluated encoder is the plain backbone, on whole images.

Not implemented: the paper's chromatic-aberration counter-measures for colour images (30 %
grayscale images, colour channels jittered by up to 2 px per tile); a colour run can get the
grayscale part from its augmentation recipe (e.g. ``simclr`` has grayscale p 0.2).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.distributed import rank
from sslbench.methods.base import Method, StepContext, StepOutput
from sslbench.methods.context import crop_patches
from sslbench.methods.heads import mlp
from sslbench.methods.registry import register_method

#: tiles per side of the puzzle grid (3 x 3 in the paper).
GRID = 3
PERMUTATION_CRITERIA = ("max-min", "mean")


@functools.lru_cache(maxsize=2)
def all_permutations(n: int) -> torch.Tensor:
    """Every permutation of ``range(n)`` in lexicographic order (the order of
    ``itertools.permutations``), built block by block: the permutations starting with v are v
    followed by the permutations of the other items.

    Shape:
        return: (n!, n) uint8 (do not modify: the tensor is cached).
    """
    perms = torch.zeros((1, 0), dtype=torch.uint8)
    for m in range(1, n + 1):  # permutations of range(m) from those of range(m - 1)
        blocks = []
        for first in range(m):
            rest = torch.tensor([v for v in range(m) if v != first], dtype=torch.uint8)
            blocks.append(torch.cat([torch.full((len(perms), 1), first, dtype=torch.uint8),
                                     rest[perms.long()]], dim=1))
        perms = torch.cat(blocks)
    return perms


def hamming_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distance between permutations: the number of positions where they differ.

    Shape:
        a: (A, n); b: (M, n); return: (A, M) int64.
    """
    return (a[:, None, :] != b[None, :, :]).sum(dim=2)


def permutation_ball_size(n: int, radius: int) -> int:
    """Number of permutations of n items within Hamming distance ``radius`` of a given one:
    ``sum_{k <= radius} C(n, k) D_k`` with ``D_k`` the derangements of k items."""
    derangements = [1, 0]
    for k in range(2, n + 1):
        derangements.append((k - 1) * (derangements[-1] + derangements[-2]))
    return sum(math.comb(n, k) * derangements[k] for k in range(min(radius, n) + 1))


def guaranteed_min_distance(num_permutations: int, n: int) -> int:
    """The minimal pairwise Hamming distance that the greedy max-min choice of ``num_permutations``
    permutations of n items is guaranteed to reach (a Gilbert-Varshamov argument): the largest d
    with ``(num_permutations - 1) * ball(d - 1) < n!``. While the balls of radius d - 1 around the
    permutations chosen so far leave a permutation uncovered, that permutation is at distance
    >= d from all of them, and the greedy step takes one at least that far."""
    total = math.factorial(n)
    best = 1
    for d in range(1, n + 1):
        if (num_permutations - 1) * permutation_ball_size(n, d - 1) < total:
            best = d
    return best


def hamming_permutation_set(num_permutations: int, n: int = GRID * GRID, *, criterion: str = "max-min",
                            seed: int = 0) -> torch.Tensor:
    """P permutations of n tiles chosen greedily for large Hamming distances; see
    :func:`greedy_permutation_set` (this one caches the last few sets: building a model twice,
    as a resume does, computes the set once).

    Shape:
        return: (num_permutations, n) int64, a fresh tensor.
    """
    return _cached_set(num_permutations, n, criterion, seed).clone()


@functools.lru_cache(maxsize=4)
def _cached_set(num_permutations: int, n: int, criterion: str, seed: int) -> torch.Tensor:
    return greedy_permutation_set(num_permutations, n, criterion=criterion, seed=seed)


def greedy_permutation_set(num_permutations: int, n: int = GRID * GRID, *, criterion: str = "max-min",
                           seed: int = 0) -> torch.Tensor:
    """P permutations of n tiles chosen greedily for large Hamming distances (Noroozi & Favaro
    2016, §3.2 and Algorithm 1).

    The first permutation is drawn uniformly (a ``torch.Generator`` seeded with ``seed``); each
    next one is, among all n! permutations not chosen yet, the one that maximises

    * ``"max-min"``: its minimal Hamming distance to the chosen set, ties broken by the largest
      sum of distances to it (farthest-point selection: the set's minimal pairwise distance is at
      least :func:`guaranteed_min_distance`);
    * ``"mean"``: the sum (equivalently the mean) of its distances to the chosen set, as the
      paper's Algorithm 1 (``D_bar = 1^T D``, ``j = argmax D_bar``) and its reference code
      (bbrattoli/JigsawPuzzlePytorch ``select_permutations.py --selection max``); it maximises
      the average distance and promises no minimum beyond 1.

    Remaining ties go to the lexicographically first permutation, so the set is a function of
    ``(num_permutations, n, criterion, seed)``.

    Shape:
        return: (num_permutations, n) int64; row k is permutation k (class k).

    Raises:
        ValueError: an unknown criterion, or more permutations than n! .
    """
    if criterion not in PERMUTATION_CRITERIA:
        raise ValueError(f"criterion must be one of {PERMUTATION_CRITERIA}, got {criterion!r}")
    if not 1 <= num_permutations <= math.factorial(n):
        raise ValueError(f"need 1 <= num_permutations <= {n}! = {math.factorial(n)}, got {num_permutations}")
    candidates = all_permutations(n).T.contiguous()  # (n, n!): one row per position
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(0, candidates.shape[1], (1,), generator=generator))]

    def distances_to(j: int) -> torch.Tensor:  # (n!,) Hamming distances to candidate j
        dist = torch.zeros(candidates.shape[1], dtype=torch.uint8)
        for row in candidates:
            dist += row != row[j]
        return dist.int()

    min_dist = distances_to(chosen[0])
    sum_dist = min_dist.clone()
    scale = n * num_permutations + 1  # > any sum of distances: (min, sum) ranks lexicographically
    taken = -scale * (n + 1)  # pushes a chosen candidate below every other key
    for _ in range(num_permutations - 1):
        sum_dist[chosen[-1]] = taken
        key = min_dist * scale + sum_dist if criterion == "max-min" else sum_dist
        chosen.append(int(key.argmax()))  # the first maximum: the lexicographically first permutation
        dist = distances_to(chosen[-1])
        torch.minimum(min_dist, dist, out=min_dist)
        sum_dist += dist
    return candidates.T[chosen].long()


def min_pairwise_distance(perms: torch.Tensor) -> int:
    """The smallest Hamming distance between two different rows of ``perms`` (n if one row).

    Shape:
        perms: (P, n).
    """
    if len(perms) < 2:
        return perms.shape[1]
    d = hamming_distances(perms, perms)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


def cut_tiles(images: torch.Tensor, tile_size: int, generator: torch.Generator) -> torch.Tensor:
    """The 3 x 3 tiles of every image, each at a uniform random integer position inside its cell.

    The grid of cells of side ``c = side // 3`` is centred in the image; tile k (row-major,
    k = 3 r + col) of image b has its top-left corner at ``origin + (r c + dy, col c + dx)`` with
    ``dy, dx`` uniform in ``[0, c - tile_size]``.

    Shape:
        images: (B, C, S, S); return: (B, 9, C, tile_size, tile_size).

    Raises:
        ValueError: the cells are smaller than the tiles.
    """
    b, side = images.shape[0], images.shape[-1]
    cell = side // GRID
    if cell < tile_size:
        raise ValueError(f"jigsaw tiles of {tile_size} px do not fit in the {cell} px cells of "
                         f"{side} px views (3 x 3 grid)")
    origin = (side - GRID * cell) // 2
    start = origin + torch.arange(GRID, device=images.device) * cell
    offsets = torch.randint(0, cell - tile_size + 1, (2, b, GRID, GRID), generator=generator,
                            device=images.device)
    top = (start.view(1, GRID, 1) + offsets[0]).flatten(1)
    left = (start.view(1, 1, GRID) + offsets[1]).flatten(1)
    return crop_patches(images, top, left, tile_size)


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The puzzles: position i of puzzle b holds tile ``perms[labels[b], i]`` of image b.

    Undone by placing position i back at cell ``perms[labels[b], i]``.

    Shape:
        tiles: (B, n, ...); perms: (P, n) int64; labels: (B,) int64; return: like ``tiles``.
    """
    order = perms[labels]  # (B, n)
    index = order.view(*order.shape, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return tiles.gather(1, index)


def normalize_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """Each tile's channels standardised on their own (the paper's guard against low-level
    statistics shortcuts, §3.2; bbrattoli/JigsawPuzzlePytorch normalises each tile's channels by
    their mean and std, a std of 0 left as 1): ``(x - mean) / std`` over the tile's pixels.

    Shape:
        tiles: (..., C, h, w); return: the same.
    """
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (tiles - mean) / torch.where(std > 0, std, torch.ones_like(std))


def jigsaw_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Permutation classification (Noroozi & Favaro 2016, §3):
    ``L = -1/B sum_b log softmax(s_b)[y_b]``, with ``s_b`` the scores of puzzle b over the P
    permutations and ``y_b`` the index of the permutation that shuffled it.

    Shape:
        logits: (B, P); labels: (B,) int64; return: ().
    """
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class JigsawConfig:
    """Jigsaw hyperparameters (defaults: the paper's ImageNet setting, §3.2-3.3, as summarised in
    PAPERS.md §2.18 and read in bbrattoli/JigsawPuzzlePytorch).

    Attributes:
        num_permutations: P, the number of classes (1000 in the paper).
        permutation_criterion: how the greedy choice ranks candidates: ``"max-min"`` (maximal
            minimal Hamming distance to the chosen set: with seed 0, 100 permutations are >= 6
            apart and 1000 are >= 5 apart, guaranteed >= 5 and >= 4) or ``"mean"`` (maximal
            average distance, the paper's Algorithm 1: the same average, 8.08 for 100, but some
            pairs only 2 apart); see :func:`greedy_permutation_set`. A deviation from the
            paper's criterion, for the minimal distance the issue asks for.
        permutation_seed: seeds the set's first permutation (the paper draws it at random).
        tile_size: tile side in pixels, taken at a random position inside each cell (64 px tiles
            in 85 px cells of a 255 px image in the reference code: up to 21 px between tiles).
        input_size: tiles are resized (bilinear) to this side before the encoder; 0 keeps their
            own size (the reference code resizes its 64 px tiles to 75).
        normalize_tiles: standardise each tile's channels on their own (§3.2).
        tile_fc_dim: per-tile Linear -> BN -> ReLU width before the concatenation (the CFN's fc6,
            512 per tile); 0: the encoder's features are concatenated directly.
        hidden_dim: width of the hidden layer after the concatenation (the CFN's fc7, 4096).
    """

    num_permutations: int = 1000
    permutation_criterion: str = "max-min"
    permutation_seed: int = 0
    tile_size: int = 64
    input_size: int = 0
    normalize_tiles: bool = True
    tile_fc_dim: int = 512
    hidden_dim: int = 4096

    def __post_init__(self) -> None:
        if self.permutation_criterion not in PERMUTATION_CRITERIA:
            raise ValueError(f"permutation_criterion must be one of {PERMUTATION_CRITERIA}, "
                             f"got {self.permutation_criterion!r}")
        if not 2 <= self.num_permutations <= math.factorial(GRID * GRID):
            raise ValueError(f"num_permutations must be in [2, 9!], got {self.num_permutations}")
        if min(self.tile_size, self.hidden_dim) < 1 or min(self.input_size, self.tile_fc_dim,
                                                            self.permutation_seed) < 0:
            raise ValueError("tile_size and hidden_dim must be >= 1; input_size, tile_fc_dim and "
                             "permutation_seed >= 0")


@register_method(
    "jigsaw", config=JigsawConfig, family="pretext task, tile permutation classification",
    paper="Noroozi & Favaro, Unsupervised Learning of Visual Representations by Solving Jigsaw "
          "Puzzles, ECCV 2016, https://arxiv.org/abs/1603.09246",
    default_recipe="jigsaw-quick",
)
class Jigsaw(Method):
    """Context-Free Network: the shared encoder on each of the 9 tiles -> (per-tile fc) ->
    concatenation in puzzle order -> MLP -> P permutation scores.

    Tile positions and the permutation of each puzzle are drawn inside :meth:`training_step` from
    ``ctx.generator()`` (a resumed run draws the same; under data parallelism each rank draws
    from its own stream, so the draws depend on the number of processes). Batch norm replaces
    the CFN's dropout (dropout would draw from the global RNG, which a resumed run does not
    restore).
    """

    num_views = 1
    permutations: torch.Tensor  # (P, 9) int64 buffer

    def __init__(self, encoder: nn.Module, feature_dim: int, cfg: JigsawConfig) -> None:
        super().__init__(encoder, feature_dim)
        self.cfg = cfg
        n = GRID * GRID
        self.register_buffer("permutations", hamming_permutation_set(
            cfg.num_permutations, n, criterion=cfg.permutation_criterion, seed=cfg.permutation_seed))
        if cfg.tile_fc_dim:
            self.tile_fc: nn.Module = nn.Sequential(
                nn.Linear(feature_dim, cfg.tile_fc_dim, bias=False), nn.BatchNorm1d(cfg.tile_fc_dim),
                nn.ReLU(inplace=True))
        else:
            self.tile_fc = nn.Identity()
        self.classifier = mlp(n * (cfg.tile_fc_dim or feature_dim), cfg.hidden_dim, cfg.num_permutations)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        x = views[0]
        cfg, b = self.cfg, x.shape[0]
        g = ctx.generator(x.device, stream=rank())  # each data-parallel rank its own draws
        tiles = cut_tiles(x, cfg.tile_size, g)
        labels = torch.randint(0, cfg.num_permutations, (b,), generator=g, device=x.device)
        puzzles = shuffle_tiles(tiles, self.permutations, labels).flatten(0, 1)  # (B * 9, C, t, t)
        if cfg.normalize_tiles:
            puzzles = normalize_tiles(puzzles)
        if cfg.input_size and cfg.input_size != cfg.tile_size:
            puzzles = F.interpolate(puzzles, size=(cfg.input_size, cfg.input_size), mode="bilinear",
                                    align_corners=False)
        h = self.tile_fc(self.encoder(puzzles)).view(b, -1)  # tile features in puzzle order
        logits = self.classifier(h)
        loss = jigsaw_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(loss=loss, logs={"pretext_acc": accuracy})
