"""Batched augmentation: shapes, determinism, per-image ops against torchvision, statistics, registry."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

from sslbench.benchmark import augment as A
from sslbench.benchmark.augment import AugmentRecipe, BatchAugment, ViewSpec
from sslbench.benchmark.errors import ConfigError, UnknownNameError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# A view that does nothing but the (configurable) crop: for checking single ops end to end.
PLAIN = {"flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}
IDENTITY_CROP = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}


def _images(b: int, c: int, h: int, w: int | None = None, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w or h), generator=g, dtype=torch.uint8).to(device)


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _one_view(spec: ViewSpec, channels: int = 3, size: int = 32) -> BatchAugment:
    recipe = AugmentRecipe("test", (spec,), "test")
    return BatchAugment(recipe, [0.0] * channels, [1.0] * channels, size)


def _colours(b: int, seed: int = 0) -> torch.Tensor:
    """Float RGB images in [0, 1] with grey pixels, saturated pixels and exact 0 / 1 values."""
    x = torch.rand(b, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, :] = x[:, :1, 0, :]  # grey row (max == min)
    x[:, 0, 1, :], x[:, 1, 1, :] = 1.0, 0.0  # r == max, g == min
    x[:, :, 2, :4] = 0.0
    x[:, :, 2, 4:8] = 1.0
    x[:, 1, 3, :] = x[:, 0, 3, :]  # r == g ties
    return x


# ------------------------------------------------------------------------------------------------
# Shapes, ranges, devices


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", A.list_augment_recipes())
def test_every_recipe_gives_float_views_in_range(name, channels, device):
    recipe = A.get_augment_recipe(name)
    aug = BatchAugment(recipe, [0.0] * channels, [1.0] * channels, 28)
    views = aug(_images(5, channels, 28, device=device), _gen(0, device))
    assert len(views) == len(recipe.views) == aug.num_views
    for v, size in zip(views, aug.view_sizes):
        assert v.dtype == torch.float32 and v.device.type == device
        assert v.shape == (5, channels, size, size)
        assert torch.isfinite(v).all()
        assert v.min() >= 0.0 and v.max() <= 1.0  # mean 0, std 1: the un-normalised values


def test_multicrop_views_differ_in_size_and_non_square_input_works():
    aug = BatchAugment(A.get_augment_recipe("multicrop-small"), [0.5] * 3, [0.25] * 3, 32)
    views = aug(_images(4, 3, 24, 40), _gen(0))
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 4
    sized = BatchAugment(AugmentRecipe("s", (ViewSpec(size=7), ViewSpec()), "t"), [0.0], [1.0], 20)
    assert sized.view_sizes == (7, 20)


def test_normalisation_uses_mean_and_std():
    spec = ViewSpec(**IDENTITY_CROP, **PLAIN)
    x = _images(3, 3, 16)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    out = BatchAugment(AugmentRecipe("t", (spec,), "t"), mean, std, 16)(x, _gen(0))[0]
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_rejected():
    aug = BatchAugment(A.get_augment_recipe("simclr-small"), [0.5], [0.25], 28)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.rand(2, 1, 28, 28), _gen(0))
    with pytest.raises(ValueError, match="channels"):
        aug(_images(2, 3, 28), _gen(0))  # 1-channel mean/std, 3-channel images
    with pytest.raises(ValueError, match="1 or 3 channels"):
        aug(_images(2, 2, 28), _gen(0))
    with pytest.raises(ValueError, match="std"):
        BatchAugment(A.get_augment_recipe("simclr-small"), [0.5], [0.0], 28)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_another_device_is_rejected():
    aug = BatchAugment(A.get_augment_recipe("simclr-small"), [0.5], [0.25], 28)
    with pytest.raises(ValueError, match="generator"):
        aug(_images(2, 1, 28, device="cuda"), _gen(0, "cpu"))


# ------------------------------------------------------------------------------------------------
# Determinism and independence


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_views_different_seed_different_views(device):
    aug = BatchAugment(A.get_augment_recipe("byol"), [0.5] * 3, [0.25] * 3, 32)
    x = _images(8, 3, 32, device=device)
    a, b, c = aug(x, _gen(7, device)), aug(x, _gen(7, device)), aug(x, _gen(8, device))
    for va, vb, vc in zip(a, b, c):
        assert torch.equal(va, vb)
        assert not torch.allclose(va, vc)
    assert not torch.allclose(a[0], a[1])  # the two views of one call differ too


def test_copies_of_one_image_get_independent_crops_and_colours():
    x = _images(1, 3, 32).expand(16, 3, 32, 32).contiguous()
    for spec in (ViewSpec(**{**PLAIN, "crop_scale": (0.2, 0.6)}),  # crops only
                 ViewSpec(**IDENTITY_CROP, jitter_p=1.0, flip_p=0.0)):  # colours only
        out = _one_view(spec)(x, _gen(0))[0].flatten(1)
        distances = torch.cdist(out, out) + torch.eye(16) * 1e9
        assert distances.min() > 1e-3, "two copies of an image got the same augmentation"


def test_disabling_an_op_keeps_the_other_parameters():
    # Common random numbers: the same seed gives the same crops with and without colour ops.
    x = _images(6, 3, 32)
    crop_only = _one_view(ViewSpec(crop_scale=(0.3, 0.9), **PLAIN))(x, _gen(3))[0]
    coloured = _one_view(ViewSpec(crop_scale=(0.3, 0.9), flip_p=0.0, jitter_p=0.0, grayscale_p=1.0))(x, _gen(3))[0]
    torch.testing.assert_close(A.grayscale(crop_only).expand_as(crop_only), coloured)


def test_cpu_chunking_does_not_change_the_views(monkeypatch):
    aug = BatchAugment(A.get_augment_recipe("byol"), [0.5] * 3, [0.25] * 3, 32)
    x = _images(21, 3, 32)
    whole = aug(x, _gen(5))
    monkeypatch.setattr(A, "CPU_CHUNK_VALUES", 1)  # chunks of 8 images: 8 + 8 + 5
    for a, b in zip(whole, aug(x, _gen(5))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_batch_augment_equals_sampling_then_applying_each_view():
    recipe = A.get_augment_recipe("byol")
    aug = BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32)
    x = _images(4, 3, 32)
    views = aug(x, _gen(11))
    g = _gen(11)
    for spec, view in zip(recipe.views, views):
        params = A.sample_view_params(spec, 4, 32, 32, g)
        manual = A.apply_view(x.float() / 255, spec, params, 32)
        torch.testing.assert_close(view, (manual - 0.5) / 0.25)


# ------------------------------------------------------------------------------------------------
# Crop and flip


@pytest.mark.parametrize("device", DEVICES)
def test_full_square_crop_is_the_identity(device):
    x = _images(4, 3, 20, device=device)
    out = _one_view(ViewSpec(**IDENTITY_CROP, **PLAIN), size=20)(x, _gen(0, device))[0]
    torch.testing.assert_close(out, x.float() / 255, atol=1e-5, rtol=0)


def test_flip_only_view_equals_torch_flip():
    x = _images(4, 3, 20)
    out = _one_view(ViewSpec(**IDENTITY_CROP, **{**PLAIN, "flip_p": 1.0}), size=20)(x, _gen(0))[0]
    torch.testing.assert_close(out, torch.flip(x.float() / 255, dims=[-1]), atol=1e-5, rtol=0)


def test_crop_that_never_fits_falls_back_to_the_centre_crop():
    aug = _one_view(ViewSpec(**IDENTITY_CROP, **PLAIN), channels=1, size=20)
    wide, tall = _images(3, 1, 20, 40), _images(3, 1, 40, 20)  # ratio 1 -> the 20x20 centre square
    torch.testing.assert_close(aug(wide, _gen(0))[0], wide[..., 10:30].float() / 255, atol=1e-5, rtol=0)
    torch.testing.assert_close(aug(tall, _gen(0))[0], tall[..., 10:30, :].float() / 255, atol=1e-5, rtol=0)
    # A ratio range that excludes the image's: the aspect ratio is clamped into it (2:1 -> 4:3).
    boxes = A.sample_view_params(ViewSpec(crop_scale=(1.0, 1.0)), 4, 20, 40, _gen(0)).boxes
    torch.testing.assert_close(boxes, torch.tensor([[0.0, (40 - 80 / 3) / 2, 20.0, 80 / 3]] * 4))


@pytest.mark.parametrize("size", [9, 24, 37])
def test_crop_resize_matches_torchvision_resized_crop_on_integer_boxes(size):
    x = torch.rand(6, 3, 30, 26, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    boxes, flip = [], torch.tensor([False, True] * 3)
    for _ in range(6):
        h, w = (int(v) for v in torch.randint(3, 26, (2,), generator=g))
        top, left = int(torch.randint(0, 31 - h, (1,), generator=g)), int(torch.randint(0, 27 - w, (1,), generator=g))
        boxes.append([top, left, h, w])
    out = A.crop_resize(x, torch.tensor(boxes, dtype=torch.float32), size, flip)
    for i, (top, left, h, w) in enumerate(boxes):
        ref = TF.resized_crop(x[i], top, left, h, w, [size, size], antialias=False)
        ref = torch.flip(ref, dims=[-1]) if flip[i] else ref
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Colour ops against torchvision, per image with the same factors


@pytest.mark.parametrize("ours, theirs", [
    (A.adjust_brightness, TF.adjust_brightness),
    (A.adjust_contrast, TF.adjust_contrast),
    (A.adjust_saturation, TF.adjust_saturation),
])
@pytest.mark.parametrize("channels", [1, 3])
def test_blend_ops_match_torchvision(ours, theirs, channels):
    x = _colours(6)[:, :channels]
    factors = torch.tensor([0.0, 0.3, 1.0, 1.4, 1.8, 2.5])
    out = ours(x, factors)
    ref = torch.stack([theirs(x[i], float(f)) for i, f in enumerate(factors)])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_hue_matches_torchvision():
    x = _colours(9)
    shifts = torch.tensor([-0.5, -0.37, -0.1, -1e-3, 0.0, 0.05, 0.2, 0.45, 0.5])
    out = A.adjust_hue(x, shifts)
    ref = torch.stack([TF.adjust_hue(x[i], float(s)) for i, s in enumerate(shifts)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.equal(out[4], x[4])  # a zero shift is exact
    assert torch.equal(A.adjust_hue(x[:, :1], shifts), x[:, :1])  # no-op on grayscale images


def test_grayscale_and_solarize_match_torchvision():
    x = _colours(4)
    torch.testing.assert_close(A.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    for t in (0.0, 0.3, 0.5, 1.0):
        torch.testing.assert_close(A.solarize(x, t), TF.solarize(x, t), atol=0, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 5, 9])
def test_gaussian_blur_matches_torchvision(kernel_size):
    x = torch.rand(5, 3, 16, 13, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.1, 0.5, 1.0, 1.7, 2.0])
    out = A.gaussian_blur(x, sigmas, kernel_size)
    ref = torch.stack([TF.gaussian_blur(x[i], [kernel_size] * 2, [float(s)] * 2) for i, s in enumerate(sigmas)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)  # reflect padding as torchvision: borders too


def test_blur_kernel_size_follows_simclr():
    assert [A.blur_kernel_size(s, 0.1) for s in (224, 96, 32, 28, 20, 19, 16)] == [23, 9, 3, 3, 3, 1, 1]


def test_pipeline_blur_and_solarize_apply_the_documented_op():
    x = _images(3, 3, 32)
    base = x.float() / 255
    blurred = _one_view(ViewSpec(**IDENTITY_CROP, **{**PLAIN, "blur_p": 1.0}, blur_sigma=(1.5, 1.5)))(x, _gen(0))[0]
    ref = torch.stack([TF.gaussian_blur(base[i], [3, 3], [1.5, 1.5]) for i in range(3)])
    torch.testing.assert_close(blurred, ref, atol=1e-5, rtol=0)
    solar = _one_view(ViewSpec(**IDENTITY_CROP, **{**PLAIN, "solarize_p": 1.0}, solarize_threshold=0.4))(x, _gen(0))[0]
    torch.testing.assert_close(solar, torch.where(base >= 0.4, 1 - base, base), atol=1e-5, rtol=0)
    gray = _one_view(ViewSpec(**IDENTITY_CROP, **{**PLAIN, "grayscale_p": 1.0}))(x, _gen(0))[0]
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(base, 3), atol=1e-5, rtol=0)


def test_pipeline_jitter_equals_torchvision_in_fixed_order_with_the_sampled_factors():
    spec = ViewSpec(**IDENTITY_CROP, **{**PLAIN, "jitter_p": 0.7}, brightness=0.5, contrast=0.6, saturation=0.7,
                    hue=0.3)
    x = _images(12, 3, 16)
    out = _one_view(spec, size=16)(x, _gen(4))[0]
    p = A.sample_view_params(spec, 12, 16, 16, _gen(4))
    assert 0 < int(p.jitter.sum()) < 12
    for i in range(12):
        ref = x[i].float() / 255
        if p.jitter[i]:
            ref = TF.adjust_brightness(ref, float(p.brightness[i]))
            ref = TF.adjust_contrast(ref, float(p.contrast[i]))
            ref = TF.adjust_saturation(ref, float(p.saturation[i]))
            ref = TF.adjust_hue(ref, float(p.hue[i]))
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_jitter_with_probability_zero_or_zero_strength_changes_nothing():
    x = _images(4, 3, 16)
    off = _one_view(ViewSpec(**IDENTITY_CROP, **PLAIN), size=16)(x, _gen(0))[0]
    weak = _one_view(ViewSpec(**IDENTITY_CROP, **{**PLAIN, "jitter_p": 1.0}, brightness=0, contrast=0,
                              saturation=0, hue=0), size=16)(x, _gen(0))[0]
    assert torch.equal(off, weak)


# ------------------------------------------------------------------------------------------------
# Statistics of the sampled parameters


def _binomial_ok(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


def test_probabilities_are_respected():
    n = 20_000
    spec = ViewSpec(flip_p=0.5, jitter_p=0.8, grayscale_p=0.2, blur_p=0.1, solarize_p=0.3)
    p = A.sample_view_params(spec, n, 32, 32, _gen(0))
    for mask, prob in ((p.flip, 0.5), (p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.1), (p.solarize, 0.3)):
        assert _binomial_ok(int(mask.sum()), n, prob), (int(mask.sum()), prob)
    # Factors in torchvision's ranges where jitter is on, identity where off.
    on, off = p.jitter, ~p.jitter
    factors = ((p.brightness, spec.brightness), (p.contrast, spec.contrast), (p.saturation, spec.saturation))
    for factor, strength in factors:
        assert factor[on].min() >= 1 - strength and factor[on].max() <= 1 + strength
        assert (factor[off] == 1).all()
        assert abs(float(factor[on].mean()) - 1.0) < 0.01
    assert p.hue[on].abs().max() <= spec.hue and (p.hue[off] == 0).all()
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0


def test_flip_frequency_in_the_output():
    x = torch.zeros(4000, 1, 8, 8, dtype=torch.uint8)
    x[..., :4] = 255  # left half white
    out = _one_view(ViewSpec(**IDENTITY_CROP, **{**PLAIN, "flip_p": 0.5}), channels=1, size=8)(x, _gen(1))[0]
    flipped = out[:, 0, 0, 0] < 0.5
    assert _binomial_ok(int(flipped.sum()), 4000, 0.5)


@pytest.mark.parametrize("scale, ratio", [((0.2, 0.5), (3 / 4, 4 / 3)), ((0.05, 0.14), (0.5, 2.0))])
def test_crop_areas_and_ratios_fall_in_range(scale, ratio):
    n = 5000
    boxes = A.sample_view_params(ViewSpec(crop_scale=scale, crop_ratio=ratio), n, 28, 28, _gen(0)).boxes
    top, left, h, w = boxes.unbind(1)
    area = h * w / (28 * 28)
    assert area.min() >= scale[0] - 1e-5 and area.max() <= scale[1] + 1e-5
    assert abs(float(area.mean()) - sum(scale) / 2) < 0.01 * sum(scale)  # uniform in area (never rejected)
    log_r = torch.log(w / h)
    assert log_r.min() >= math.log(ratio[0]) - 1e-5 and log_r.max() <= math.log(ratio[1]) + 1e-5
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28 + 1e-4).all() and (left + w <= 28 + 1e-4).all()
    # Crop positions cover the image: both ends of the free range are used.
    assert float((top / (28 - h)).min()) < 0.01 and float((top / (28 - h)).max()) > 0.99


@pytest.mark.parametrize("height, width", [(224, 224), (160, 240)])
def test_crop_distribution_matches_torchvision_get_params(height, width):
    # Same rejection sampling as torchvision (large crops that do not fit are redrawn), so the
    # distribution of areas, ratios and positions agrees, up to torchvision's rounding to pixels.
    n = 4000
    boxes = A.sample_view_params(ViewSpec(), n, height, width, _gen(0)).boxes
    torch.manual_seed(0)
    params = [v2.RandomResizedCrop.get_params(torch.empty(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
              for _ in range(n)]
    ref = torch.tensor(params, dtype=torch.float32)  # (top, left, h, w)

    def summary(b: torch.Tensor) -> torch.Tensor:
        area = b[:, 2] * b[:, 3] / (height * width)
        centre_y = (b[:, 0] + b[:, 2] / 2) / height
        stats = [area.mean(), centre_y.mean(), centre_y.std(), torch.log(b[:, 3] / b[:, 2]).mean()]
        return torch.cat([torch.stack(stats), torch.quantile(area, torch.tensor([0.1, 0.5, 0.9]))])

    torch.testing.assert_close(summary(boxes), summary(ref), atol=0.03, rtol=0)
    if height == width:  # rejection favours small crops: mean area below the unrejected 0.54
        assert 0.40 < float(summary(boxes)[0]) < 0.52


# ------------------------------------------------------------------------------------------------
# Registry and validation


def test_every_documented_recipe_is_registered():
    expected = {"simclr", "simclr-small", "byol", "byol-small", "mocov2", "mocov2-small", "crop-only",
                "simclr-no-color", "linear-eval", "multicrop-small"}
    assert expected <= set(A.list_augment_recipes())
    assert len(A.get_augment_recipe("linear-eval").views) == 1
    assert len(A.get_augment_recipe("multicrop-small").views) == 6
    byol = A.get_augment_recipe("byol").views
    assert (byol[0].blur_p, byol[0].solarize_p, byol[1].blur_p, byol[1].solarize_p) == (1.0, 0.0, 0.1, 0.2)
    simclr = A.get_augment_recipe("simclr").views[0]
    colour = (simclr.brightness, simclr.contrast, simclr.saturation, simclr.hue)
    assert colour == (0.8, 0.8, 0.8, 0.2) and simclr.blur_p == 0.5
    assert A.get_augment_recipe("mocov2").views[0].crop_scale == (0.2, 1.0)
    for name in ("simclr-small", "byol-small", "mocov2-small", "multicrop-small", "crop-only"):
        assert all(v.blur_p == 0 for v in A.get_augment_recipe(name).views), name
    for name in A.list_augment_recipes():
        assert A.get_augment_recipe(name).source.strip()


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        A.get_augment_recipe("simclr-smal")
    msg = str(info.value)
    assert "simclr-smal" in msg and "Did you mean 'simclr-small'" in msg and "byol-small" in msg


def test_duplicate_recipe_is_an_error():
    with pytest.raises(ConfigError, match="already registered"):
        A.register_augment_recipe(AugmentRecipe("simclr", (ViewSpec(),), "duplicate"))


@pytest.mark.parametrize("kwargs", [
    {"flip_p": 1.5}, {"jitter_p": -0.1}, {"grayscale_p": 2}, {"blur_p": 1.01}, {"solarize_p": -1},
    {"crop_scale": (0.0, 1.0)}, {"crop_scale": (0.5, 0.2)}, {"crop_scale": (0.5, 1.5)}, {"crop_scale": (0.5,)},
    {"crop_ratio": (0.0, 1.0)}, {"crop_ratio": (2.0, 1.0)}, {"hue": 0.6}, {"hue": -0.1}, {"brightness": -1},
    {"blur_sigma": (0.0, 1.0)}, {"blur_kernel_frac": 0.0}, {"size": 0}, {"size": 3.5}, {"relative_size": 0},
    {"solarize_threshold": 1.5}, {"contrast": "0.4"},
])
def test_invalid_view_spec_is_a_config_error(kwargs):
    with pytest.raises(ConfigError):
        ViewSpec(**kwargs)


def test_recipe_validation():
    with pytest.raises(ConfigError):
        AugmentRecipe("x", (), "source")
    with pytest.raises(ConfigError):
        AugmentRecipe("x", (ViewSpec(),), "")
    assert AugmentRecipe("x", [ViewSpec()], "s").views == (ViewSpec(),)  # lists become tuples


# ------------------------------------------------------------------------------------------------
# Evaluation preprocessing


def test_to_float_normalized():
    x = _images(3, 3, 12)
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.1, 0.3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    out = A.to_float_normalized(x, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (x.float() / 255 - m) / s, atol=1e-6, rtol=0)
    torch.testing.assert_close(A.to_float_normalized(x, mean, std, size=12), out)
    resized = A.to_float_normalized(x, mean, std, size=7)
    ref = F.interpolate(x.float() / 255, size=(7, 7), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(resized, (ref - m) / s, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        A.to_float_normalized(x, (0.5,), (0.5,))


# ------------------------------------------------------------------------------------------------
# The throughput benchmark script


def test_bench_augment_runs_and_its_torchvision_pipeline_is_the_same_recipe(capsys):
    from sslbench.benchmark import bench_augment

    argv = ["--synthetic", "--size", "16", "--channels", "3", "--batch", "4", "--repeats", "1",
            "--min-time", "0", "--device", "cpu", "--threads", "1", "--recipe", "byol"]
    assert bench_augment.main(argv) == 0
    printed = capsys.readouterr().out
    assert "batched / per-image =" in printed and "per-image (torchvision v2 loop, cpu)" in printed
    assert bench_augment.main(["--recipe", "nope", "--synthetic"]) == 2
    view = A.get_augment_recipe("byol").views[1]
    names = [type(t).__name__ for t in bench_augment.torchvision_view(view, 224, (0.5,) * 3, (0.25,) * 3).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale", "RandomApply",
                     "RandomSolarize", "ToDtype", "Normalize"]
    out = bench_augment.torchvision_view(view, 24, (0.0,) * 3, (1.0,) * 3)(_images(1, 3, 32)[0])
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


# ------------------------------------------------------------------------------------------------
# Derived recipes: augmentation ablations by name

# The knobs each transform turns off (crop off = the whole image resized).
_KNOBS = {
    "crop": {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}, "flip": {"flip_p": 0.0},
    "jitter": {"jitter_p": 0.0}, "grayscale": {"grayscale_p": 0.0}, "color": {"jitter_p": 0.0, "grayscale_p": 0.0},
    "blur": {"blur_p": 0.0}, "solarize": {"solarize_p": 0.0},
}  # fmt: skip


def _expected(base: str, *transforms: str) -> tuple[ViewSpec, ...]:
    off = {k: v for t in transforms for k, v in _KNOBS[t].items()}
    return tuple(dataclasses.replace(v, **off) for v in A.get_augment_recipe(base).views)


@pytest.mark.parametrize("base, t", [("byol", t) for t in A.AUGMENT_TRANSFORMS] + [("fmnist-quick", "color"),
                                     ("fmnist-quick", "crop"), ("multicrop-small", "grayscale")])
def test_no_recipe_turns_exactly_the_named_knobs_off(base, t):
    recipe = A.get_augment_recipe(f"{base}-no-{t}")
    assert recipe.name == f"{base}-no-{t}"
    assert recipe.views == _expected(base, t)  # every other field (strengths, sizes, views) is the base's
    assert recipe.views != A.get_augment_recipe(base).views
    assert f"Derived from '{base}'" in recipe.source and A.get_augment_recipe(base).source in recipe.source


def test_no_recipes_combine_in_any_order():
    a = A.get_augment_recipe("byol-no-blur-no-solarize")
    b = A.get_augment_recipe("byol-no-solarize-no-blur")
    assert a.views == b.views == _expected("byol", "blur", "solarize")
    assert (a.name, b.name) == ("byol-no-blur-no-solarize", "byol-no-solarize-no-blur")
    assert A.get_augment_recipe("simclr-no-crop-no-flip-no-color-no-blur").views == _expected(
        "simclr", "crop", "flip", "color", "blur")
    assert A.derive_augment_recipe("byol", drop=["blur", "solarize"]).views == a.views
    assert A.derive_augment_recipe("byol", drop=["blur"]).name == "byol-no-blur"


def test_only_recipe_keeps_exactly_the_named_transforms():
    assert A.get_augment_recipe("simclr-only-crop+color").views == _expected("simclr", "flip", "blur", "solarize")
    assert A.get_augment_recipe("simclr-only-color+crop").views == _expected("simclr", "flip", "blur", "solarize")
    only_flip = A.get_augment_recipe("byol-only-flip").views
    assert only_flip == _expected("byol", "crop", "color", "blur", "solarize")
    assert only_flip[0].crop_scale == only_flip[0].crop_ratio == (1.0, 1.0) and only_flip[0].flip_p == 0.5
    jitter = A.get_augment_recipe("simclr-only-crop+jitter").views[0]
    assert (jitter.jitter_p, jitter.grayscale_p, jitter.brightness) == (0.8, 0.0, 0.8)
    assert "with only crop + jitter" in A.get_augment_recipe("simclr-only-crop+jitter").source
    assert A.derive_augment_recipe("simclr", keep=["crop", "color"]).name == "simclr-only-crop+color"


def test_registered_names_win_and_are_the_longest_base():
    registered = A.get_augment_recipe("simclr-no-color")  # registered: derived from simclr-small
    assert "Derived" not in registered.source and registered.views[0].blur_p == 0.0
    assert A.get_augment_recipe("simclr-no-color-no-flip").views == _expected("simclr-no-color", "flip")
    assert A.get_augment_recipe("crop-only-no-flip").views == _expected("crop-only", "flip")  # not crop + '-only-'
    assert A.get_augment_recipe("crop-only-only-flip").views == _expected("crop-only", "crop")
    assert A.get_augment_recipe("simclr-small-no-color").views == _expected("simclr-small", "color")


def test_derived_recipes_are_not_listed():
    before = A.list_augment_recipes()
    A.get_augment_recipe("byol-no-blur")
    assert A.list_augment_recipes() == before and "byol-no-blur" not in before


def test_crop_off_is_the_whole_image_resized():
    x = _images(6, 3, 16)
    crop_off = A.get_augment_recipe("crop-only-no-crop")  # flip only
    out = BatchAugment(crop_off, [0.0] * 3, [1.0] * 3, 16)(x, _gen(0))[0]
    ref = x.float() / 255
    same = [torch.allclose(o, r, atol=1e-6) or torch.allclose(o, r.flip(-1), atol=1e-6) for o, r in zip(out, ref)]
    assert all(same)
    small = dataclasses.replace(crop_off.views[0], size=8, flip_p=0.0)
    resized = BatchAugment(AugmentRecipe("t", (small,), "t"), [0.0] * 3, [1.0] * 3, 16)(x, _gen(0))[0]
    torch.testing.assert_close(resized, F.interpolate(ref, size=(8, 8), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("name, error, fragments", [
    ("byol-no-colour", ConfigError, ["'colour'", "Valid transforms: crop, flip, color, jitter, grayscale, blur, solarize"]),
    ("byol-only-crop+", ConfigError, ["transform ''", "Valid transforms"]),
    ("byol-no-flip-no-flip", ConfigError, ["'flip' twice"]),
    ("byol-no-color-no-jitter", ConfigError, ["'jitter' twice (color = jitter + grayscale)"]),
    ("fmnist-quick-no-blur", ConfigError, ["no view of 'fmnist-quick' applies", "crop, flip, color, jitter"]),
    ("fmnist-quick-only-solarize", ConfigError, ["'solarize', which no view"]),
    ("fmnist-quick-only-crop+flip+color", ConfigError, ["keeps every transform 'fmnist-quick' applies"]),
    ("byoll-no-blur", UnknownNameError, ["Unknown augmentation recipe 'byoll'", "Did you mean 'byol'",
                                         "derived from 'byoll'", "<recipe>-no-<t>"]),
    ("nope-only-crop", UnknownNameError, ["Unknown augmentation recipe 'nope'", "Valid augmentation recipes"]),
    ("nope", UnknownNameError, ["Unknown augmentation recipe 'nope'", "<recipe>-only-<t1>[+<t2>...]"]),
])  # fmt: skip
def test_derived_name_errors(name, error, fragments):
    with pytest.raises(error) as info:
        A.get_augment_recipe(name)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_derive_needs_drop_or_keep():
    for kwargs in ({}, {"drop": ["blur"], "keep": ["crop"]}, {"keep": []}):
        with pytest.raises(ConfigError, match="drop or keep"):
            A.derive_augment_recipe("byol", **kwargs)
    with pytest.raises(UnknownNameError):
        A.derive_augment_recipe("nope", drop=["blur"])


def test_derived_name_passes_config_overrides_hash_and_the_cli(capsys):
    from sslbench.benchmark.cli import main
    from sslbench.benchmark.recipes import resolve
    from sslbench.benchmark.sweep import expand, sweep_from_dict

    base = resolve("simclr-quick")
    cfg = resolve("simclr-quick", ["augment=fmnist-quick-no-color"])
    assert cfg.augment == "fmnist-quick-no-color" and cfg.hash() != base.hash()
    assert A.get_augment_recipe(cfg.augment).views == _expected("fmnist-quick", "color")
    assert main(["config", "--recipe", "simclr-quick", "--set", "augment=fmnist-quick-no-color"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["augment"] == "fmnist-quick-no-color" and printed["config_hash"] == cfg.hash()
    spec = sweep_from_dict({"recipe": "simclr-quick", "name": "aug",
                            "axes": {"augment": ["fmnist-quick", "fmnist-quick-no-color", "fmnist-quick-only-crop"]}})
    assert sorted(c.config.augment for c in expand(spec)) == [
        "fmnist-quick", "fmnist-quick-no-color", "fmnist-quick-only-crop"]
