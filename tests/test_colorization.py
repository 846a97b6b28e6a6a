"""Colorization: the in-gamut ab bins, hard and soft quantisation, the smoothed prior and the
rebalancing weights, the loss and the annealed-mean decoding against naive float64 loops written
from the paper (Zhang et al. 2016, §2), the Lab round trip through the bins, and the method's
L-only encoder and once-per-run prior."""

import math

import pytest
import torch

from sslbench.benchmark.color import lab_to_rgb, rgb_to_lab
from sslbench.benchmark.recipes import resolve
from sslbench.methods import StepContext
from sslbench.methods.base import InputSpec, TensorEpochData
from sslbench.methods.colorization import (
    ab_gamut_bins,
    annealed_mean,
    colorization_loss,
    decode_rgb,
    quantize_ab,
    rebalancing_weights,
    smoothed_prior,
    soft_encode,
)

CENTRES = ab_gamut_bins(10.0)
_CENTRE_LIST = CENTRES.double().tolist()


def _random_lab(n: int, seed: int = 0) -> torch.Tensor:
    """Lab of ``n`` random sRGB colours, (n, 3) float64."""
    rgb = torch.rand(1, 3, n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return rgb_to_lab(rgb)[0, :, :, 0].T


def _naive_sorted_bins(a: float, b: float) -> list[tuple[float, int]]:
    """(squared distance, bin) of every bin, nearest first."""
    return sorted(((a - ca) ** 2 + (b - cb) ** 2, q) for q, (ca, cb) in enumerate(_CENTRE_LIST))


def test_gamut_bins_are_the_grid_points_that_srgb_colours_round_to():
    c = CENTRES
    assert c.shape == (261, 2)  # measured once over all 2^24 8-bit colours (the paper's hull: 313)
    assert torch.equal(c, torch.round(c / 10) * 10) and len({tuple(x) for x in c.tolist()}) == len(c)
    assert [0.0, 0.0] in c.tolist()
    # every 8-bit colour (a random sample) rounds to one of the bins, ...
    rgb = torch.randint(0, 256, (1, 3, 20_000, 1), generator=torch.Generator().manual_seed(1)).double() / 255
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].T
    keys = {tuple(x) for x in (torch.round(ab / 10) * 10).tolist()}
    assert keys <= {tuple(x) for x in c.double().tolist()}
    # ... the primaries' bins are in (red, green, blue: ab (80.1, 67.2), (-86.2, 83.2), (79.2, -107.9)),
    # a grid point outside the gamut is not.
    for bin_ in ([80.0, 70.0], [-90.0, 80.0], [80.0, -110.0]):
        assert bin_ in c.tolist()
    assert [100.0, -110.0] not in c.tolist()


def test_hard_quantisation_is_the_nearest_bin():
    ab = torch.cat([_random_lab(300)[:, 1:], torch.tensor([[120.0, -120.0], [0.3, 95.0], [-100.0, 0.0]],
                                                          dtype=torch.float64)])
    idx = quantize_ab(ab, CENTRES)
    for (a, b), q in zip(ab.tolist(), idx.tolist()):
        best = _naive_sorted_bins(a, b)[0][0]
        d = (a - CENTRES[q, 0].item()) ** 2 + (b - CENTRES[q, 1].item()) ** 2
        assert d == pytest.approx(best, abs=1e-9)
    # In-gamut colours are within half a diagonal of their bin's centre.
    ab = _random_lab(500, seed=3)[:, 1:]
    assert ((ab - CENTRES.double()[quantize_ab(ab, CENTRES)]).norm(dim=1) <= 5 * math.sqrt(2) + 1e-9).all()


@pytest.mark.parametrize("k, sigma", [(5, 5.0), (10, 2.0)])
def test_soft_encoding_matches_the_naive_nearest_neighbour_kernel(k, sigma):
    ab = _random_lab(12, seed=k)[:, 1:]
    idx, w = soft_encode(ab, CENTRES, k, sigma)
    dense = torch.zeros(len(ab), len(CENTRES), dtype=torch.float64).scatter_(1, idx, w)
    for n, (a, b) in enumerate(ab.tolist()):
        near = _naive_sorted_bins(a, b)[:k]
        z = [math.exp(-d / (2 * sigma**2)) for d, _ in near]
        expected = torch.zeros(len(CENTRES), dtype=torch.float64)
        for (_, q), zq in zip(near, z):
            expected[q] = zq / sum(z)
        torch.testing.assert_close(dense[n], expected, rtol=1e-9, atol=1e-12)
    assert torch.equal(idx[:, 0], quantize_ab(ab, CENTRES))  # nearest first: argmax Z is the hard bin


def test_lab_round_trip_through_the_bins():
    """Encode the ab of sRGB colours, decode them: the soft encoding's mean stays within a bin of the
    colour, the annealed mean at T -> 0 is the nearest bin's centre, and decode_rgb joins the
    lightness with the decoded ab exactly as lab_to_rgb does."""
    lab = _random_lab(64, seed=5)
    idx, w = soft_encode(lab[:, 1:], CENTRES)
    mean = (w[:, :, None] * CENTRES.double()[idx]).sum(dim=1)
    assert (mean - lab[:, 1:]).norm(dim=1).max() < 10
    logits = torch.full((64, len(CENTRES)), -30.0, dtype=torch.float64).scatter_(1, idx, w.log())
    img_logits = logits.T.reshape(1, -1, 8, 8)  # the 64 colours as an 8 x 8 image
    torch.testing.assert_close(annealed_mean(img_logits, CENTRES, 1.0)[0].reshape(2, 64).T, mean.float(),
                               rtol=0, atol=1e-4)
    mode = annealed_mean(img_logits, CENTRES, 0.01)[0].reshape(2, 64).T
    clear = w[:, 0] > 1.1 * w[:, 1]  # colours not on the boundary between two bins
    assert clear.sum() > 40
    torch.testing.assert_close(mode[clear], CENTRES[idx[clear, 0]], rtol=0, atol=1e-3)
    lightness = lab[:, :1].T.reshape(1, 1, 8, 8)
    rgb = decode_rgb(lightness, img_logits, CENTRES, 0.01)
    expected = lab_to_rgb(torch.cat((lightness.float(), mode.T.reshape(1, 2, 8, 8)), dim=1))
    torch.testing.assert_close(rgb, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 0.38, 0.1])
