"""Transfer: the encoder of every pretext / clustering / dense method runs under every protocol
(kNN, linear, semi-supervised, detection), so the leaderboard compares them on the same footing.

Each method's encoder is built at random init by ``build_method(resolve("<name>-quick"), ...)``
(3 channels and the colour data for ``needs_color`` methods) and run through tiny versions of every
protocol (60 / 30 images; one detector step on 4 canvases of 64 px, the colour set for colour
methods). The encoder wrappers -- CPC v2's patch grid, CMC's L | ab split, colorization's L-only
network -- reach detection through the ``dense_branches`` hook, checked directly against a
hand-built computation, as is the colour detection set.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from sslbench.benchmark.datasets import load_dataset
from sslbench.benchmark.engine import build_method
from sslbench.benchmark.errors import ConfigError, UnknownNameError
from sslbench.benchmark.recipes import resolve
from sslbench.methods.base import InputSpec
from sslbench.methods.registry import get_method, list_methods
from sslbench.protocols import evaluate
from sslbench.protocols.detection import build_fpn_backbone, run_detection
from sslbench.protocols.detection_data import (
    DetectionDataset,
    load_detection_dataset,
    make_embedded_detection,
)
from sslbench.protocols.linear import assert_frozen, snapshot_state
from sslbench.protocols.spec import DetectionSpec, KNNSpec, LinearSpec, SemiSupSpec

METHODS = ("cpc", "cmc", "colorization", "rotation", "jigsaw", "context", "pixpro", "deepclusterv2",
           "jigsawcluster", "exemplar", "counting")

KNN = KNNSpec(name="knn-tiny", version=1, k=5, temperature=0.1)
LINEAR = LinearSpec(name="linear-tiny", version=1, lrs=(0.1,), weight_decays=(0.0,), epochs=2, batch_size=64)
SEMISUP = SemiSupSpec(name="semisup-tiny", version=1, fraction=None, per_class=1, val_per_class=2, lrs=(0.1,),
                      epochs=1, batch_size=10)
DETECTION = DetectionSpec(name="detection-tiny", version=1, head_size="small", train_sizes=(64,), test_size=64,
                          max_size=64, iterations=1, batch_size=2, warmup_iters=1)
TINY_CANVAS: dict[str, Any] = {"canvas": 64, "object_sizes": (16, 32), "max_objects": 2}


def _registered(name: str) -> str:
    if name not in list_methods():
        pytest.skip(f"method '{name}' is not registered")
    return name


@cache
def _splits(color: bool) -> tuple[Any, Any]:
    """60 training and 30 test images of the embedded data (grayscale or its colour version)."""
    name = "fashion-mnist-color-mini" if color else "fashion-mnist-mini"
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    return train.subset(torch.arange(60)), test.subset(torch.arange(30))


@cache
def _encoder(name: str) -> tuple[Any, Any]:
    """The method's evaluated encoder at random init and the training split it was built for."""
    color = get_method(name).needs_color
    train, _ = _splits(color)
    info = train.info
    spec = InputSpec(info.channels, 28, tuple(info.mean), tuple(info.std))
    method = build_method(resolve(f"{name}-quick"), info.channels, 28, num_samples=64, input_spec=spec)
    return method.encoder, train


@cache
def _detection_splits(color: bool) -> tuple[DetectionDataset, DetectionDataset]:
    kw = {**TINY_CANVAS, "color": color}
    return make_embedded_detection("train", num_images=4, **kw), make_embedded_detection("test", num_images=2, **kw)


@pytest.mark.parametrize("name", METHODS)
def test_knn_linear_and_semisup_run_on_every_encoder(name: str) -> None:
    encoder, _ = _encoder(_registered(name))
    train, test = _splits(get_method(name).needs_color)
    results = evaluate(encoder, train, test, [KNN, LINEAR, SEMISUP], progress=False, batch_size=64)
    assert [r.spec.name for r in results] == ["knn-tiny", "linear-tiny", "semisup-tiny"]
    for r in results:
        assert r.metrics["top1"] == r.metrics["top1"] and 0.0 <= r.metrics["top1"] <= 100.0, (r.spec.name, r.metrics)
        assert all(math.isfinite(v) for v in r.metrics.values()), (r.spec.name, r.metrics)


