"""Jigsaw Clustering: the clustering (supervised-contrastive) and location losses against naive
float64 loops written from the official code, and the tile / montage / cell bookkeeping: every tile
is used once, montages hold different images, and every cell's feature maps back to its tile's
source image and original position."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.augment import get_augment_recipe
from sslbench.methods import StepContext
from sslbench.methods.jigsawcluster import (
    JigsawCluster,
    JigsawClusterConfig,
    cell_features,
    cut_tiles,
    jigsaw_assignment,
    jigsaw_cluster_loss,
    location_loss,
    montage,
    tile_regions,
)

# ------------------------------------------------------------------------------------------------
# Naive references (Python loops in float64)


def naive_supclu(z: torch.Tensor, labels: list[int], tau: float, base_tau: float) -> float:
    """SupCluLoss: -(tau / base) mean_i mean_{p in P(i)} log(e^(s_ip / tau) / sum_{a != i} e^(s_ia / tau))."""
    zz = z.double().tolist()
    n = len(zz)
    total = 0.0
    for i in range(n):
        sims = [sum(a * b for a, b in zip(zz[i], zz[j])) / tau for j in range(n)]
        log_norm = math.log(sum(math.exp(sims[a]) for a in range(n) if a != i))
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        total += sum(sims[p] - log_norm for p in pos) / len(pos)
    return -(tau / base_tau) * total / n


def naive_cross_entropy(logits: torch.Tensor, target: list[int]) -> float:
    rows = logits.double().tolist()
    return -sum(r[t] - math.log(sum(math.exp(v) for v in r)) for r, t in zip(rows, target)) / len(rows)


# ------------------------------------------------------------------------------------------------
# Losses


@pytest.mark.parametrize("tau, base", [(0.3, 0.07), (0.07, 0.07), (1.0, 0.5)])
def test_cluster_loss_matches_the_naive_loop(tau, base):
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 0])  # uneven groups: 4, 3, 3, 2 tiles
    got = jigsaw_cluster_loss(z, labels, tau, base)
    assert got.item() == pytest.approx(naive_supclu(z, labels.tolist(), tau, base), rel=1e-10)
    # float32 gives the same value; the gradient is right (float64 gradcheck).
    assert jigsaw_cluster_loss(z.float(), labels, tau, base).item() == pytest.approx(got.item(), rel=1e-5)
    zr = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: jigsaw_cluster_loss(x, labels, tau, base), (zr,))


def test_cluster_loss_scale_and_closed_form():
    """tau / base scales the loss linearly; orthogonal embeddings give log(N - 1) per anchor."""
    z = torch.eye(8, dtype=torch.float64)
    labels = torch.arange(8) // 2
    assert jigsaw_cluster_loss(z, labels, 0.3, 0.3).item() == pytest.approx(math.log(7))
    assert jigsaw_cluster_loss(z, labels, 0.3, 0.07).item() == pytest.approx(0.3 / 0.07 * math.log(7))


def test_cluster_loss_rejects_tiles_without_a_positive():
    with pytest.raises(ValueError, match="positive"):
        jigsaw_cluster_loss(torch.eye(3), torch.tensor([0, 0, 1]), 0.3)


def test_location_loss_matches_the_naive_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (10,), generator=g)
    assert location_loss(logits, target).item() == pytest.approx(naive_cross_entropy(logits, target.tolist()))


# ------------------------------------------------------------------------------------------------
# Tiles, montages, cells


def test_tile_regions_are_the_official_crops():
    """m = 2: JigCluTransform crops [0, s/2 + c s) and [s/2 - c s, s) (here rounded to pixels)."""
    for side, c in ((20, 0.3), (140, 0.3), (224, 0.3), (28, 0.0)):
        t, starts = tile_regions(2, c, side)
        assert (starts[0], starts[0] + t) == (0, round(side / 2 + c * side))
        assert (starts[1], starts[1] + t) == (round(side / 2 - c * side), side)
    assert tile_regions(2, 0.3, 140) == (112, [0, 28])  # the official 112 px tiles
    assert tile_regions(3, 0.1, 30) == (13, [0, 8, 17])  # evenly spaced, first and last at the edges


def test_cut_tiles_takes_region_j_of_view_j():
    views = [torch.arange(5 * 20 * 20, dtype=torch.float32).view(5, 1, 20, 20) + 1000 * j for j in range(4)]
    tiles = cut_tiles(views, 2, 0.3)
    assert tiles.shape == (5, 4, 1, 16, 16)
    for j, (top, left) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        assert torch.equal(tiles[:, j], views[j][:, :, top:top + 16, left:left + 16])


@pytest.mark.parametrize("n, k", [(8, 4), (7, 4), (4, 4), (18, 9)])
def test_assignment_uses_every_tile_once_and_mixes_images(n, k):
    source, position = jigsaw_assignment(n, k, torch.Generator().manual_seed(n))
    assert source.shape == position.shape == (n, k)
    pairs = sorted(zip(source.flatten().tolist(), position.flatten().tolist()))
    assert pairs == [(b, j) for b in range(n) for j in range(k)]  # every tile exactly once
    assert all(len(set(row)) == k for row in source.tolist())  # k different images per montage
    again = jigsaw_assignment(n, k, torch.Generator().manual_seed(n))
    assert all(torch.equal(a, b) for a, b in zip(again, (source, position)))  # seeded
    with pytest.raises(ValueError, match="cannot fill"):
        jigsaw_assignment(3, 4, torch.Generator())


def test_positions_are_shuffled_across_slots():
    """A tile's slot does not give away its original position (every position reaches every slot)."""
    source, position = jigsaw_assignment(64, 4, torch.Generator().manual_seed(0))
    for p in range(4):
        assert set(position[:, p].tolist()) == {0, 1, 2, 3}