def test_annealed_mean_matches_the_naive_formula(temperature):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, len(CENTRES), 2, 3, generator=g, dtype=torch.float64)
    out = annealed_mean(logits, CENTRES, temperature)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                z = torch.softmax(logits[b, :, i, j], dim=0).tolist()
                f = [zq ** (1 / temperature) for zq in z]  # exp(log z / T), Zhang et al. eq. 5
                ab = [sum(fq * c[k] for fq, c in zip(f, CENTRES.tolist())) / sum(f) for k in (0, 1)]
                torch.testing.assert_close(out[b, :, i, j].double(), torch.tensor(ab, dtype=torch.float64),
                                           rtol=1e-4, atol=1e-3)


def test_smoothed_prior_and_rebalancing_weights_match_the_naive_formulas():
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 50, (len(CENTRES),), generator=g).double() * (torch.rand(len(CENTRES), generator=g) < 0.3)
    prior = smoothed_prior(counts, CENTRES, 5.0)
    c = CENTRES.double().tolist()
    p = [x / counts.sum().item() for x in counts.tolist()]
    kernel = [[math.exp(-((a - x) ** 2 + (b - y) ** 2) / 50) for (x, y) in c] for (a, b) in c]  # [q][q']
    col = [sum(kernel[q][qq] for q in range(len(c))) for qq in range(len(c))]
    naive = [sum(p[qq] * kernel[q][qq] / col[qq] for qq in range(len(c))) for q in range(len(c))]
    torch.testing.assert_close(prior, torch.tensor(naive, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert prior.sum().item() == pytest.approx(1.0) and (prior > 0).all()

    w = rebalancing_weights(prior, 0.5)
    q = len(c)
    raw = [1 / (0.5 * pq + 0.5 / q) for pq in naive]
    norm = sum(pq * r for pq, r in zip(naive, raw))
    torch.testing.assert_close(w, torch.tensor([r / norm for r in raw], dtype=torch.float64), rtol=1e-9, atol=0)
    assert (prior * w).sum().item() == pytest.approx(1.0)  # E_p~[w] = 1
    torch.testing.assert_close(rebalancing_weights(prior, 1.0), torch.ones(q, dtype=torch.float64))
    torch.testing.assert_close(rebalancing_weights(prior, 0.0), 1 / (q * prior))  # lambda 0: 1 / (Q p~)


def test_loss_matches_the_naive_weighted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    ab = _random_lab(30, seed=7)[:, 1:]
    idx, w = soft_encode(ab, CENTRES)
    logits = torch.randn(30, len(CENTRES), generator=g, dtype=torch.float64)
    v = torch.rand(30, generator=g, dtype=torch.float64) + 0.5
    naive = 0.0
    for n in range(30):
        log_norm = math.log(sum(math.exp(x) for x in logits[n].tolist()))
        naive -= v[n].item() * sum(wk * (logits[n, q].item() - log_norm) for q, wk in zip(idx[n].tolist(), w[n].tolist()))
    assert colorization_loss(logits, idx, w, v).item() == pytest.approx(naive / 30, rel=1e-5)


def _method(image_size=16, **over):
    from sslbench.benchmark.engine import build_method

    args = [f"method.{k}={v}" for k, v in over.items()]
    cfg = resolve("colorization-quick", ["train.device=cpu", *args])
    spec = InputSpec(3, image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return build_method(cfg, 3, image_size, input_spec=spec), spec



def test_method_prior_comes_once_from_the_training_split_and_the_encoder_sees_lightness_only():
    method, spec = _method()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    views = [(x - 0.5) / 0.25]
    ctx = StepContext(step=0, total_steps=2, steps_per_epoch=1, seed=0)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        method(views, ctx)
    # A training split of pure red images: the prior peaks at red's bin, the weights average to 1.
    red = torch.zeros(3, 3, 16, 16)
    red[:, 0] = 1.0
    logs = method.on_epoch_start(ctx, TensorEpochData((red - 0.5) / 0.25))
    red_ab = rgb_to_lab(red[:1, :, :1, :1])[0, 1:, 0, 0][None]
    assert method.prior.argmax() == quantize_ab(red_ab, CENTRES)[0]
    assert (method.prior * method.class_weights).sum().item() == pytest.approx(1.0, rel=1e-5)
    assert logs["color_weight_max"] == pytest.approx(method.class_weights.max().item())
    before = method.prior.clone()
    assert method.on_epoch_start(StepContext(step=1, total_steps=2, steps_per_epoch=1), TensorEpochData(views[0])) == {}
    assert torch.equal(method.prior, before)  # computed once per run (a resume restores the buffer)
    out = method(views, ctx)
    assert torch.isfinite(out.loss)
    # The evaluated encoder is L-only: another colour with the same lightness, the same features.
    lab = rgb_to_lab(x.double())
    gray = lab_to_rgb(torch.cat((lab[:, :1], torch.zeros_like(lab[:, 1:])), dim=1)).float()
    method.encoder.eval()
    torch.testing.assert_close(method.encoder((gray - 0.5) / 0.25), method.encoder(views[0]), rtol=0, atol=2e-4)
    assert method.encoder.dims == [method.feature_dim]
