"""Jigsaw: the greedy permutation set against a naive Python loop of the paper's Algorithm 1 (and
its max-min variant), the promised minimal Hamming distance, the tiles' positions and gaps, the
shuffle and its inverse, per-tile normalisation, the loss, and a hand-built perfect solver that
the method's labels must agree with."""

import itertools
import math

import pytest
import torch
from torch import nn

from sslbench.methods.base import StepContext
from sslbench.methods.jigsaw import (
    Jigsaw,
    JigsawConfig,
    all_permutations,
    cut_tiles,
    greedy_permutation_set,
    guaranteed_min_distance,
    hamming_permutation_set,
    jigsaw_loss,
    min_pairwise_distance,
    normalize_tiles,
    permutation_ball_size,
    shuffle_tiles,
)

# ------------------------------------------------------------------------------------------------
# The permutation set


def naive_greedy(p: int, n: int, criterion: str, first: int) -> list[tuple[int, ...]]:
    """Algorithm 1 (Noroozi & Favaro 2016) with Python lists: start from permutation ``first``
    (lexicographic index), then repeatedly add the remaining permutation with the largest summed
    Hamming distance to the chosen ones ('mean'), or the largest (minimal, summed) distance
    ('max-min'); ties to the lexicographically first."""
    perms = list(itertools.permutations(range(n)))
    chosen = [perms[first]]
    remaining = [q for q in perms if q != perms[first]]
    for _ in range(p - 1):
        def score(q):
            ds = [sum(a != b for a, b in zip(q, c)) for c in chosen]
            return (min(ds), sum(ds)) if criterion == "max-min" else sum(ds)
        best = max(remaining, key=score)  # max() keeps the first of equal scores
        chosen.append(best)
        remaining.remove(best)
    return chosen


@pytest.mark.parametrize("criterion", ["max-min", "mean"])
@pytest.mark.parametrize("seed", [0, 3])
def test_greedy_set_matches_the_naive_algorithm(criterion, seed):
    got = greedy_permutation_set(12, 5, criterion=criterion, seed=seed)
    first = int(torch.randint(0, 120, (1,), generator=torch.Generator().manual_seed(seed)))
    assert [tuple(r) for r in got.tolist()] == naive_greedy(12, 5, criterion, first)


def test_all_permutations_are_lexicographic():
    assert all_permutations(5).tolist() == [list(p) for p in itertools.permutations(range(5))]
    nine = all_permutations(9)
    assert nine.shape == (math.factorial(9), 9) and nine[0].tolist() == list(range(9))
    assert nine[-1].tolist() == list(range(8, -1, -1)) and nine[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 7]


def test_ball_size_and_guarantee_by_enumeration():
    perms = list(itertools.permutations(range(5)))
    for r in range(6):
        within = sum(sum(a != b for a, b in zip(q, perms[0])) <= r for q in perms)
        assert permutation_ball_size(5, r) == within
    # Largest d with (P - 1) * ball(d - 1) < n!: 9! = 362880, ball(4) = 1339, ball(3) = 205.
    assert permutation_ball_size(9, 3) == 205 and permutation_ball_size(9, 4) == 1339
    assert guaranteed_min_distance(100, 9) == 5 and guaranteed_min_distance(1000, 9) == 4


def test_quick_permutation_set_has_the_promised_minimal_hamming_distance():
    """The 100 permutations of jigsaw-quick: distinct, at least the guaranteed distance apart
    (5), and in fact 6 apart, as JigsawConfig documents; the paper's average criterion only
    keeps them 2 apart."""
    perms = hamming_permutation_set(100)
    assert perms.shape == (100, 9) and sorted(perms[0].tolist()) == list(range(9))
    assert len({tuple(p) for p in perms.tolist()}) == 100
    d = (perms[:, None] != perms[None]).sum(-1)
    off_diagonal = d[~torch.eye(100, dtype=torch.bool)]
    assert int(off_diagonal.min()) == min_pairwise_distance(perms) == 6 >= guaranteed_min_distance(100, 9)
    assert min_pairwise_distance(greedy_permutation_set(9)) == 9  # 9 pairwise derangements exist
    assert torch.equal(hamming_permutation_set(100), perms)  # deterministic (and cached)


# ------------------------------------------------------------------------------------------------
# Tiles


def coordinate_images(b: int, side: int) -> torch.Tensor:
    """Channel 0 = row, channel 1 = column of every pixel."""
    r = torch.arange(side, dtype=torch.float64).view(side, 1).expand(side, side)
    return torch.stack([r, r.T]).expand(b, 2, side, side).clone()


