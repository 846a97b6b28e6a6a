"""VICReg: each term (invariance, variance, covariance) against a loop implementation of the
paper's formulas, their closed forms, and the method's weighting of the terms."""

import math

import pytest
import torch

from sslbench.benchmark.backbones import build_backbone
from sslbench.methods import get_method
from sslbench.methods.base import StepContext
from sslbench.methods.vicreg import VICRegConfig, covariance_loss, invariance_loss, variance_loss


def columns(z):
    return [[row[j] for row in z] for j in range(len(z[0]))]


def naive_invariance(z1, z2):
    """Bardes et al. 2022 Eq. 5, as the repo's mse_loss: mean over the N x D entries."""
    n, d = len(z1), len(z1[0])
    return sum((z1[b][j] - z2[b][j]) ** 2 for b in range(n) for j in range(d)) / (n * d)


def naive_variance(z, gamma, eps):
    """Eq. 1-2: mean over dimensions of max(0, gamma - sqrt(Var + eps)), unbiased variance."""
    total = 0.0
    for col in columns(z):
        mean = sum(col) / len(col)
        var = sum((x - mean) ** 2 for x in col) / (len(col) - 1)
        total += max(0.0, gamma - math.sqrt(var + eps))
    return total / len(z[0])


def naive_covariance(z):
    """Eq. 3-4: (1/D) sum_{i != j} Cov_ij^2 with the unbiased covariance."""
    cols, n = columns(z), len(z)
    means = [sum(c) / n for c in cols]
    d = len(cols)
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                cov = sum((cols[i][b] - means[i]) * (cols[j][b] - means[j]) for b in range(n)) / (n - 1)
                total += cov ** 2
    return total / d


def hadamard_columns(n, d):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[:, 1:d + 1]  # zero-mean, mutually orthogonal columns


def test_each_term_matches_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(7, 5, generator=g, dtype=torch.float64) * torch.tensor([0.2, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    z2 = z1 + torch.randn(7, 5, generator=g, dtype=torch.float64)
    a, b = z1.tolist(), z2.tolist()
    assert invariance_loss(z1, z2).item() == pytest.approx(naive_invariance(a, b), rel=1e-12)
    assert variance_loss(z1, 1.0, 1e-4).item() == pytest.approx(naive_variance(a, 1.0, 1e-4), rel=1e-12)
    assert variance_loss(z1, 2.5, 1e-2).item() == pytest.approx(naive_variance(a, 2.5, 1e-2), rel=1e-12)
    assert covariance_loss(z1).item() == pytest.approx(naive_covariance(a), rel=1e-12)


def test_variance_term_is_zero_above_gamma_and_positive_when_collapsed():
    g = torch.Generator().manual_seed(1)
    spread = torch.randn(64, 6, generator=g, dtype=torch.float64)
    spread = (spread - spread.mean(0)) / spread.std(0) * 1.5  # every std = 1.5 >= gamma
    assert variance_loss(spread, gamma=1.0).item() == 0.0
    collapsed = torch.ones(16, 6, dtype=torch.float64) * 3.0  # every row the same: std 0
    assert variance_loss(collapsed, gamma=1.0, eps=1e-4).item() == pytest.approx(1.0 - math.sqrt(1e-4))


def test_covariance_term_is_zero_for_decorrelated_embeddings():
    z = hadamard_columns(16, 6) * torch.arange(1, 7, dtype=torch.float64) - 2.0
    assert covariance_loss(z).item() == pytest.approx(0.0, abs=1e-24)
    mixed = z.clone()
    mixed[:, 1] += mixed[:, 0]  # correlate two dimensions
    assert covariance_loss(mixed).item() > 0.1


def test_invariance_term_is_zero_for_identical_views():
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    assert invariance_loss(z, z.clone()).item() == 0.0


def test_method_weights_the_terms_as_the_official_code():
    """lambda s + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z')), one process (gathering is a no-op)."""
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    args = {"proj_hidden_dim": 16, "proj_dim": 8, "sim_weight": 2.0, "var_weight": 3.0,
            "cov_weight": 0.5, "gather_distributed": True}
    method = get_method("vicreg").build(backbone, dim, args)
    views = [torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    out = method(views, StepContext())
    z1, z2 = method.projector(method.encoder(torch.cat(views))).chunk(2)
    expected = (2.0 * invariance_loss(z1, z2) + 3.0 * 0.5 * (variance_loss(z1) + variance_loss(z2))
                + 0.5 * (covariance_loss(z1) + covariance_loss(z2)))
    torch.testing.assert_close(out.loss, expected)
    logs = method.on_step_end(out, StepContext())
    assert set(logs) == {"invariance", "variance", "covariance"}


def test_config_is_validated():
    with pytest.raises(ValueError, match="weights"):
        VICRegConfig(var_weight=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        VICRegConfig(gamma=0.0)