@pytest.mark.parametrize("name", METHODS)
def test_detection_runs_on_the_encoder(name: str) -> None:
    encoder, train = _encoder(_registered(name))
    det_train, det_test = _detection_splits(get_method(name).needs_color)
    before = snapshot_state(encoder)
    out = run_detection(encoder, DETECTION, train=det_train, test=det_test, mean=train.info.mean,
                        std=train.info.std, progress=False)
    assert_frozen(before, encoder)
    assert out.params["feature_strides"] == "4,8"
    assert math.isfinite(float(out.params["final_train_loss"]))
    assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in out.metrics.values())


def test_color_split_branches_are_concatenated_level_by_level() -> None:
    encoder, _ = _encoder(_registered("cmc"))
    fpn = build_fpn_backbone(encoder, 3, 8)
    assert fpn.modules_used == ("0:1+1:1", "0:3+1:3")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        levels = fpn.body(x)
        # by hand: group g's backbone on its converted channels, first blocks up to 1 and 3
        expected = []
        for keep in (1, 3):
            maps = []
            for inp, net in zip(encoder.group_inputs(x), encoder.backbones):
                h = inp
                for block in list(net.children())[: keep + 1]:
                    h = block(h)
                maps.append(h)
            expected.append(torch.cat(maps, dim=1))
    assert len(levels) == 2
    for got, want in zip(levels, expected):
        torch.testing.assert_close(got, want)


def test_patch_grid_detects_with_its_backbone_on_the_whole_image() -> None:
    encoder, _ = _encoder(_registered("cpc"))
    fpn = build_fpn_backbone(encoder, 1, 8)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        got = fpn.body(x)[-1]
        want = encoder.backbone[:4](x)
    torch.testing.assert_close(got, want)


def test_branches_of_different_strides_are_a_config_error() -> None:
    from sslbench.benchmark.backbones import build_backbone

    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = build_backbone("small-cnn", 1, 28)[0]
            self.b = build_backbone("small-cnn", 1, 28)[0]

        def dense_branches(self) -> list[tuple[Any, nn.Module]]:
            return [(nn.Identity(), self.a), (nn.Upsample(scale_factor=2.0), self.b)]

    with pytest.raises(ConfigError, match="different sizes"):
        build_fpn_backbone(TwoBranches(), 1, 8)


def test_channel_mismatch_names_the_colour_detection_set() -> None:
    encoder, train = _encoder(_registered("cmc"))
    det_train, det_test = _detection_splits(False)
    with pytest.raises(ConfigError, match="3-channel images but the detection data has 1") as err:
        run_detection(encoder, DETECTION, train=det_train, test=det_test, mean=(0.5,), std=(0.25,), progress=False)
    assert "embedded-detection-color" in str(err.value)


def test_colour_detection_set_is_the_grey_set_in_colour() -> None:
    grey = make_embedded_detection("test", num_images=3, **TINY_CANVAS)
    color = make_embedded_detection("test", num_images=3, color=True, **TINY_CANVAS)
    again = make_embedded_detection("test", num_images=3, color=True, **TINY_CANVAS)
    assert color.name == "embedded-detection-color" and color.channels == 3 and grey.channels == 1
    for i in range(3):
        image = color.image(i)
        assert image.shape == (3, 64, 64) and torch.equal(image, again.image(i))
        assert not (torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]))  # really coloured
        tg, tc = grey.target(i), color.target(i)
        assert all(torch.equal(tg[k], tc[k]) for k in tg)  # same objects, boxes and masks
        # brightness is the grey canvas times a colour in [0, 1]: no channel exceeds the grey level by rounding
        assert bool((image.int() <= grey.image(i).int() + 1).all())
    assert torch.equal(grey.image(0), make_embedded_detection("test", num_images=3, **TINY_CANVAS).image(0))


def test_colour_detection_set_is_a_registered_name() -> None:
    with pytest.raises(UnknownNameError, match="embedded-detection-color"):  # listed among the valid names
        load_detection_dataset("embedded-detection-colour", "test")
