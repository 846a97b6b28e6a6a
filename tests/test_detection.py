"""Detection transfer: the embedded set, COCO folders, the VOC reader, the metrics (against hand-computed
values) and short end-to-end runs of Faster R-CNN / Mask R-CNN on small-cnn."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sslbench.benchmark.errors import ConfigError, DatasetError, UnknownNameError
from sslbench.protocols.detection import detection_lr_factor, run_detection, training_plan
from sslbench.protocols.detection_data import (
    DetectionDataset,
    load_coco_folder,
    load_detection_dataset,
    load_voc,
    make_embedded_detection,
    save_coco_folder,
)
from sslbench.protocols.detection_metrics import (
    COCO_METRICS,
    coco_metrics,
    voc07_ap,
    voc07_ap50,
    voc07_ap_per_class,
)
from sslbench.protocols.linear import assert_frozen, snapshot_state
from sslbench.protocols.spec import DetectionSpec, get_protocol

MEAN, STD = (0.2843,), (0.3524,)


@pytest.fixture(scope="module")
def small_set() -> DetectionDataset:
    return make_embedded_detection("test", num_images=24, seed=3)


def _gt_as_detections(gt: dict[str, Any], masks: bool = True) -> list[dict[str, Any]]:
    keys = ("image_id", "category_id", "bbox") + (("segmentation",) if masks else ())
    return [{**{k: a[k] for k in keys}, "score": 1.0} for a in gt["annotations"]]


# ----------------------------------------------------------------------------------------------
# The embedded set


def test_embedded_set_is_reproducible_and_seeded() -> None:
    a = make_embedded_detection("train", num_images=6, seed=1)
    b = make_embedded_detection("train", num_images=6, seed=1)
    c = make_embedded_detection("train", num_images=6, seed=2)
    for i in range(6):
        ia, ta = a[i]
        ib, tb = b[i]
        assert torch.equal(ia, ib)
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not all(torch.equal(a.image(i), c.image(i)) for i in range(6))
    # train and test canvases differ even with the same seed
    test = make_embedded_detection("test", num_images=6, seed=1)
    assert not torch.equal(a.image(0), test.image(0))


def test_embedded_boxes_are_tight_inside_and_agree_with_masks(small_set: DetectionDataset) -> None:
    assert small_set.channels == 1 and small_set.num_classes == 10 and small_set.has_masks
    counts = []
    for i in range(len(small_set)):
        image, target = small_set[i]
        assert image.dtype == torch.uint8 and image.shape == (1, 128, 128)
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        n = labels.numel()
        counts.append(n)
        assert 1 <= n <= 4 and boxes.shape == (n, 4) and masks.shape == (n, 128, 128)
        assert labels.dtype == torch.int64 and bool(((labels >= 1) & (labels <= 10)).all())
        assert bool((boxes[:, :2] >= 0).all()) and bool((boxes[:, 2:] <= 128).all())
        assert bool((boxes[:, 2:] > boxes[:, :2]).all())
        for box, mask in zip(boxes, masks):
            rows = torch.nonzero(mask.any(dim=1)).flatten()
            cols = torch.nonzero(mask.any(dim=0)).flatten()
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        assert int(masks.sum(dim=0).max()) <= 1  # pasted objects do not overlap
        background = image[0][masks.sum(dim=0) == 0].float()
        assert background.std() > 5  # textured, not flat
    assert len(set(counts)) > 1


# ----------------------------------------------------------------------------------------------
# Metrics


def test_perfect_prediction_scores_100_and_empty_scores_0(small_set: DetectionDataset) -> None:
    gt = small_set.to_coco()
    perfect = _gt_as_detections(gt)
    for iou_type in ("bbox", "segm"):
        m = coco_metrics(gt, perfect, iou_type)
        assert set(m) == set(COCO_METRICS)
        for k in ("AP", "AP50", "AP75", "APs", "APm"):
            assert m[k] == pytest.approx(100.0)
        assert math.isnan(m["APl"])  # no object above 96^2 px on 128 px canvases
        empty = coco_metrics(gt, [], iou_type)
        assert all(empty[k] == 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm")) and math.isnan(empty["APl"])
    assert voc07_ap50(gt, perfect) == pytest.approx(100.0)
    assert voc07_ap50(gt, []) == 0.0


def _one_box_gt(box: list[float], difficult: bool = False) -> dict[str, Any]:
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
    if difficult:
        ann.update(iscrowd=1, ignore=1, difficult=1)
    return {"images": [{"id": 1, "height": 100, "width": 100, "file_name": "a.png"}], "annotations": [ann],
            "categories": [{"id": 1, "name": "a"}]}


def test_shifted_box_passes_iou_50_but_not_75() -> None:
    gt = _one_box_gt([10.0, 10.0, 40.0, 40.0])
    # shifted by 8 px: IoU = 32*40 / (2*1600 - 32*40) = 0.667
    m = coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [18.0, 10.0, 40.0, 40.0], "score": 0.9}])
    assert m["AP50"] == pytest.approx(100.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert 0 < m["AP"] < 100
    wrong_class = _one_box_gt([10.0, 10.0, 40.0, 40.0])
    wrong_class["categories"].append({"id": 2, "name": "b"})
    det = [{"image_id": 1, "category_id": 2, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.9}]
    assert coco_metrics(wrong_class, det)["AP50"] == pytest.approx(0.0)


def test_voc07_eleven_point_interpolation_by_hand() -> None:
    # max precision at recall >= t: 1.0 for t in {0, .1, ..., .5} (6 points), 2/3 for {.6, ..., 1} (5 points)
    recall = torch.tensor([0.5, 0.5, 1.0])
    precision = torch.tensor([1.0, 0.5, 2 / 3])
    assert voc07_ap(recall, precision) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    # recall never reaches 0.6: those five points count 0
    assert voc07_ap(torch.tensor([0.5]), torch.tensor([1.0])) == pytest.approx(6 / 11)


def test_voc07_matching_difficult_duplicates_and_classes() -> None:
    gt = {
        "images": [{"id": 1, "height": 100, "width": 100, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 60, 20, 20], "area": 400, "iscrowd": 1,
             "ignore": 1, "difficult": 1},
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [30, 0, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }

    def det(box: list[float], score: float, cat: int = 1) -> dict[str, Any]:
        return {"image_id": 1, "category_id": cat, "bbox": box, "score": score}

    dets = [det([0, 0, 20, 20], 0.9),      # TP (GT 1)
            det([0, 60, 20, 20], 0.8),     # matches the difficult GT: ignored
            det([80, 0, 10, 10], 0.7),     # FP (no overlap)
            det([1, 1, 20, 20], 0.6),      # FP (duplicate of GT 1)
            det([50, 50, 20, 20], 0.5),    # TP (GT 2)
            det([30, 0, 20, 20], 0.4, 2)]  # class 2: TP
    # class 1 sequence TP, FP, FP, TP over 2 non-difficult GT -> recall .5 .5 .5 1, precision 1 .5 .33 .5
    per_class = voc07_ap_per_class(gt, dets)
    assert set(per_class) == {1, 2}  # class 3 has no ground truth: left out
    assert per_class[1] == pytest.approx(100 * (6 * 1.0 + 5 * 0.5) / 11)
    assert per_class[2] == pytest.approx(100.0)
    assert voc07_ap50(gt, dets) == pytest.approx((per_class[1] + 100.0) / 2)


# ----------------------------------------------------------------------------------------------
# COCO folders, VOC, dataset names


def test_coco_folder_round_trip(tmp_path: Path, small_set: DetectionDataset) -> None:
    data = small_set.subset(range(6))
    save_coco_folder(data, tmp_path / "set")
    loaded = load_coco_folder(tmp_path / "set")
    assert len(loaded) == 6 and loaded.channels == 1 and loaded.has_masks
    assert loaded.categories == data.categories
    for i in range(6):
        (ia, ta), (ib, tb) = data[i], loaded[i]
        assert torch.equal(ia, ib)
        for key in ("boxes", "labels", "masks", "difficult", "iscrowd", "image_id"):
            assert torch.equal(ta[key], tb[key]), key
    gt = loaded.to_coco()
    assert coco_metrics(gt, _gt_as_detections(gt), "bbox")["AP"] == pytest.approx(100.0)
    assert coco_metrics(gt, _gt_as_detections(gt), "segm")["AP"] == pytest.approx(100.0)
    # the same folder as the split of a coco-folder dataset
    save_coco_folder(small_set.subset(range(6, 9)), tmp_path / "root" / "test")
    assert len(load_detection_dataset("coco-folder", "test", tmp_path / "root")) == 3


@pytest.mark.parametrize(("bbox", "category", "problem"), [
    ([10, 10, -5, 20], 1, "non-positive width"),
    ([90, 10, 30, 20], 1, "outside"),
    ([float("nan"), 10, 5, 5], 1, "not finite"),
    ([10, 10, 5, 5], 7, "category_id 7"),
])
def test_invalid_annotations_are_clear_errors(tmp_path: Path, bbox: list[float], category: int, problem: str) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("L", (100, 50)).save(tmp_path / "images" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 50, "width": 100}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25},
                            {"id": 42, "image_id": 1, "category_id": category, "bbox": bbox, "area": 25}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError) as err:
        load_coco_folder(tmp_path)
    message = str(err.value)
    assert "annotation id 42" in message and "annotations.json" in message and problem in message


def test_unknown_image_id_and_dataset_name(tmp_path: Path) -> None:
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 50, "width": 100}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 5, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="annotation id 5.*image_id 9"):
        load_coco_folder(tmp_path)
    with pytest.raises(UnknownNameError, match="embedded-detection.*voc0712"):
        load_detection_dataset("pascal", "train")
    with pytest.raises(DatasetError, match="looked for"):
        load_detection_dataset("coco2017", "train", tmp_path / "nowhere")


def _write_voc(root: Path) -> None:
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    objects = {"000001": [("dog", 11, 21, 50, 60, 0), ("person", 1, 1, 80, 40, 1)], "000002": [("car", 5, 6, 7, 8, 0)]}
    for name, objs in objects.items():
        Image.new("RGB", (80, 60), (120, 30, 200)).save(voc / "JPEGImages" / f"{name}.jpg")
        xml = "".join(f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                      f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2, d in objs)
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>80</width><height>60</height><depth>3</depth>"
            f"</size>{xml}</annotation>")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000002\n")


def test_voc_reader_on_a_fake_tree(tmp_path: Path) -> None:
    _write_voc(tmp_path)
    train = load_voc("train", data_dir=tmp_path)
    assert len(train) == 1 and train.channels == 3 and train.num_classes == 20 and not train.has_masks
    image, target = train[0]
    assert image.shape == (3, 60, 80) and image.dtype == torch.uint8
    assert target["boxes"].tolist() == [[10, 20, 50, 60], [0, 0, 80, 40]]  # 1-based -> 0-based corners
    assert target["labels"].tolist() == [12, 15]  # dog, person
    assert target["difficult"].tolist() == [False, True]
    gt = train.to_coco()
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    test = load_detection_dataset("voc07", "test", tmp_path)
    assert len(test) == 1 and test[0][1]["labels"].tolist() == [7]  # car
    with pytest.raises(DatasetError, match="VOC2012"):
        load_detection_dataset("voc0712", "train", tmp_path)
    with pytest.raises(DatasetError, match="VOCdevkit"):
        load_voc("test", data_dir=tmp_path / "empty")


# ----------------------------------------------------------------------------------------------
# Training


def test_lr_schedule_closed_form() -> None:
    spec = DetectionSpec(name="s", version=1, iterations=100, warmup_iters=10, lr_steps=(0.5, 0.8))
    assert detection_lr_factor(0, spec) == pytest.approx(1e-3)
    assert detection_lr_factor(5, spec) == pytest.approx(1e-3 * 0.5 + 0.5)
    assert detection_lr_factor(10, spec) == 1.0
    assert detection_lr_factor(49, spec) == 1.0
    assert detection_lr_factor(50, spec) == pytest.approx(0.1)
    assert detection_lr_factor(80, spec) == pytest.approx(0.01)


@pytest.fixture(scope="module")
def tiny_splits() -> tuple[DetectionDataset, DetectionDataset]:
    kw: dict[str, Any] = {"canvas": 64, "object_sizes": (16, 32), "max_objects": 2}
    return make_embedded_detection("train", num_images=8, **kw), make_embedded_detection("test", num_images=4, **kw)


def _encoder() -> torch.nn.Module:
    from sslbench.benchmark.backbones import build_backbone

    torch.manual_seed(0)
    return build_backbone("small-cnn", 1, 28)[0]


def _tiny_spec(**kw: Any) -> DetectionSpec:
    base: dict[str, Any] = dict(name="tiny", version=1, head_size="small", train_sizes=(64,), test_size=64,
                                max_size=64, iterations=3, batch_size=2, warmup_iters=1)
    return DetectionSpec(**{**base, **kw})


@pytest.mark.parametrize(("model", "norm"), [("fasterrcnn-fpn", "train"), ("maskrcnn-fpn", "frozen"),
                                             ("fasterrcnn-fpn", "sync")])
def test_short_run_end_to_end(tiny_splits: tuple[DetectionDataset, DetectionDataset], model: str, norm: str) -> None:
    train, test = tiny_splits
    encoder = _encoder()
    before = snapshot_state(encoder)
    rng = torch.get_rng_state()
    spec = _tiny_spec(model=model, norm=norm, metric="voc07" if norm == "sync" else "coco")
    out = run_detection(encoder, spec, train=train, test=test, mean=MEAN, std=STD, progress=False)
    assert_frozen(before, encoder)
    assert all(p.requires_grad for p in encoder.parameters()) and encoder.training
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is untouched
    expected = set(COCO_METRICS) | ({f"mask_{k}" for k in COCO_METRICS} if model == "maskrcnn-fpn" else set())
    expected |= {"voc07_AP50"} if norm == "sync" else set()
    assert set(out.metrics) == expected
    assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in out.metrics.values())
    assert out.params["norm"] == norm and out.params["feature_strides"] == "4,8"
    assert out.params["num_train"] == 8.0 and math.isfinite(float(out.params["final_train_loss"]))
    assert isinstance(json.loads(out.artifacts["detections.json"]), list)


def test_training_plan_is_seeded_passes() -> None:
    spec = DetectionSpec(name="s", version=1, iterations=5, batch_size=4, train_sizes=(64, 96, 128), max_size=128)
    order, flips, sizes = training_plan(6, spec)
    assert order.shape == (5, 4) and flips.shape == (5, 4) and sizes.shape == (5,)
    flat = order.flatten().tolist()
    for lo in range(0, 18, 6):  # every pass over the 6 images is a permutation
        assert sorted(flat[lo:lo + 6]) == list(range(6))
    assert flat[:6] != flat[6:12] or flat[6:12] != flat[12:18]
    assert set(sizes.tolist()) <= {64, 96, 128}
    again = training_plan(6, spec)
    assert all(torch.equal(x, y) for x, y in zip((order, flips, sizes), again))
    other = training_plan(6, dataclasses.replace(spec, seed=1))
    assert not torch.equal(order, other[0])


def test_runs_are_deterministic(tiny_splits: tuple[DetectionDataset, DetectionDataset]) -> None:
    train, test = tiny_splits
    spec = _tiny_spec(iterations=2, train_sizes=(64, 96), max_size=96)
    a = run_detection(_encoder(), spec, train=train, test=test, mean=MEAN, std=STD, progress=False)
    # the same run with the images decoded in a worker process
    b = run_detection(_encoder(), spec, train=train, test=test, mean=MEAN, std=STD, progress=False, num_workers=1)
    assert a.artifacts["detections.json"] == b.artifacts["detections.json"]
    assert a.params["final_train_loss"] == b.params["final_train_loss"]


def test_bad_encoders_and_data_are_config_errors(tiny_splits: tuple[DetectionDataset, DetectionDataset]) -> None:
    from sslbench.benchmark.backbones import build_backbone

    train, test = tiny_splits
    spec = _tiny_spec()
    vit = build_backbone("vit-tiny-small", 1, 28)[0]
    with pytest.raises(ConfigError, match="vision transformer"):
        run_detection(vit, spec, train=train, test=test, mean=MEAN, std=STD, progress=False)
    rgb = build_backbone("small-cnn", 3, 28)[0]
    with pytest.raises(ConfigError, match="3-channel images but the detection data has 1"):
        run_detection(rgb, spec, train=train, test=test, mean=MEAN, std=STD, progress=False)
    with pytest.raises(ConfigError, match="per channel"):
        run_detection(_encoder(), spec, train=train, test=test, mean=(0.5, 0.5, 0.5), std=STD, progress=False)
    no_masks = DetectionDataset("x", train.categories, 1, train.records, train.image)
    with pytest.raises(ConfigError, match="no instance masks"):
        run_detection(_encoder(), _tiny_spec(model="maskrcnn-fpn"), train=no_masks, test=test, mean=MEAN, std=STD,
                      progress=False)


def test_timm_resnet_gets_a_multiscale_fpn() -> None:
    from sslbench.benchmark.backbones import build_backbone
    from sslbench.protocols.detection import build_fpn_backbone

    encoder = build_backbone("resnet18-small", 1, 32)[0]
    fpn = build_fpn_backbone(encoder, 1, 32)
    assert fpn.strides == (4, 8) and fpn.modules_used == ("layer3", "layer4")  # CIFAR stem: strides 1, 2, 4, 8
    out = fpn(torch.zeros(1, 1, 64, 64))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4)]


def test_registered_embedded_specs() -> None:
    from sslbench.protocols.detection import HEAD_SIZES
    from sslbench.protocols.spec import DETECTION_HEAD_SIZES

    assert tuple(HEAD_SIZES) == DETECTION_HEAD_SIZES
    for name in ("detection-embedded", "detection-embedded-mask"):
        spec = get_protocol(name)
        assert isinstance(spec, DetectionSpec) and spec.dataset == "embedded-detection"
        assert spec.head_size == "small"