def test_montage_and_cells_map_every_tile_back_to_its_source_and_position():
    n, k, m, t = 6, 4, 2, 3
    code = torch.arange(n * k, dtype=torch.float64).view(n, k)  # tile (b, j) is filled with b * k + j
    tiles = code.view(n, k, 1, 1, 1).expand(n, k, 2, t, t).clone()
    source, position = jigsaw_assignment(n, k, torch.Generator().manual_seed(3))
    x = montage(tiles, source, position)
    assert x.shape == (n, 2, m * t, m * t)
    for i in range(n):  # slot p = (row, col) of montage i holds tile position[i, p] of image source[i, p]
        for p in range(k):
            r, c = divmod(p, m)
            cell = x[i, :, r * t:(r + 1) * t, c * t:(c + 1) * t]
            assert torch.all(cell == source[i, p] * k + position[i, p])
    expected = (source * k + position).flatten().double()
    # The montage as its own feature map, and a coarser map (one value per cell): cells recover codes.
    assert torch.equal(cell_features(x, m)[:, 0], expected)
    assert torch.equal(cell_features(F.avg_pool2d(x, t), m)[:, 1], expected)


def test_cells_of_an_odd_map_follow_the_official_resize():
    """A 7 x 7 map: bilinear resize to 8 x 8, then 2 x 2 average pooling (resnet_jigclu.py)."""
    f = torch.randn(3, 5, 7, 7, generator=torch.Generator().manual_seed(0))
    official = F.adaptive_avg_pool2d(F.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False), 2)
    torch.testing.assert_close(cell_features(f, 2), official.permute(0, 2, 3, 1).reshape(12, 5))


def test_method_tiles_keep_their_source_and_position_end_to_end():
    """Through the method: views whose region j of view j is filled with the code b * 4 + j; an
    identity 'backbone' makes the feature map the montage itself, so each cell's pooled feature
    must equal the code of the source image and position the method reports."""
    encoder = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    method = JigsawCluster(encoder, 1, JigsawClusterConfig(proj_hidden_dim=4, proj_dim=4))
    n = 8
    codes = torch.arange(n, dtype=torch.float32) * 4
    views = [(codes + j).view(n, 1, 1, 1).expand(n, 1, 20, 20) for j in range(4)]
    f, source, position = method.tile_features(views, StepContext(step=5, seed=1))
    assert f.shape == (n * 4, 1)
    assert torch.equal(f[:, 0], (source * 4 + position).float())
    out = method(views, StepContext(step=5, seed=1))
    assert torch.isfinite(out.loss)
    assert set(out.logs) == {"loss_cluster", "loss_location", "location_accuracy"}


def test_method_needs_one_view_per_tile_and_validates_its_config():
    method = JigsawCluster(nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 1,
                           JigsawClusterConfig(proj_hidden_dim=4, proj_dim=4))
    assert method.num_views == 4 and len(get_augment_recipe("jigsawcluster-fmnist").views) == 4
    with pytest.raises(ValueError, match="4 views"):
        method([torch.zeros(4, 1, 20, 20)] * 2, StepContext())
    for bad in ({"grid": 1}, {"cross_ratio": 0.6}, {"temperature": 0.0}, {"location_weight": -1.0}):
        with pytest.raises(ValueError):
            JigsawClusterConfig(**bad)
