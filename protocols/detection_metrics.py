"""Detection metrics: COCO AP via pycocotools, and Pascal VOC 2007's 11-point AP50.

Inputs are COCO-format: the ground truth as a dict (``images``, ``annotations``, ``categories``;
:meth:`~sslbench.protocols.detection_data.DetectionDataset.to_coco`) and detections as a list of
result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (plus an RLE
``"segmentation"`` for masks). Every AP is in percent (the house unit for accuracies): a perfect
prediction scores 100, an empty one 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["COCO_METRICS", "coco_metrics", "voc07_ap", "voc07_ap50", "voc07_ap_per_class"]

#: The first six numbers of pycocotools' ``COCOeval.stats``, in order.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_metrics(gt: dict[str, Any], detections: list[dict[str, Any]], iou_type: str = "bbox") -> dict[str, float]:
    """COCO AP (mean over IoU 0.50:0.05:0.95), AP50, AP75 and AP for small (< 32^2 px), medium
    and large (> 96^2 px) objects, from pycocotools' ``COCOeval`` (its printing silenced).

    Ground-truth objects with ``iscrowd`` set are ignored (pycocotools' rule; VOC difficult
    objects are written that way). A size bucket without ground truth is NaN (pycocotools says
    -1). An empty detection list scores 0 everywhere (pycocotools cannot load one).

    Args:
        gt: COCO-format ground truth (``segmentation`` on every annotation for ``"segm"``).
        detections: COCO result dicts.
        iou_type: ``"bbox"`` or ``"segm"``.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in percent.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not detections:
        return _empty_metrics(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (100.0 * float(v) if v >= 0 else math.nan) for name, v in zip(COCO_METRICS, evaluator.stats)}


#: pycocotools' area ranges (inclusive) of the metrics, in pixels^2.
_AREA_RANGES = {"AP": (0.0, 1e10), "AP50": (0.0, 1e10), "AP75": (0.0, 1e10), "APs": (0.0, 32.0**2),
                "APm": (32.0**2, 96.0**2), "APl": (96.0**2, 1e10)}


def _empty_metrics(gt: dict[str, Any]) -> dict[str, float]:
    """What pycocotools would say for no detections: 0 where the range has (non-crowd) ground
    truth, NaN where it has none."""
    areas = [float(a["area"]) for a in gt["annotations"] if not a.get("iscrowd", 0)]
    return {name: 0.0 if any(lo <= a <= hi for a in areas) else math.nan for name, (lo, hi) in _AREA_RANGES.items()}


def voc07_ap(recall: Tensor, precision: Tensor) -> float:
    """Pascal VOC 2007's 11-point interpolated average precision.

    ``AP = (1/11) * sum_{t in {0, 0.1, ..., 1}} max_{k : recall_k >= t} precision_k`` (a max over
    an empty set is 0), from the VOC2007 devkit (``VOCevaldet.m``) and detectron2's
    ``voc_ap(use_07_metric=True)``.

    Args:
        recall: cumulative recall after each detection (sorted by decreasing score).
        precision: cumulative precision after each detection.

    Returns:
        AP as a fraction in [0, 1].

    Shape:
        recall, precision: (N,).
    """
    recall, precision = recall.double(), precision.double()
    total = 0.0
    for t in torch.linspace(0, 1, 11, dtype=torch.float64):
        reached = recall >= t - 1e-12  # 0.1 * 3 is 0.30000000000000004: compare with a tolerance
        total += float(precision[reached].max()) if bool(reached.any()) else 0.0
    return total / 11.0


def _iou(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one xyxy box with each of ``boxes`` (continuous coordinates, no VOC +1).

    Shape:
        box: (4,); boxes: (M, 4); returns (M,).
    """
    lt = torch.maximum(box[:2], boxes[:, :2])
    rb = torch.minimum(box[2:], boxes[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    return inter / (area + areas - inter).clamp_min(1e-12)


def _xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def voc07_ap_per_class(gt: dict[str, Any], detections: list[dict[str, Any]],
                       iou_threshold: float = 0.5) -> dict[int, float]:
    """Per-class VOC07 AP (percent) at IoU ``> iou_threshold``, the VOC2007 devkit's matching.

    For each class, detections are visited by decreasing score; one is a true positive when its
    highest-IoU ground-truth box of that class in its image has IoU > threshold and was not
    matched before, a false positive otherwise, and is skipped (neither) when that box is
    *difficult* (``difficult``, ``ignore`` or ``iscrowd`` set in the annotation). Recall counts
    only non-difficult objects; the AP is :func:`voc07_ap`. Classes without non-difficult ground
    truth are left out (the devkit would divide by zero). IoU uses continuous pixel coordinates,
    not the devkit's ``+1`` convention.

    Returns:
        category id -> AP in percent.
    """
    gt_boxes: dict[tuple[int, int], list[list[float]]] = {}
    gt_hard: dict[tuple[int, int], list[bool]] = {}
    npos: dict[int, int] = {int(c["id"]): 0 for c in gt["categories"]}
    for ann in gt["annotations"]:
        key = (int(ann["image_id"]), int(ann["category_id"]))
        hard = bool(ann.get("difficult", 0) or ann.get("ignore", 0) or ann.get("iscrowd", 0))
        gt_boxes.setdefault(key, []).append(_xyxy(ann["bbox"]))
        gt_hard.setdefault(key, []).append(hard)
        if not hard:
            npos[key[1]] = npos.get(key[1], 0) + 1
    result = {}
    for cat, n_pos in npos.items():
        if n_pos == 0:
            continue
        dets = sorted((d for d in detections if int(d["category_id"]) == cat), key=lambda d: -float(d["score"]))
        matched = {key: [False] * len(boxes) for key, boxes in gt_boxes.items() if key[1] == cat}
        tp = torch.zeros(len(dets), dtype=torch.float64)
        fp = torch.zeros(len(dets), dtype=torch.float64)
        for k, det in enumerate(dets):
            key = (int(det["image_id"]), cat)
            boxes = gt_boxes.get(key)
            if not boxes:
                fp[k] = 1
                continue
            ious = _iou(torch.tensor(_xyxy(det["bbox"]), dtype=torch.float64), torch.tensor(boxes, dtype=torch.float64))
            best = int(ious.argmax())
            if float(ious[best]) > iou_threshold:
                if gt_hard[key][best]:
                    continue
                if not matched[key][best]:
                    tp[k], matched[key][best] = 1, True
                else:
                    fp[k] = 1
            else:
                fp[k] = 1
        ctp, cfp = tp.cumsum(0), fp.cumsum(0)
        recall = ctp / n_pos
        precision = ctp / (ctp + cfp).clamp_min(torch.finfo(torch.float64).eps)
        result[cat] = 100.0 * voc07_ap(recall, precision)
    return result


def voc07_ap50(gt: dict[str, Any], detections: list[dict[str, Any]]) -> float:
    """Pascal VOC 2007 AP50: the mean over classes of :func:`voc07_ap_per_class` at IoU 0.5, in
    percent (the headline number of the VOC detection tables in MoCo, DenseCL, ...).

    ``AP50 = (1/|C|) sum_c AP_c``, with ``AP_c`` the 11-point interpolated AP of class ``c``.
    Returns NaN when no class has non-difficult ground truth.
    """
    per_class = voc07_ap_per_class(gt, detections, 0.5)
    return sum(per_class.values()) / len(per_class) if per_class else math.nan
