"""Exemplar-CNN: the seed patch's position follows the gradient map (a flat image with one edge),
is fixed per image, the geometric transformations are exact (identity, rotation, zoom, shift), the
colour transformations match HSV / PCA written out by hand, and everything is deterministic given
the generator."""

import colorsys
import math

import pytest
import torch

from sslbench.benchmark.engine import build_method
from sslbench.benchmark.recipes import resolve
from sslbench.methods import StepContext
from sslbench.methods.base import InputSpec, TensorEpochData
from sslbench.methods.exemplar import (
    ExemplarConfig,
    TransformParams,
    adjust_saturation_value,
    extract_patches,
    gradient_energy,
    image_uniforms,
    patch_position_probs,
    photometric,
    sample_patch_positions,
    sample_transforms,
)


def _edge_image(size=20, column=9, lo=0.3, hi=0.8):
    """A flat image with one vertical step edge between columns column - 1 and column."""
    x = torch.full((1, 1, size, size), lo)
    x[..., column:] = hi
    return x


def _identity(n, channels=1, **over):
    p = dict(shift=torch.zeros(n, 2), scale=torch.ones(n), angle=torch.zeros(n), pca=torch.ones(n, channels),
             sv_power=torch.ones(n, 2), sv_mult=torch.ones(n, 2), sv_add=torch.zeros(n, 2), hue=torch.zeros(n))
    p.update(over)
    return TransformParams(**p)


def test_patch_position_follows_the_gradient_map_of_an_edge():
    x, patch = _edge_image(), 6
    energy = gradient_energy(x)[0]
    assert set(energy.nonzero()[:, 1].tolist()) == {8, 9}  # central differences: both sides of the step
    probs = patch_position_probs(x, patch)[0]
    assert probs.shape == (15, 15) and probs.sum().item() == pytest.approx(1.0)
    # Naive: the energy inside each window, normalised.
    window = torch.tensor([[energy[i:i + patch, j:j + patch].sum().item() for j in range(15)] for i in range(15)])
    torch.testing.assert_close(probs, (window / window.sum()).float())
    allowed = [j for j in range(15) if j <= 9 and j + patch > 8]  # windows that contain the edge
    assert (probs[:, allowed] > 0).all() and probs[:, [j for j in range(15) if j not in allowed]].sum() == 0
    # Sampling by the inverse CDF: only windows over the edge, with the probabilities' frequencies.
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pos = sample_patch_positions(x.expand(4000, -1, -1, -1), patch, u)
    assert set(pos[:, 1].tolist()) <= set(allowed)
    freq = torch.bincount(pos[:, 1], minlength=15).double() / 4000
    torch.testing.assert_close(freq, probs.sum(dim=0).double(), rtol=0, atol=0.03)
    # A flat image has no preferred position.
    flat = patch_position_probs(torch.full((1, 3, 10, 10), 0.5), 4)[0]
    torch.testing.assert_close(flat, torch.full((7, 7), 1 / 49))


def test_seed_patch_is_fixed_per_image():
    idx = torch.tensor([3, 7, 3, 11])
    u = image_uniforms(idx, seed=0)
    assert u[0] == u[2] and len(set(u.tolist())) == 3 and ((u >= 0) & (u < 1)).all()
    torch.testing.assert_close(image_uniforms(idx.flip(0), seed=0), u.flip(0))
    assert not torch.equal(image_uniforms(idx, seed=1), u)  # another run's seed, other patches
    x = torch.rand(4, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_patch_positions(x, 6, u), sample_patch_positions(x, 6, image_uniforms(idx, 0)))


def test_geometric_transformations_are_exact():
    img = torch.arange(400.0).view(1, 1, 20, 20)
    box = torch.tensor([[4, 6, 8]])  # top, left, side
    crop = img[..., 4:12, 6:14]
    torch.testing.assert_close(extract_patches(img, box, 8, _identity(1)), crop)
    # A quarter turn moves pixel centres onto pixel centres: torch.rot90 (counter-clockwise as shown).
    turned = extract_patches(img, box, 8, _identity(1, angle=torch.tensor([math.pi / 2])))
    torch.testing.assert_close(turned, torch.rot90(crop, 1, dims=(-2, -1)), rtol=0, atol=1e-3)
    # Scale 2 shows the central half of the patch; a shift of 0.25 sides moves it by 2 px.
    torch.testing.assert_close(extract_patches(img, box, 4, _identity(1, scale=torch.tensor([2.0]))),
                               img[..., 6:10, 8:12], rtol=0, atol=1e-3)
    torch.testing.assert_close(extract_patches(img, box, 8, _identity(1, shift=torch.tensor([[0.25, -0.25]]))),
                               img[..., 6:14, 4:12], rtol=0, atol=1e-3)


