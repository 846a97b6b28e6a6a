"""Representation diagnostics against closed forms on constructed embeddings."""

import math

import pytest
import torch

from sslbench.protocols.diagnostics import (
    alignment,
    collapse_warning,
    covariance_spectrum,
    normalized_std,
    rankme,
    uniformity,
)


def simplex(n: int) -> torch.Tensor:
    """n unit vectors in R^n with pairwise inner product -1/(n-1) (a regular simplex)."""
    e = torch.eye(n, dtype=torch.float64)
    return torch.nn.functional.normalize(e - e.mean(dim=0), dim=1)


def test_alignment_closed_forms():
    z = torch.randn(6, 4, dtype=torch.float64)
    assert float(alignment(z, 3 * z)) == pytest.approx(0.0, abs=1e-12)  # same direction
    assert float(alignment(z, -z)) == pytest.approx(4.0)  # antipodal: ||2u||^2
    assert float(alignment(z, -z, alpha=1.0)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same shape"):
        alignment(z, z[:3])


def test_uniformity_closed_forms():
    # a regular simplex of n points: every squared distance is 2n/(n-1)
    for n in (2, 3, 5):
        assert float(uniformity(simplex(n))) == pytest.approx(-2.0 * 2 * n / (n - 1))
    # collapsed: every distance 0 -> log 1 = 0, the maximum
    assert float(uniformity(torch.ones(4, 3))) == pytest.approx(0.0, abs=1e-12)
    # naive mean over i != j
    z = torch.randn(7, 3, dtype=torch.float64)
    u = torch.nn.functional.normalize(z, dim=1)
    terms = [math.exp(-2 * float((u[i] - u[j]).pow(2).sum())) for i in range(7) for j in range(7) if i != j]
    assert float(uniformity(z)) == pytest.approx(math.log(sum(terms) / len(terms)))


def test_rankme_closed_forms():
    assert float(rankme(torch.eye(5) * 3.0)) == pytest.approx(5.0, rel=1e-5)  # equal singular values
    rank_one = torch.randn(8, 1) @ torch.randn(1, 6)
    assert float(rankme(rank_one)) == pytest.approx(1.0, rel=1e-4)
    s = torch.tensor([3.0, 1.0], dtype=torch.float64)  # two singular values: exp(entropy of s/||s||_1)
    p = s / s.sum()
    assert float(rankme(torch.diag(s))) == pytest.approx(math.exp(-(p * p.log()).sum()), rel=1e-5)


def test_normalized_std_and_the_collapse_alarm():
    collapsed = torch.randn(1, 16).repeat(64, 1) + 1e-9 * torch.randn(64, 16)
    assert float(normalized_std(collapsed)) < 1e-6
    message = collapse_warning(collapsed)
    assert message is not None and "collapse" in message and "d = 16" in message
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(20000, 16, generator=g)  # isotropic: std of each coordinate -> 1/sqrt(d)
    assert float(normalized_std(spread)) * 4 == pytest.approx(1.0, abs=0.02)
    assert collapse_warning(spread) is None


def test_covariance_spectrum_of_a_known_covariance():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50000, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5],
                                                                              dtype=torch.float64)
    spectrum = covariance_spectrum(z)
    torch.testing.assert_close(spectrum, torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64), rtol=0.03, atol=0)
    assert torch.all(spectrum[:-1] >= spectrum[1:])
    with pytest.raises(ValueError, match="at least 2"):
        covariance_spectrum(z[:1])
