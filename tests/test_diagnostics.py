"""Representation diagnostics against closed forms on constructed embeddings, and the diagnostics
protocol on constructed encoders."""

import json
import math
import warnings

import pytest
import torch
from torch import nn

from sslbench.benchmark.datasets import ArrayDataset, DatasetInfo
from sslbench.benchmark.errors import DatasetError
from sslbench.protocols.diagnostics import (
    COLLAPSE_THRESHOLD,
    CollapseWarning,
    alignment,
    collapse_warning,
    covariance_spectrum,
    diagnostics_augment,
    eigenvalues_for_variance,
    normalized_std,
    rankme,
    run_diagnostics,
    top_eigenvalue_share,
    uniformity,
)
from sslbench.protocols.spec import DiagnosticsSpec, get_protocol


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
    message = collapse_warning(collapsed, context="Run x: ")
    assert message is not None and message.startswith("Run x: ") and "collapse" in message and "d = 16" in message
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(20000, 16, generator=g)  # isotropic: std of each coordinate -> 1/sqrt(d), x sqrt(d) = 1
    assert float(normalized_std(spread)) == pytest.approx(1.0, abs=0.02)
    assert collapse_warning(spread) is None
    # the orthonormal basis: each coordinate is 1 once and 0 three times, std 1/2, x sqrt(4) = 1
    assert float(normalized_std(torch.eye(4))) == pytest.approx(1.0, abs=1e-12)
    # scale-free per row: rescaling embeddings does not move it
    assert float(normalized_std(spread[:50] * torch.rand(50, 1, generator=g))) == pytest.approx(
        float(normalized_std(spread[:50])), abs=1e-6)


def test_covariance_spectrum_of_a_known_covariance():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50000, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5],
                                                                              dtype=torch.float64)
    spectrum = covariance_spectrum(z)
    torch.testing.assert_close(spectrum, torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64), rtol=0.03, atol=0)
    assert torch.all(spectrum[:-1] >= spectrum[1:])
    with pytest.raises(ValueError, match="at least 2"):
        covariance_spectrum(z[:1])


def test_variance_shares_of_a_diagonal_covariance():
    eig = torch.tensor([6.0, 2.0, 1.0, 1.0], dtype=torch.float64)  # total 10: shares .6 .2 .1 .1
    assert top_eigenvalue_share(eig) == pytest.approx(0.6)
    assert eigenvalues_for_variance(eig, 0.5) == 1
    assert eigenvalues_for_variance(eig, 0.8) == 2  # .6 + .2 reaches 80 % exactly
    assert eigenvalues_for_variance(eig, 0.9) == 3
    assert eigenvalues_for_variance(eig, 0.95) == 4
    assert eigenvalues_for_variance(eig, 1.0) == 4
    iso = torch.ones(8, dtype=torch.float64)
    assert top_eigenvalue_share(iso) == pytest.approx(1 / 8)
    assert eigenvalues_for_variance(iso, 0.9) == 8  # ceil(0.9 * 8)
    zero = torch.zeros(3, dtype=torch.float64)  # a constant embedding: one direction, all of "it"
    assert top_eigenvalue_share(zero) == 1.0 and eigenvalues_for_variance(zero) == 1
    with pytest.raises(ValueError, match="fraction"):
        eigenvalues_for_variance(eig, 0.0)
    # from embeddings: a known diagonal covariance, through covariance_spectrum
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40000, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64)
    assert top_eigenvalue_share(covariance_spectrum(z)) == pytest.approx(9 / 11, rel=0.02)


# --------------------------------------------------------------------------------------------
# The protocol on constructed encoders
# --------------------------------------------------------------------------------------------

LEVELS = (0, 85, 170, 255)  # four uniform grey images; crops and flips leave them unchanged
INFO = DatasetInfo(name="levels", image_size=8, channels=1, num_classes=4, mean=(0.5,), std=(0.25,),
                   in_memory=True, source="constructed in the test")


def levels_split(repeat: int = 1) -> ArrayDataset:
    images = torch.tensor(LEVELS * repeat, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    return ArrayDataset(images, torch.arange(len(LEVELS) * repeat) % 4, INFO, "test")


class OneHotOfLevel(nn.Module):
    """Maps a uniform image to the one-hot vector of its grey level: the 4 images embed as the
    orthonormal basis of R^4, whatever crop or flip they got."""

    def forward(self, x):
        normalised = torch.tensor([(v / 255 - 0.5) / 0.25 for v in LEVELS])
        index = (x.mean(dim=(1, 2, 3))[:, None] - normalised).abs().argmin(dim=1)
        return torch.nn.functional.one_hot(index, 4).float()


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)  # to check that the protocol runs it in eval mode and restores the mode

    def forward(self, x):
        assert not self.training
        return torch.tensor([1.0, 2.0, 3.0]).expand(x.shape[0], 3)


