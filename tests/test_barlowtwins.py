"""Barlow Twins: the cross-correlation matrix and the loss against a loop implementation of the
paper's formulas, their invariances and closed forms, and the biases' learning-rate group."""

import math

import pytest
import torch

from sslbench.benchmark.backbones import build_backbone
from sslbench.methods import get_method
from sslbench.methods.barlowtwins import BarlowTwinsConfig, barlow_twins_loss, cross_correlation
from sslbench.methods.base import StepContext


def naive_barlow(z1, z2, lambd, eps=1e-5):
    """Zbontar et al. 2021 Eq. 1-2 with Python loops: each dimension standardised over the batch
    (biased variance + eps, the official non-affine BatchNorm1d), C_ij = sum_b a_bi b_bj / N."""
    n, d = len(z1), len(z1[0])

    def standardize(z):
        cols = []
        for j in range(d):
            col = [z[b][j] for b in range(n)]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n
            cols.append([(x - mean) / math.sqrt(var + eps) for x in col])
        return cols  # cols[j][b]

    a, b = standardize(z1), standardize(z2)
    c = [[sum(a[i][k] * b[j][k] for k in range(n)) / n for j in range(d)] for i in range(d)]
    loss = sum((1 - c[i][i]) ** 2 for i in range(d))
    loss += lambd * sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    return c, loss


def hadamard_columns(n, d):
    """d zero-mean, mutually orthogonal +-1 columns of an n x n Hadamard matrix (n a power of 2)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[:, 1:d + 1]  # column 0 is all ones


def test_cross_correlation_and_loss_match_the_papers_formulas():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3 + 1
    z2 = z1 + 0.5 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    c_ref, loss_ref = naive_barlow(z1.tolist(), z2.tolist(), lambd=0.3)
    c = cross_correlation(z1, z2)
    torch.testing.assert_close(c, torch.tensor(c_ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert barlow_twins_loss(c, 0.3).item() == pytest.approx(loss_ref, rel=1e-12)


def test_loss_is_invariant_to_permuting_the_batch():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    perm = torch.randperm(9, generator=g)
    loss = barlow_twins_loss(cross_correlation(z1, z2), 0.01)
    permuted = barlow_twins_loss(cross_correlation(z1[perm], z2[perm]), 0.01)
    assert permuted.item() == pytest.approx(loss.item(), rel=1e-12)
    # ... and to the scale and offset of each dimension (the batch standardisation)
    scaled = barlow_twins_loss(cross_correlation(z1 * torch.tensor([2.0, 5.0, 0.5, 1.0]) - 3, z2, eps=0.0), 0.01)
    assert scaled.item() == pytest.approx(barlow_twins_loss(cross_correlation(z1, z2, eps=0.0), 0.01).item())


def test_loss_is_zero_for_decorrelated_identical_views():
    z = hadamard_columns(8, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64) + 7.0
    c = cross_correlation(z, z.clone(), eps=0.0)
    torch.testing.assert_close(c, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert barlow_twins_loss(c, 0.5).item() == pytest.approx(0.0, abs=1e-20)
    # with BN's eps the diagonal is 1 / sqrt(1 + eps)^2: a tiny positive loss
    assert 0 < barlow_twins_loss(cross_correlation(z, z), 0.5).item() < 5 * 1e-10


def test_lambda_zero_keeps_only_the_diagonal_term():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    c = cross_correlation(z1, z2)
    assert barlow_twins_loss(c, 0.0).item() == pytest.approx(((1 - c.diagonal()) ** 2).sum().item())
    off = (c ** 2).sum() - (c.diagonal() ** 2).sum()
    assert (barlow_twins_loss(c, 1.0) - barlow_twins_loss(c, 0.0)).item() == pytest.approx(off.item())


def test_loss_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(cross_correlation(a, b), 0.2), (z1, z2))


def build(**args):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    args = {"proj_hidden_dim": 16, "proj_dim": 8, **args}
    return get_method("barlowtwins").build(backbone, dim, args)


def test_method_loss_and_parameter_groups():
    method = build(lambd=0.1, scale_loss=0.5, gather_distributed=True)  # gathering: no-op in one process
    views = [torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    out = method(views, StepContext())
    z1, z2 = method.projector(method.encoder(torch.cat(views))).chunk(2)
    expected = 0.5 * barlow_twins_loss(cross_correlation(z1, z2), 0.1)
    torch.testing.assert_close(out.loss, expected)
    weights, biases = method.param_groups()
    assert biases["lr_scale"] == pytest.approx(0.0048 / 0.2) and biases["lars_exclude"]
    assert biases["weight_decay"] == 0.0 and all(p.ndim == 1 for p in biases["params"])
    assert "lr_scale" not in weights and all(p.ndim > 1 for p in weights["params"])


def test_config_is_validated():
    with pytest.raises(ValueError, match="lambd"):
        BarlowTwinsConfig(lambd=-1.0)
    with pytest.raises(ValueError, match="scale_loss"):
        BarlowTwinsConfig(scale_loss=0.0)
    with pytest.raises(ValueError, match="N >= 2"):
        cross_correlation(torch.randn(1, 3), torch.randn(1, 3))
