"""RotNet: the rotations against a naive pixel loop (a rotation by the label's angle undoes the
transform), the loss against a float64 loop written from the paper's eq. 1-2, and the step
putting every rotation of every image through one forward."""

import math

import pytest
import torch
from torch import nn

from sslbench.methods.base import StepContext
from sslbench.methods.rotation import RotationConfig, RotNet, rotate_batch, rotation_loss


def naive_rot90(img: list[list[float]], quarters: int) -> list[list[float]]:
    """Counter-clockwise quarter turns of a square image: out[i][j] = in[j][S - 1 - i]."""
    for _ in range(quarters % 4):
        s = len(img)
        img = [[img[j][s - 1 - i] for j in range(s)] for i in range(s)]
    return img


@pytest.mark.parametrize("angles", [(0, 90, 180, 270), (0, 180), (90, 270)])
def test_rotations_match_the_naive_loop_and_the_label_undoes_them(angles):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    rotated, labels = rotate_batch(x, angles)
    assert rotated.shape == (len(angles) * 3, 2, 5, 5)
    assert labels.tolist() == [k for k in range(len(angles)) for _ in range(3)]  # grouped by rotation
    for row, (img, label) in enumerate(zip(rotated, labels)):
        source = x[row % 3]
        quarters = angles[label] // 90
        for c in range(2):
            assert img[c].tolist() == naive_rot90(source[c].tolist(), quarters)
        # Rotating back by the label's angle gives the image exactly (no interpolation).
        assert torch.equal(torch.rot90(img, -quarters, dims=(-2, -1)), source)


def test_rotation_loss_matches_the_naive_mean_of_log_softmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(2)
    naive = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        naive -= row[y] - math.log(sum(math.exp(v) for v in row))
    assert rotation_loss(logits, labels).item() == pytest.approx(naive / 8, rel=1e-12)


class _Recorder(nn.Module):
    """An encoder that records its inputs and returns their mean pixel value per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.mean(dim=(2, 3)) * self.scale


def test_one_forward_sees_all_four_rotations_of_every_image():
    enc = _Recorder()
    method = RotNet(enc, 1, RotationConfig())
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = method([x], StepContext())
    assert len(enc.seen) == 1 and enc.seen[0].shape == (24, 1, 8, 8)
    expected, labels = rotate_batch(x)
    assert torch.equal(enc.seen[0], expected)
    logits = method.classifier(enc.seen[0].mean(dim=(2, 3)))
    assert out.loss.item() == pytest.approx(rotation_loss(logits, labels).item())
    assert 0 <= float(out.logs["pretext_acc"]) <= 1


def test_config_rejects_bad_angles():
    with pytest.raises(ValueError, match="multiples of 90"):
        RotationConfig(angles=(0, 45))
    with pytest.raises(ValueError, match="distinct"):
        RotationConfig(angles=(0, 360))
    assert isinstance(RotNet(nn.Flatten(), 4, RotationConfig(head_hidden_dim=8)).classifier, nn.Sequential)