def crop_flip_spec(**kw):
    return DiagnosticsSpec(name="test-diagnostics", version=1, augment="crop-only", **kw)


def test_protocol_closed_forms_on_the_orthonormal_basis():
    """Features e_0..e_3 (an identity-like encoder of four invariant images): alignment 0,
    uniformity log exp(-2 * 2) = -4, RankMe 4, normalised std 1, covariance (I - J/4)/3 with
    eigenvalues 1/3, 1/3, 1/3, 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        out = run_diagnostics(OneHotOfLevel(), levels_split(), crop_flip_spec())
    m = out.metrics
    assert m["alignment"] == pytest.approx(0.0, abs=1e-12)
    assert m["uniformity"] == pytest.approx(-4.0)
    assert m["rankme"] == pytest.approx(4.0, rel=1e-5)
    assert m["normalized_std"] == pytest.approx(1.0)
    assert m["collapse"] == 0.0
    assert m["top_eigenvalue_share"] == pytest.approx(1 / 3)
    assert m["eigenvalues_90"] == 3.0
    assert out.params == {"feature_dim": 4.0, "num_images": 4.0, "augment": "crop-only"}
    spectrum = json.loads(out.artifacts["covariance_spectrum.json"])
    assert spectrum["eigenvalues"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0], abs=1e-12)


def test_protocol_max_images_takes_the_first_images():
    # 12 images (the basis three times); max_images=6 -> e_0, e_1, e_2, e_3, e_0, e_1
    out = run_diagnostics(OneHotOfLevel(), levels_split(repeat=3), crop_flip_spec(max_images=6))
    assert out.params["num_images"] == 6.0
    z = torch.eye(4)[[0, 1, 2, 3, 0, 1]]
    assert out.metrics["uniformity"] == pytest.approx(float(uniformity(z)))
    assert out.metrics["normalized_std"] == pytest.approx(float(normalized_std(z)))


def test_protocol_flags_a_constant_encoder():
    encoder = Constant().train()
    with pytest.warns(CollapseWarning, match="Diagnostics on 4 'levels' test images: Representation collapse"):
        out = run_diagnostics(encoder, levels_split(), get_protocol("diagnostics"))
    assert encoder.training, "the encoder's mode is restored"
    m = out.metrics
    assert m["collapse"] == 1.0 and m["normalized_std"] == pytest.approx(0.0, abs=1e-12)
    assert m["rankme"] == pytest.approx(1.0, rel=1e-4)
    assert m["alignment"] == pytest.approx(0.0, abs=1e-12) and m["uniformity"] == pytest.approx(0.0, abs=1e-12)
    assert m["top_eigenvalue_share"] == 1.0 and m["eigenvalues_90"] == 1.0
    assert out.params["augment"] == "simclr-small"  # "auto" at 8 px
    assert COLLAPSE_THRESHOLD > 0


def test_protocol_views_are_seeded_and_the_recipe_follows_the_image_size():
    from sslbench.benchmark.backbones import build_backbone

    torch.manual_seed(0)
    encoder, _ = build_backbone("small-cnn", 1, 8)
    split = levels_split(repeat=4)
    split = ArrayDataset(split.images + torch.arange(16, dtype=torch.uint8).view(16, 1, 1, 1),  # some texture
                         split.labels, INFO, "test")
    a = run_diagnostics(encoder, split, crop_flip_spec(seed=0))
    assert run_diagnostics(encoder, split, crop_flip_spec(seed=0)).metrics == a.metrics
    b = run_diagnostics(encoder, split, DiagnosticsSpec(name="x", version=1, seed=1))
    assert b.metrics["alignment"] != a.metrics["alignment"]
    assert b.metrics["rankme"] == a.metrics["rankme"], "only the alignment uses the views"
    spec = get_protocol("diagnostics")
    assert isinstance(spec, DiagnosticsSpec)
    assert diagnostics_augment(spec, 64) == "simclr-small" and diagnostics_augment(spec, 96) == "simclr"
    assert diagnostics_augment(crop_flip_spec(), 224) == "crop-only"


def test_protocol_needs_two_images():
    with pytest.raises(DatasetError, match="at least 2 test images"):
        run_diagnostics(OneHotOfLevel(), ArrayDataset(levels_split().images[:1], torch.zeros(1, dtype=torch.long),
                                                      INFO, "test"), crop_flip_spec())
