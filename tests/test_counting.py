"""Learning to count: tiles and downsampling, the loss against a naive float64 loop of the paper's
eq. 4, an exact counter (both terms zero, except the margin term for a too-similar image), and the
method's wiring (one forward of D x and the tiles, y = the next image of the batch)."""

import pytest
import torch
import torch.nn.functional as F

from sslbench.benchmark.engine import build_method
from sslbench.benchmark.recipes import resolve
from sslbench.methods import StepContext
from sslbench.methods.counting import DOWNSAMPLE_MODES, counting_loss, downsample, tiles


def naive_loss(down, tile_counts, other, margin):
    """Noroozi et al. 2017 eq. 4 per image, averaged: |phi(Dx) - sum_j phi(T_j x)|^2 +
    max(0, M - |phi(Dy) - sum_j phi(T_j x)|^2)."""
    total = 0.0
    for b in range(len(down)):
        s = [sum(tile_counts[j][b][i] for j in range(4)) for i in range(len(down[b]))]
        eq = sum((d - t) ** 2 for d, t in zip(down[b], s))
        con = max(0.0, margin - sum((o - t) ** 2 for o, t in zip(other[b], s)))
        total += eq + con
    return total / len(down)


def test_tiles_reassemble_the_image_and_downsampling_halves_it():
    x = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    t = tiles(x)
    assert t.shape == (4, 2, 3, 4, 5)
    top, bottom = torch.cat((t[0], t[1]), dim=-1), torch.cat((t[2], t[3]), dim=-1)
    assert torch.equal(torch.cat((top, bottom), dim=-2), x)
    for mode in DOWNSAMPLE_MODES:
        assert downsample(x, mode).shape == (2, 3, 4, 5)
    torch.testing.assert_close(downsample(x, "area"), F.avg_pool2d(x, 2))  # area: the 2 x 2 mean
    assert tiles(torch.rand(1, 1, 9, 9)).shape == (4, 1, 1, 4, 4)  # an odd last row/column is dropped
    with pytest.raises(ValueError, match="lanczos"):
        downsample(x, "lanczos")


def test_loss_matches_the_naive_formula():
    g = torch.Generator().manual_seed(0)
    down, other = torch.rand(5, 7, generator=g, dtype=torch.float64), torch.rand(5, 7, generator=g, dtype=torch.float64)
    tile_counts = torch.rand(4, 5, 7, generator=g, dtype=torch.float64) / 4
    for margin in (0.5, 10.0):
        loss, eq, con = counting_loss(down, tile_counts, other, margin)
        assert loss.item() == pytest.approx(naive_loss(down.tolist(), tile_counts.tolist(), other.tolist(), margin))
        assert loss.item() == pytest.approx(eq.item() + con.item())


def _count(images):
    """An exact counter: phi = the sum of the pixels of each channel (non-negative images)."""
    return images.sum(dim=(-2, -1))


def test_an_exact_counter_makes_both_terms_zero_except_for_a_too_similar_image():
    """phi = pixel sums and D = 2 x 2 sum pooling: phi(D x) = sum_j phi(T_j x) exactly, so the
    counting term vanishes; the margin term vanishes for an image y whose counts differ from x's by
    at least sqrt(M), and is M - d^2 for a closer one."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, 8, generator=g, dtype=torch.float64)
    d = F.avg_pool2d(x, 2) * 4  # 2 x 2 sum pooling
    phi_down, phi_tiles = _count(d), _count(tiles(x))
    far = x * 2  # counts twice as large: |d|^2 >> M
    loss, eq, con = counting_loss(phi_down, phi_tiles, _count(F.avg_pool2d(far, 2) * 4), margin=10.0)
    assert eq.item() == pytest.approx(0.0, abs=1e-20) and con.item() == 0.0 and loss.item() == pytest.approx(0.0)
    near = x + 0.01  # counts larger by 0.64 per channel: |d|^2 = 2 x 0.64^2 < M
    loss, eq, con = counting_loss(phi_down, phi_tiles, _count(F.avg_pool2d(near, 2) * 4), margin=10.0)
    assert eq.item() == pytest.approx(0.0, abs=1e-20)
    assert con.item() == pytest.approx(10.0 - 2 * 0.64**2) and loss.item() == pytest.approx(con.item())
    # The trivial counter phi = 0 satisfies the counting term but pays the whole margin.
    zero = torch.zeros(3, 2, dtype=torch.float64)
    assert counting_loss(zero, torch.zeros(4, 3, 2, dtype=torch.float64), zero, 10.0)[0].item() == 10.0


def test_method_pairs_each_image_with_the_next_and_counts_with_relu():
    cfg = resolve("counting-quick", ["train.device=cpu", "method.downsample_modes=[area]",
                                     "method.num_counts=6", "method.head_hidden_dim=8"])
    method = build_method(cfg, 1, 16)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = StepContext(step=0, total_steps=1, steps_per_epoch=1, seed=0)
    method.eval()  # batch norm on running statistics: the counts of an image do not depend on its batch
    out = method([x], ctx)
    phi_down, phi_tiles = method.counts(F.avg_pool2d(x, 2)), method.counts(tiles(x).flatten(0, 1)).view(4, 4, -1)
    assert (phi_down >= 0).all()
    expected, eq, con = counting_loss(phi_down, phi_tiles, phi_down.roll(-1, dims=0), 10.0)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logs["count_contrast"], con)
