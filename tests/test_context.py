"""Context prediction: the labels match the patches' relative positions (on coordinate images),
the gap and jitter bounds, patches cut by index, colour dropping, the loss against a naive loop,
and a hand-built solver that reads the patches' positions scoring 100 % through the method."""

import math

import pytest
import torch
from torch import nn

from sslbench.methods.base import StepContext
from sslbench.methods.context import (
    NEIGHBOUR_OFFSETS,
    ContextConfig,
    ContextPrediction,
    crop_patches,
    drop_colour_channels,
    neighbour_cell,
    relative_position_loss,
    sample_patch_pairs,
)


def coordinate_images(b: int, side: int) -> torch.Tensor:
    """Channel 0 = row, channel 1 = column of every pixel."""
    r = torch.arange(side, dtype=torch.float64).view(side, 1).expand(side, side)
    return torch.stack([r, r.T]).expand(b, 2, side, side).clone()


def test_crop_patches_matches_slicing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 10, 10, generator=g)
    top, left = torch.randint(0, 7, (3, 4), generator=g), torch.randint(0, 7, (3, 4), generator=g)
    out = crop_patches(x, top, left, 4)
    assert out.shape == (3, 4, 2, 4, 4)
    for b in range(3):
        for k in range(4):
            t, s = int(top[b, k]), int(left[b, k])
            assert torch.equal(out[b, k], x[b, :, t:t + 4, s:s + 4])


def test_neighbour_cells_follow_the_offsets():
    cells = neighbour_cell(torch.arange(8)).tolist()
    assert cells == [0, 1, 2, 3, 5, 6, 7, 8]  # raster order around the centre (cell 4)
    assert [divmod(c, 3) for c in cells] == [(1 + dr, 1 + dc) for dr, dc in NEIGHBOUR_OFFSETS]


@pytest.mark.parametrize("side, p, gap, jitter", [(28, 6, 3, 1), (40, 8, 4, 2), (26, 6, 3, 1)])
def test_labels_match_patch_positions_with_gap_and_jitter(side, p, gap, jitter):
    """On coordinate images the neighbour of label l lies in direction NEIGHBOUR_OFFSETS[l] from
    the centre, one stride (p + gap) away up to the two patches' jitter, inside the image."""
    n = 400
    g = torch.Generator().manual_seed(1)
    top, left = sample_patch_pairs(n, side, p, gap, jitter, g)
    labels = torch.randint(0, 8, (n,), generator=g)
    cells = torch.stack([torch.full_like(labels, 4), neighbour_cell(labels)], dim=1)
    patches = crop_patches(coordinate_images(n, side), top.gather(1, cells), left.gather(1, cells), p)
    rows, cols = patches[:, :, 0, 0, 0], patches[:, :, 1, 0, 0]  # top-left pixel's coordinates
    assert rows.min() >= 0 and cols.min() >= 0 and (rows + p).max() <= side and (cols + p).max() <= side
    step = torch.stack([rows[:, 1] - rows[:, 0], cols[:, 1] - cols[:, 0]], dim=1)  # (n, 2)
    expected = torch.tensor(NEIGHBOUR_OFFSETS, dtype=step.dtype)[labels]
    stride = p + gap
    assert ((step - expected * stride).abs() <= 2 * jitter).all()
    # the direction alone identifies the label: jitter never flips or zeroes a step
    assert torch.equal(torch.sign(torch.round(step / stride)), expected)
    # the gap: along a step's axis the two patches are >= gap - 2 jitter apart
    apart = step.abs() - p
    assert (apart[expected != 0] >= gap - 2 * jitter).all()
    assert set(labels.tolist()) == set(range(8))
    assert len(set(rows[:, 0].tolist())) > 1 and len(set(step[:, 0].tolist())) > 3  # placement, jitter


def test_layout_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="need 27 px"):
        sample_patch_pairs(2, 26, 7, 3, 0, torch.Generator())


def test_colour_dropping_keeps_one_channel_and_adds_faint_noise():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 3, 6, 6, generator=g, dtype=torch.float64) * 2
    out = drop_colour_channels(x, torch.Generator().manual_seed(3))
    kept = (out == x).flatten(2).all(-1)  # (N, 3): which channels are untouched
    assert (kept.sum(1) == 1).all() and set(kept.int().argmax(1).tolist()) == {0, 1, 2}
    ratio = out[~kept].flatten(1).std(1) / x[kept].flatten(1).std(1, unbiased=False).repeat_interleave(2)
    assert 0.005 < float(ratio.mean()) < 0.015  # noise std = 1/100 of the kept channel's
    gray = torch.randn(4, 1, 6, 6, generator=g)
    assert torch.equal(drop_colour_channels(gray, torch.Generator()), gray)


def test_relative_position_loss_matches_the_naive_loop():
    g = torch.Generator().manual_seed(4)
    logits, labels = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.tensor([0, 7, 3, 3, 1])
    naive = -sum(row[y] - math.log(sum(math.exp(v) for v in row))
                 for row, y in zip(logits.tolist(), labels.tolist())) / 5
    assert relative_position_loss(logits, labels).item() == pytest.approx(naive, rel=1e-12)


class _TopLeft(nn.Module):
    """'Encoder' returning the (row, column) of a coordinate patch's top-left pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0] * self.dummy


class _Solver(nn.Module):
    """Scores 1 for the offset pointing from the centre patch to the neighbour."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        step = torch.sign(torch.round((h[:, 2:] - h[:, :2]) / 9))  # stride = 6 + 3
        return (step[:, None, :] == torch.tensor(NEIGHBOUR_OFFSETS, dtype=h.dtype)).all(-1).double()


@pytest.mark.parametrize("all_pairs", [False, True])
def test_the_methods_labels_are_the_neighbours_positions(all_pairs):
    cfg = ContextConfig(patch_size=6, gap=3, jitter=1, all_pairs=all_pairs, hidden_dim=4)
    method = ContextPrediction(_TopLeft(), 2, cfg).double()
    method.classifier = _Solver()
    out = method([coordinate_images(16, 28)], StepContext(step=2, seed=5))
    assert float(out.logs["pretext_acc"]) == 1.0
    again = method([coordinate_images(16, 28)], StepContext(step=2, seed=5))
    assert again.loss.item() == out.loss.item()  # every draw comes from the step's generator
