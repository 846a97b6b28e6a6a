"""ContrastiveCrop: boxes from heat maps, centre-suppressed sampling, config, engine resume."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats
from torch import nn

from sslbench.benchmark.augment import BatchAugment, _crop_boxes, get_augment_recipe, sample_view_params
from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.checkpoint import load_checkpoint
from sslbench.benchmark.config import (
    Config,
    CropConfig,
    DataConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
)
from sslbench.benchmark.contrastive_crop import (
    ContrastiveCropSampler,
    beta_columns,
    boxes_from_heat_maps,
    check_feature_map,
    heat_maps,
    is_localization_epoch,
    last_feature_map,
    symmetric_beta,
)
from sslbench.benchmark.engine import identity_tags, pretrain
from sslbench.benchmark.errors import ConfigError
from sslbench.benchmark.recipes import resolve

# The commit before ContrastiveCrop existed, and hashes computed there (its benchmark/config.py).
PRE_CCROP_COMMIT = "b20d2d1f9391d3049e314058f5658c19313add2a"
SIMCLR_QUICK_HASH = "65b90f57cc5e3fed"
DIRECT_CONFIG_HASH = "0e26e79cb0b4e248"


def _naive_box(heat, threshold):
    """The official update_box, one image at a time: rows / columns whose max exceeds k."""
    height, width = heat.shape
    rows = [r for r in range(height) if max(heat[r].tolist()) > threshold]
    cols = [c for c in range(width) if max(heat[:, c].tolist()) > threshold]
    if not rows:
        return [0.0, 0.0, 1.0, 1.0]
    return [rows[0] / height, cols[0] / width, (rows[-1] + 1) / height, (cols[-1] + 1) / width]


# ---------------------------------------------------------------------------------------------
# Localisation
# ---------------------------------------------------------------------------------------------


def test_box_of_a_bright_square_is_that_square():
    features = torch.zeros(2, 3, 16, 16)
    features[0, :, 4:10, 3:12] = 1.0  # rows 4..9, columns 3..11
    features[1, 1, 0:16, 7:8] = 5.0  # one full-height column
    boxes = boxes_from_heat_maps(heat_maps(features, (16, 16)), 0.1)
    assert boxes.tolist() == [[4 / 16, 3 / 16, 10 / 16, 12 / 16], [0.0, 7 / 16, 1.0, 8 / 16]]


def test_heat_map_is_normalised_channel_sum_and_box_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    features = torch.rand(5, 4, 6, 6, generator=g, dtype=torch.float64)
    heat = heat_maps(features, (6, 6))  # same size: no interpolation
    for f, h in zip(features, heat):
        s = f.sum(dim=0)
        assert torch.allclose(h, ((s - s.min()) / (s.max() - s.min())).float(), atol=1e-6)
    # The official sums channels; a mean (or any positive scale) gives the same normalised map.
    assert torch.allclose(heat_maps(features.mean(dim=1, keepdim=True), (6, 6)), heat, atol=1e-6)
    up = heat_maps(features, (24, 24))
    assert up.shape == (5, 24, 24) and up.min() >= 0 and up.max() <= 1
    for k in (0.0, 0.3, 0.7):
        got = boxes_from_heat_maps(up, k)
        assert torch.allclose(got.double(), torch.tensor([_naive_box(h, k) for h in up], dtype=torch.float64))


def test_threshold_behaviour():
    ramp = torch.arange(16, dtype=torch.float32)
    heat = (1 - (ramp[:, None] - 7.5).abs() / 7.5) * (1 - (ramp[None, :] - 7.5).abs() / 7.5)  # a pyramid
    areas = []
    for k in (0.0, 0.2, 0.5, 0.8):
        top, left, bottom, right = boxes_from_heat_maps(heat[None], k)[0].tolist()
        areas.append((bottom - top) * (right - left))
    assert areas == sorted(areas, reverse=True) and areas[-1] < areas[0]
    step = torch.zeros(1, 8, 8)
    step[0, 2:4, 2:4] = 0.5
    assert boxes_from_heat_maps(step, 0.5).tolist() == [[0.0, 0.0, 1.0, 1.0]]  # strictly above k
    assert boxes_from_heat_maps(step, 0.49).tolist() == [[0.25, 0.25, 0.5, 0.5]]
    # A constant feature map has nothing to localise: the whole image.
    flat = heat_maps(torch.ones(1, 3, 4, 4), (8, 8))
    assert torch.equal(flat, torch.zeros(1, 8, 8))
    assert boxes_from_heat_maps(flat, 0.1).tolist() == [[0.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize("backbone, shape", [
    ("small-cnn", (2, 256, 2, 2)), ("resnet18-small", (2, 512, 2, 2)), ("vit-tiny-small", (2, 192, 4, 4))])
def test_feature_map_extractor(backbone, shape):
    torch.manual_seed(0)
    encoder, _ = build_backbone(backbone, 1, 16)
    encoder.eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        fmap = last_feature_map(encoder, x, backbone)
        assert fmap.shape == shape
        if backbone != "vit-tiny-small":  # CNNs: the features are the map's global average
            assert torch.allclose(fmap.mean(dim=(2, 3)), encoder(x), atol=1e-5)
    check_feature_map(encoder, backbone, 1, 16)


def test_backbone_without_a_feature_map_is_a_clear_error():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(256, 8))
    with pytest.raises(ConfigError, match="backbone 'my-mlp'"):
        check_feature_map(flat, "my-mlp", 1, 16)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.6, 1.0, 2.0])
def test_symmetric_beta_matches_scipy(alpha):
    n = 20_000
    u = torch.rand(n, beta_columns(alpha), generator=torch.Generator().manual_seed(1))
    x = symmetric_beta(u, alpha).double()
    assert x.min() >= 0 and x.max() <= 1
    # The CDF at interior points, within 4 binomial standard errors. (Not a KS test: for small
    # alpha a few % of the mass lies within 1e-16 of 1 and rounds to exactly 1.0, and such ties
    # break the KS statistic.)
    for q in (0.001, 0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 0.999):
        p = stats.beta.cdf(q, alpha, alpha)
        assert abs((x <= q).double().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5, q


def _sample(boxes, alpha, size=32, scale=(0.01, 0.02), seed=0):
    sampler = ContrastiveCropSampler(boxes, alpha)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(boxes.shape[0], 22, generator=g)
    return sampler(u, size, size, scale, (3 / 4, 4 / 3), g)


def test_crop_centres_lie_in_the_box_and_are_centre_suppressed():
    n, size = 20_000, 32
    box = torch.tensor([0.25, 0.5, 0.75, 1.0]).expand(n, 4)  # rows 8-24, columns 16-32
    fractions = {}
    for alpha in (0.1, 0.6, 1.0, 2.0):
        top, left, h, w = _sample(box, alpha).unbind(dim=1)
        cy, cx = top + h / 2, left + w / 2
        assert (cy >= 8 - 1e-4).all() and (cy <= 24 + 1e-4).all()  # small crops: never clamped vertically
        assert (cx >= 16 - 1e-4).all() and (left + w <= size + 1e-4).all()  # clamped at the right edge
        t = (cy - 8) / 16
        fractions[alpha] = ((t > 1 / 3) & (t < 2 / 3)).float().mean().item()
    assert fractions[0.1] < fractions[0.6] < 0.30 < fractions[1.0] < 0.36 < fractions[2.0]


def test_large_crops_stay_in_the_image_and_the_whole_box_with_alpha_1_is_random_resized_crop():
    n, size = 20_000, 32
    corner = torch.tensor([0.0, 0.0, 0.3, 0.3]).expand(n, 4)
    top, left, h, w = _sample(corner, 0.6, scale=(0.2, 1.0)).unbind(dim=1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= size + 1e-4).all() and (left + w <= size + 1e-4).all()
    # Whole-image box, uniform centres: the crop's start is uniform over [0, side - extent].
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(n, 4)
    top, left, h, w = _sample(whole, 1.0, scale=(0.2, 0.5)).unbind(dim=1)
    for start, extent in ((top, h), (left, w)):
        assert stats.kstest((start / (size - extent)).double().numpy(), "uniform").pvalue > 1e-3


def test_only_the_crop_placement_changes():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    spec = get_augment_recipe("simclr").views[0]
    sampler = ContrastiveCropSampler(torch.tensor([0.1, 0.2, 0.6, 0.9]).expand(64, 4), 0.6)
    plain = sample_view_params(spec, 64, 32, 32, g1)
    ccrop = sample_view_params(spec, 64, 32, 32, g2, sampler)
    assert torch.equal(plain.boxes[:, 2:], ccrop.boxes[:, 2:])  # RandomResizedCrop's sizes
    assert not torch.equal(plain.boxes[:, :2], ccrop.boxes[:, :2])
    for name in ("flip", "jitter", "brightness", "contrast", "saturation", "hue", "gray", "blur", "sigma",
                 "solarize"):
        assert torch.equal(getattr(plain, name), getattr(ccrop, name)), name


def _augment_at(commit):
    """benchmark/augment.py as of ``commit`` (importable on its own: it imports only errors)."""
    root = Path(__file__).resolve().parents[1]
    try:
        text = subprocess.run(["git", "show", f"{commit}:benchmark/augment.py"], cwd=root, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout with the pre-ContrastiveCrop commit")
    spec = importlib.util.spec_from_loader("augment_before_ccrop", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules["augment_before_ccrop"] = module  # dataclasses look their module up
    try:
        exec(compile(text, "augment_before_ccrop", "exec"), module.__dict__)  # noqa: S102
    finally:
        del sys.modules["augment_before_ccrop"]
    return module


def test_random_mode_views_are_bit_identical_to_before_contrastive_crop():
    before = _augment_at(PRE_CCROP_COMMIT)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
    for name in ("simclr", "byol", "multicrop-small"):
        old = before.BatchAugment(before.get_augment_recipe(name), (0.5,) * 3, (0.25,) * 3, 32)
        new = BatchAugment(get_augment_recipe(name), (0.5,) * 3, (0.25,) * 3, 32)
        views_old = old(images, torch.Generator().manual_seed(3))
        views_new = new(images, torch.Generator().manual_seed(3))
        assert all(torch.equal(a, b) for a, b in zip(views_old, views_new)), name
    u = torch.rand(50, 22, generator=torch.Generator().manual_seed(2))
    assert torch.equal(before._crop_boxes(u, 28, 20, (0.08, 1.0), (0.75, 4 / 3)),
                       _crop_boxes(u, 28, 20, (0.08, 1.0), (0.75, 4 / 3)))


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def test_hash_and_stored_form_ignore_a_default_crop_section():
    direct = Config(method="simclr", backbone="small-cnn", augment="fmnist-quick",
                    method_args={"temperature": 0.2},
                    data=DataConfig(dataset="fashion-mnist-mini", batch_size=256),
                    optim=OptimConfig(name="adamw", base_lr=1e-3, weight_decay=1e-6, warmup_epochs=1,
                                      final_lr_ratio=0.1),
                    train=TrainConfig(epochs=22))
    assert direct.hash() == DIRECT_CONFIG_HASH and "crop" not in direct.to_dict()
    ccrop = resolve("simclr-quick", ["crop.mode=ccrop"])
    assert ccrop.hash() != resolve("simclr-quick").hash()
    assert ccrop.to_dict()["crop"]["mode"] == "ccrop"
    assert config_from_dict(ccrop.to_dict()) == ccrop
    assert resolve("simclr-quick", ["crop.alpha=0.6"]) == resolve("simclr-quick")  # the default value


def test_simclr_quick_hash_is_unchanged():
    assert resolve("simclr-quick").hash() == SIMCLR_QUICK_HASH


@pytest.mark.parametrize("override", ["crop.mode=center", "crop.alpha=0", "crop.alpha=-1", "crop.threshold=1",
                                      "crop.threshold=-0.1", "crop.warmup_epochs=-1", "crop.update_every=0",
                                      "crop.warmup_epochs=1.5", "crop.size=3"])
def test_bad_crop_values_are_clear_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        resolve("simclr-quick", [override])


def test_only_ccrop_runs_carry_a_crop_tag():
    cpu = torch.device("cpu")
    assert "crop" not in identity_tags(resolve("simclr-quick"), cpu)
    assert identity_tags(resolve("simclr-ccrop-quick"), cpu)["crop"] == "ccrop"


def test_localization_schedule():
    crop = CropConfig(mode="ccrop", warmup_epochs=3, update_every=2)
    assert [e for e in range(10) if is_localization_epoch(e, crop)] == [3, 5, 7, 9]
    assert not any(is_localization_epoch(e, CropConfig(warmup_epochs=0, update_every=1)) for e in range(5))


def test_recipes():
    for name, method in (("simclr-ccrop-quick", "simclr"), ("byol-ccrop-quick", "byol"),
                         ("simclr-ccrop-cifar10", "simclr"), ("mocov2-ccrop-imagenet", "mocov2")):
        cfg = resolve(name)
        assert cfg.method == method and cfg.crop.mode == "ccrop" and cfg.crop.threshold == 0.1


# ---------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------

TINY = ["data.dataset=synthetic", "data.batch_size=32", "train.epochs=3", "augment=simclr-small",
        "train.device=cpu", "crop.mode=ccrop", "crop.warmup_epochs=1", "crop.update_every=1"]
HEADS = {"simclr": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
         "byol": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32"]}


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_ccrop_run_resumed_after_epoch_2_is_bit_identical(tmp_path, method):
    cfg = resolve(f"{method}-ccrop-quick", TINY + HEADS[method])
    full = pretrain(cfg, tmp_path / "full", tracking=None, progress=False)
    part = pretrain(cfg, tmp_path / "part", tracking=None, progress=False, stop_after_epochs=2)
    assert "ccrop_boxes" in load_checkpoint(part.checkpoint)
    resumed = pretrain(cfg, tmp_path / "part", resume=True, tracking=None, progress=False)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert torch.equal(a["ccrop_boxes"], b["ccrop_boxes"]) and a["ccrop_boxes"].shape == (256, 4)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["train/loss"] for h in a["history"]] == [h["train/loss"] for h in b["history"]]
    areas = [h.get("train/ccrop_box_area") for h in a["history"]]
    assert areas[0] is None and all(0 < x <= 1 for x in areas[1:])  # localised at epochs 2 and 3


def test_before_warm_up_ccrop_trains_exactly_as_random_crops(tmp_path):
    base = ["data.dataset=synthetic", "data.batch_size=32", "train.epochs=1", "augment=simclr-small",
            "train.device=cpu"] + HEADS["simclr"]
    plain = pretrain(resolve("simclr-quick", base), tmp_path / "a", tracking=None, progress=False)
    ccrop_cfg = resolve("simclr-quick", base + ["crop.mode=ccrop", "crop.warmup_epochs=1"])
    ccrop = pretrain(ccrop_cfg, tmp_path / "b", tracking=None, progress=False)
    a, b = load_checkpoint(plain.checkpoint), load_checkpoint(ccrop.checkpoint)
    assert "ccrop_boxes" not in a and "ccrop_boxes" not in b
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