def _naive_sv(rgb, power, mult, add):
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    s = min(1.0, max(0.0, s ** power[0] * mult[0] + add[0]))
    v = min(1.0, max(0.0, v ** power[1] * mult[1] + add[1]))
    return colorsys.hsv_to_rgb(h, s, v)


def test_colour_transformations_match_hsv_and_pca_written_out():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 4, 4, generator=g, dtype=torch.float64)
    power, mult = torch.tensor([[0.5, 2.0], [3.0, 0.3], [1.0, 1.0]]), torch.tensor([[1.2, 0.8], [0.7, 1.4], [1, 1]])
    add = torch.tensor([[0.05, -0.1], [-0.02, 0.1], [0.0, 0.0]])
    out = adjust_saturation_value(x, power, mult, add)
    for p in range(3):
        for i in range(4):
            for j in range(4):
                expected = _naive_sv(x[p, :, i, j].tolist(), power[p].tolist(), mult[p].tolist(), add[p].tolist())
                torch.testing.assert_close(out[p, :, i, j], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out[2], x[2])  # power 1, factor 1, offset 0: unchanged
    gray = x[:, :1]  # 1 channel: the value only
    torch.testing.assert_close(adjust_saturation_value(gray, power, mult, add),
                               (gray ** power[:, 1].view(-1, 1, 1, 1) * mult[:, 1].view(-1, 1, 1, 1)
                                + add[:, 1].view(-1, 1, 1, 1)).clamp(0, 1))
    # Contrast 1 with the identity: each principal component (here the axes) scaled about the mean.
    mean = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64)
    factors = torch.tensor([[2.0, 1.0, 0.5]] * 3, dtype=torch.float64)
    params = _identity(3, 3, pca=factors)
    scaled = mean.view(1, 3, 1, 1) + factors[0].view(1, 3, 1, 1) * (x - mean.view(1, 3, 1, 1))
    torch.testing.assert_close(photometric(x, params, mean, torch.eye(3, dtype=torch.float64)), scaled.clamp(0, 1))
    torch.testing.assert_close(photometric(x, _identity(3, 3), mean, torch.eye(3, dtype=torch.float64)), x)


def _method():
    cfg = resolve("exemplar-quick", ["train.device=cpu", "method.embed_dim=0", "method.patch_size=8"])
    spec = InputSpec(3, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return build_method(cfg, 3, 16, num_samples=20, input_spec=spec)



def test_patches_are_deterministic_given_the_generator_and_labelled_by_index():
    method = _method()
    g = torch.Generator().manual_seed(0)
    split = (torch.rand(20, 3, 16, 16, generator=g) - 0.5) / 0.25
    ctx = StepContext(step=3, total_steps=10, steps_per_epoch=2, indices=torch.tensor([4, 9, 2]), seed=0)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        method.make_patches([split[[4, 9, 2]]], ctx)
    method.on_epoch_start(StepContext(), TensorEpochData(split))
    pixels = (split * 0.25 + 0.5).transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(method.pixel_mean.double(), pixels.mean(dim=1), rtol=0, atol=1e-6)
    top = torch.linalg.eigh(torch.cov(pixels)).eigenvectors[:, -1]  # the largest component first
    assert abs(float(method.pixel_pcs[:, 0].double() @ top)) == pytest.approx(1.0, abs=1e-4)
    views = [split[[4, 9, 2]]]
    patches, labels = method.make_patches(views, ctx)
    assert patches.shape == (6, 3, 8, 8) and labels.tolist() == [4, 9, 2, 4, 9, 2]  # K = 2, row k B + b
    again, _ = method.make_patches(views, ctx)
    assert torch.equal(patches, again)
    other, _ = method.make_patches(views, StepContext(step=4, total_steps=10, steps_per_epoch=2,
                                                      indices=ctx.indices, seed=0))
    assert not torch.equal(patches, other)
    cfg = ExemplarConfig()
    a = sample_transforms(5, 3, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    b = sample_transforms(5, 3, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    assert (a.scale >= 0.7).all() and (a.scale <= 1.4).all() and (a.angle.abs() <= math.radians(20)).all()
    assert (a.shift.abs() <= 0.2).all() and (a.hue.abs() <= 0.1).all()
    out = method(views, ctx)
    assert torch.isfinite(out.loss)