def test_tiles_sit_inside_their_cells_at_random_places():
    x = coordinate_images(64, 28)  # cells of 9 px, the grid at rows/cols 0..26
    tiles = cut_tiles(x, 7, torch.Generator().manual_seed(0))
    assert tiles.shape == (64, 9, 2, 7, 7)
    top, left = tiles[:, :, 0, 0, 0].long(), tiles[:, :, 1, 0, 0].long()
    for k in range(9):
        r, c = divmod(k, 3)
        assert ((top[:, k] >= 9 * r) & (top[:, k] <= 9 * r + 2)).all()
        assert ((left[:, k] >= 9 * c) & (left[:, k] <= 9 * c + 2)).all()
    # every tile is a contiguous block cut by index
    steps = torch.arange(7, dtype=torch.float64)
    assert torch.equal(tiles[:, :, 0], (top[..., None, None] + steps.view(7, 1)).expand(64, 9, 7, 7))
    assert torch.equal(tiles[:, :, 1], (left[..., None, None] + steps.view(1, 7)).expand(64, 9, 7, 7))
    assert all(len(set(top[:, k].tolist())) == 3 for k in range(9))  # every offset 0..2 occurs
    with pytest.raises(ValueError, match="do not fit"):
        cut_tiles(x, 10, torch.Generator())


def test_shuffle_puts_the_permutations_tiles_in_place_and_is_undone_by_it():
    perms = hamming_permutation_set(100)
    tiles = torch.arange(4 * 9, dtype=torch.float64).view(4, 9, 1, 1, 1).expand(4, 9, 1, 2, 2)
    labels = torch.tensor([0, 5, 99, 5])
    puzzles = shuffle_tiles(tiles, perms, labels)
    for b in range(4):
        for i in range(9):
            assert torch.equal(puzzles[b, i], tiles[b, perms[labels[b], i]])
        restored = torch.empty_like(puzzles[b])
        restored[perms[labels[b]]] = puzzles[b]  # position i goes back to cell perms[label, i]
        assert torch.equal(restored, tiles[b])


def test_each_tile_is_normalised_on_its_own():
    g = torch.Generator().manual_seed(1)
    tiles = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) * 3 + 2
    tiles[0, 1] = 7.0  # a flat channel: std 0 is left as 1
    out = normalize_tiles(tiles)
    mean, std = out.mean(dim=(-2, -1)), out.std(dim=(-2, -1), unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-12)
    std[0, 1] = 1.0
    assert torch.allclose(std, torch.ones_like(std))
    assert torch.equal(out[0, 1], torch.zeros(4, 4, dtype=torch.float64))


def test_jigsaw_loss_matches_the_naive_loop():
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.tensor([0, 5, 2, 2])
    naive = -sum(row[y] - math.log(sum(math.exp(v) for v in row))
                 for row, y in zip(logits.tolist(), labels.tolist())) / 4
    assert jigsaw_loss(logits, labels).item() == pytest.approx(naive, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# The method end to end: a hand-built solver that reads each tile's position must score 100 %


class _TopLeft(nn.Module):
    """'Encoder' returning the (row, column) of a coordinate tile's top-left pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0] * self.dummy


class _Solver(nn.Module):
    """Scores 1 for the permutation that puts each puzzle position's tile in its true cell."""

    def __init__(self, perms: torch.Tensor, cell: int) -> None:
        super().__init__()
        self.perms, self.cell = perms, cell

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pos = h.view(h.shape[0], 9, 2).round().long() // self.cell
        order = pos[..., 0] * 3 + pos[..., 1]  # the true cell of the tile at each position
        return (order[:, None, :] == self.perms[None]).all(-1).double()


def test_the_methods_labels_are_the_permutations_of_the_tiles():
    cfg = JigsawConfig(num_permutations=10, tile_size=7, tile_fc_dim=0, hidden_dim=4, normalize_tiles=False)
    method = Jigsaw(_TopLeft(), 2, cfg).double()
    method.classifier = _Solver(method.permutations, 9)
    out = method([coordinate_images(32, 28)], StepContext(step=3, seed=1))
    assert float(out.logs["pretext_acc"]) == 1.0
    assert "permutations" in method.state_dict()
    again = method([coordinate_images(32, 28)], StepContext(step=3, seed=1))
    assert again.loss.item() == out.loss.item()  # the draws come from the step's generator


def test_config_validation():
    with pytest.raises(ValueError, match="criterion"):
        JigsawConfig(permutation_criterion="max")
    with pytest.raises(ValueError, match="num_permutations"):
        JigsawConfig(num_permutations=1)
