"""What the view-based and pretext methods added to the method protocol, once for all methods:
colour spaces, encoder wrappers rebuilt from checkpoints, view geometry, the epoch-start hook, the
colour dataset and the grayscale error of colour methods."""

import numpy as np
import pytest
import torch

from sslbench.benchmark.augment import BatchAugment, get_augment_recipe
from sslbench.benchmark.color import lab_to_rgb, rgb_to_lab, rgb_to_ycbcr, unnormalize
from sslbench.benchmark.datasets import colorize_fashion_mnist, load_dataset
from sslbench.benchmark.engine import view_geometry
from sslbench.benchmark.errors import ConfigError
from sslbench.methods.base import InputSpec
from sslbench.methods.encoders import ColorSplitEncoder, EncoderSpec, build_encoder, parse_groups


def test_lab_matches_reference_values_and_round_trips():
    # CIE reference values (sRGB D65): white, black, pure red, green, blue.
    rgb = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    lab = rgb_to_lab(rgb.T[None, :, :, None])[0, :, :, 0].T
    expected = torch.tensor([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                             [32.30, 79.19, -107.86]], dtype=torch.float64)
    torch.testing.assert_close(lab, expected, atol=0.02, rtol=0)
    x = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-6, rtol=0)
    x32 = x.float()
    assert (lab_to_rgb(rgb_to_lab(x32)) - x32).abs().max() < 2e-3  # float32: within 1/2 of a uint8 level


def test_ycbcr_and_unnormalize():
    gray = torch.full((1, 3, 2, 2), 0.4)
    torch.testing.assert_close(rgb_to_ycbcr(gray), torch.tensor([0.4, 0.5, 0.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2))
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(unnormalize(normed, mean, std), x)


def test_parse_groups():
    assert parse_groups("0|1,2") == [[0], [1, 2]]
    assert parse_groups([[2], [0, 1]]) == [[2], [0, 1]]
    for bad in ("0|0", "0|3", "0|", "a|b"):
        with pytest.raises(ConfigError):
            parse_groups(bad)


def test_color_split_encoder_sees_lab_channels():
    spec = InputSpec(3, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    enc, dim = build_encoder("small-cnn", spec, EncoderSpec("color-split", {"space": "lab", "groups": "0|1,2"}))
    assert isinstance(enc, ColorSplitEncoder) and dim == 512 and enc.dims == [256, 256]
    x = torch.randn(2, 3, 16, 16)
    l_in, ab_in = enc.group_inputs(x)
    lab = rgb_to_lab(unnormalize(x, spec.mean, spec.std).clamp(0, 1))
    torch.testing.assert_close(l_in, lab[:, :1] / 50 - 1, atol=1e-4, rtol=0)
    torch.testing.assert_close(ab_in, lab[:, 1:] / 110, atol=1e-4, rtol=0)
    enc.eval()
    torch.testing.assert_close(enc(x), torch.cat([enc.backbones[0](l_in), enc.backbones[1](ab_in)], 1))
    with pytest.raises(ConfigError, match="needs RGB"):
        build_encoder("small-cnn", InputSpec(1, 16, (0.5,), (0.25,)), EncoderSpec("color-split", {}))


def test_view_geometry_gives_crop_fractions_and_flips():
    aug = BatchAugment(get_augment_recipe("crop-only"), (0.5,), (0.25,), 20)
    images = torch.randint(0, 256, (8, 1, 20, 20), dtype=torch.uint8)
    views, params = aug(images, torch.Generator().manual_seed(0), return_params=True)
    same = aug(images, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, same)), "return_params changes nothing else"
    geometry = view_geometry(params, 20, 20)
    assert len(geometry) == 2
    for geo, p in zip(geometry, params):
        torch.testing.assert_close(geo.boxes * 20, p.boxes.float())
        assert geo.boxes.min() >= 0 and (geo.boxes[:, 0] + geo.boxes[:, 2]).max() <= 1 + 1e-6
        assert torch.equal(geo.flip, p.flip)


def test_color_dataset_is_reproducible_colour_with_the_same_labels():
    gray = load_dataset("fashion-mnist-mini", "test")
    color = load_dataset("fashion-mnist-color-mini", "test")
    assert color.images.shape == (2000, 3, 28, 28) and torch.equal(color.labels, gray.labels)
    assert torch.equal(color.images, load_dataset("fashion-mnist-color-mini", "test").images)
    x = color.images.float()
    assert (x.max(1).values - x.min(1).values).mean() > 20, "images are coloured, not gray"
    # The garment's brightness follows the grayscale texture (L of the colour image ~ the original).
    lab = rgb_to_lab(x[:50] / 255)[:, 0]
    corr = np.corrcoef(lab.flatten().numpy(), gray.images[:50].float().flatten().numpy())[0, 1]
    assert corr > 0.8
    a = colorize_fashion_mnist(gray.images[:5, 0].numpy(), gray.labels[:5].numpy(), seed=3)
    assert np.array_equal(a, colorize_fashion_mnist(gray.images[:5, 0].numpy(), gray.labels[:5].numpy(), seed=3))


def test_wrapped_encoder_is_rebuilt_from_its_checkpoint(tmp_path):
    """CMC's two-network colour encoder, saved by the engine (0 epochs: the seeded initialisation),
    comes back through `sslbench eval`'s loader as the same module with the same outputs."""
    from sslbench.benchmark.encoders import load_any_encoder
    from sslbench.benchmark.engine import pretrain
    from sslbench.benchmark.recipes import resolve

    cfg = resolve("cmc-quick", ["train.epochs=0", "train.device=cpu"])
    result = pretrain(cfg, tmp_path / "run", tracking=None, progress=False)
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["encoder"]["wrapper"] == {"name": "color-split", "args": {"space": "lab", "groups": "0|1,2"}}
    loaded, source = load_any_encoder(result.checkpoint)
    assert isinstance(loaded, ColorSplitEncoder) and source.in_chans == 3
    x = torch.randn(4, 3, 28, 28)
    torch.testing.assert_close(loaded(x), result.encoder(x))


def test_colour_method_on_grayscale_data_is_one_clear_error(tmp_path):
    from sslbench.benchmark.engine import pretrain
    from sslbench.benchmark.recipes import resolve

    cfg = resolve("cmc-quick", ["train.epochs=0", "data.dataset=fashion-mnist-mini"])
    with pytest.raises(ConfigError, match="colour channels of RGB images.*1 channel") as err:
        pretrain(cfg, tmp_path / "run", tracking=None, progress=False)
    assert "fashion-mnist-color-mini" in str(err.value)
