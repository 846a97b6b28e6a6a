"""Detection datasets: images with boxes, class labels and (optionally) instance masks.

A :class:`DetectionDataset` maps image ``i`` to a uint8 image ``(C, H, W)`` and a torchvision-style
target (``boxes`` xyxy in pixels, ``labels`` in ``1..K``, 0 being torchvision's background, optional
``masks``, and the ``difficult`` / ``iscrowd`` flags of objects the metric ignores), and writes its
ground truth as a COCO-format dict (:meth:`DetectionDataset.to_coco`) for
:mod:`sslbench.protocols.detection_metrics`. Annotations are held in memory; images (and the masks
of COCO-format data) are decoded on access.

Sources (:func:`load_detection_dataset`):

==============================  ================================================================
``embedded-detection``          generated offline from the embedded Fashion-MNIST images
                                (:func:`make_embedded_detection`); train canvases use train images
                                only
``embedded-detection-color``    the same canvases, objects and boxes in colour (``color=True``),
                                for encoders pretrained on RGB data (CMC, colorization)
``voc07``                       Pascal VOC 2007 trainval -> 2007 test (torchvision ``VOCDetection``)
``voc0712``                     VOC 2007 + 2012 trainval -> 2007 test
``coco2017``                    COCO 2017 train -> val (torchvision ``CocoDetection``, masks via
                                pycocotools)
``coco-folder``                 any COCO-format folder (:func:`load_coco_folder`)
==============================  ================================================================

Nothing is downloaded: a missing dataset is a :class:`~sslbench.benchmark.errors.DatasetError`
that names the folders looked in and how to get the data. Every annotation of a COCO-format file is
validated (finite box, positive size, inside the image, known category, existing image); a bad one
is a ``DatasetError`` naming the file, the annotation id and the problem.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sslbench.benchmark.errors import ConfigError, DatasetError, unknown_name

__all__ = [
    "DETECTION_DATASETS",
    "FASHION_MNIST_CLASSES",
    "VOC_CLASSES",
    "DetectionDataset",
    "ImageRecord",
    "load_coco_folder",
    "load_coco2017",
    "load_detection_dataset",
    "load_voc",
    "make_embedded_detection",
    "records_from_coco",
    "save_coco_folder",
]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
DETECTION_DATASETS = ("embedded-detection", "embedded-detection-color", "voc07", "voc0712", "coco2017",
                      "coco-folder")

#: Default sizes of the embedded detection set's splits (canvases).
EMBEDDED_NUM_IMAGES = {"train": 2000, "test": 500}
#: A box may reach this many pixels beyond the image border before it is called invalid.
BOX_TOLERANCE = 1.0
#: A resized Fashion-MNIST pixel belongs to the object when brighter than this (uint8 scale).
OBJECT_THRESHOLD = 24.0


# ----------------------------------------------------------------------------------------------
# The dataset type


@dataclass(frozen=True)
class ImageRecord:
    """The annotations of one image.

    Attributes:
        image_id: the COCO image id.
        file_name: the image's file name (relative to the dataset's image folder; "" in memory).
        height, width: image size in pixels.
        boxes: xyxy boxes in pixels (float32).
        labels: class indices in ``1..K`` (int64).
        difficult: VOC "difficult" objects: trained on, ignored by the metric.
        iscrowd: COCO crowd regions: not trained on, ignored by the metric.
        areas: object areas for the metric's small/medium/large buckets (the mask area for COCO, the
            box area otherwise).
        segmentations: the objects' COCO segmentations (polygons or RLE), decoded to masks on
            access; None when masks come from elsewhere or do not exist.

    Shape:
        boxes: (n, 4); labels, difficult, iscrowd, areas: (n,).
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    iscrowd: Tensor
    areas: Tensor
    segmentations: tuple[Any, ...] | None = None

    @property
    def num_objects(self) -> int:
        return int(self.labels.numel())


class DetectionDataset:
    """A detection split: ``dataset[i] -> (image, target)``.

    ``image`` is uint8 ``(C, H, W)``; ``target`` holds ``boxes`` float32 ``(n, 4)`` xyxy pixels,
    ``labels`` int64 ``(n,)`` in ``1..K``, ``difficult`` and ``iscrowd`` bool ``(n,)``, ``image_id``
    int64 ``()``, and ``masks`` uint8 ``(n, H, W)`` when the dataset has masks.

    Args:
        name: the dataset's name (recorded with results).
        categories: the K class names; label ``k`` is ``categories[k - 1]``.
        channels: 1 or 3.
        records: one :class:`ImageRecord` per image.
        load_image: ``i -> uint8 (C, H, W)`` image of record ``i``.
        load_masks: ``i -> uint8 (n, H, W)`` masks of record ``i``; None when there are no masks.
        category_ids: the COCO category id of each class (default ``1..K``).
    """

    def __init__(
        self,
        name: str,
        categories: Sequence[str],
        channels: int,
        records: Sequence[ImageRecord],
        load_image: Callable[[int], Tensor],
        load_masks: Callable[[int], Tensor] | None = None,
        category_ids: Sequence[int] | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.name = name
        self.categories = tuple(categories)
        self.channels = channels
        self.records = list(records)
        self.category_ids = tuple(category_ids) if category_ids is not None else tuple(
            range(1, len(self.categories) + 1))
        if len(self.category_ids) != len(self.categories):
            raise ValueError("category_ids and categories differ in length")
        self._load_image = load_image
        self._load_masks = load_masks

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (background not counted)."""
        return len(self.categories)

    @property
    def has_masks(self) -> bool:
        return self._load_masks is not None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        n_obj = sum(r.num_objects for r in self.records)
        return (f"DetectionDataset('{self.name}', {len(self)} images, {n_obj} objects, {self.num_classes} classes, "
                f"channels={self.channels}, masks={self.has_masks})")

    def image(self, index: int) -> Tensor:
        """Image ``index`` as uint8 ``(C, H, W)``."""
        img = self._load_image(index)
        rec = self.records[index]
        if img.dtype != torch.uint8 or tuple(img.shape) != (self.channels, rec.height, rec.width):
            raise DatasetError(
                f"Image {rec.image_id} ('{rec.file_name}') of '{self.name}' decodes to {img.dtype} "
                f"{tuple(img.shape)}, but its annotation says {self.channels}x{rec.height}x{rec.width}.",
                "Fix the image's width/height in the annotation file or re-save the image.")
        return img

    def target(self, index: int) -> dict[str, Tensor]:
        """The torchvision-style target of image ``index`` (see the class docstring)."""
        rec = self.records[index]
        target = {"boxes": rec.boxes.clone(), "labels": rec.labels.clone(), "difficult": rec.difficult.clone(),
                  "iscrowd": rec.iscrowd.clone(), "image_id": torch.tensor(rec.image_id, dtype=torch.int64)}
        if self._load_masks is not None:
            target["masks"] = self._load_masks(index)
        return target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.image(index), self.target(index)

    def subset(self, indices: Sequence[int]) -> DetectionDataset:
        """The images at ``indices`` (in that order), sharing the loaders."""
        idx = [int(i) for i in indices]
        load_masks = self._load_masks
        return DetectionDataset(
            self.name, self.categories, self.channels, [self.records[i] for i in idx],
            lambda i: self._load_image(idx[i]),
            None if load_masks is None else (lambda i: load_masks(idx[i])),
            self.category_ids)

    def to_coco(self) -> dict[str, Any]:
        """The ground truth as a COCO-format dict (``images``, ``annotations``, ``categories``).

        Boxes become ``[x, y, w, h]``; ``category_id`` is the class's COCO id; masks (when the
        dataset has them) become RLE via ``pycocotools.mask`` (or the original COCO segmentation);
        VOC difficult objects and COCO crowd regions get ``iscrowd = ignore = 1``, which makes
        pycocotools' COCOeval ignore them (a detection matched to one neither counts nor hurts).
        """
        from pycocotools import mask as mask_utils

        images, annotations = [], []
        next_id = 1
        for i, rec in enumerate(self.records):
            images.append({"id": rec.image_id, "file_name": rec.file_name, "height": rec.height, "width": rec.width})
            segs: Sequence[Any] | None = rec.segmentations
            if segs is None and self._load_masks is not None and rec.num_objects:
                masks = self._load_masks(i).numpy()
                segs = []
                for m in masks:
                    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    segs.append(rle)
            for j in range(rec.num_objects):
                x1, y1, x2, y2 = (float(v) for v in rec.boxes[j])
                ignore = int(bool(rec.difficult[j]) or bool(rec.iscrowd[j]))
                ann: dict[str, Any] = {
                    "id": next_id, "image_id": rec.image_id,
                    "category_id": self.category_ids[int(rec.labels[j]) - 1],
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(rec.areas[j]),
                    "iscrowd": ignore, "ignore": ignore,
                }
                if rec.difficult[j]:
                    ann["difficult"] = 1
                if segs is not None:
                    ann["segmentation"] = segs[j]
                annotations.append(ann)
                next_id += 1
        categories = [{"id": cid, "name": name} for cid, name in zip(self.category_ids, self.categories)]
        return {"images": images, "annotations": annotations, "categories": categories}


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# ----------------------------------------------------------------------------------------------
# The embedded detection set


def _split_seed(seed: int, split: str) -> int:
    """Distinct generator seeds for the two splits (their layouts differ, not just their objects)."""
    return (int(seed) * 1_000_003 + {"train": 0, "test": 1}[split] * 7_919) % (2**63)


def _texture(canvas: int, gen: torch.Generator) -> Tensor:
    """A textured background on the uint8 scale: base level + low-frequency blobs + a sinusoidal
    grating of random orientation and period + pixel noise (all drawn from ``gen``).

    Shape:
        returns (canvas, canvas) float32.
    """
    base = 50.0 + 60.0 * float(torch.rand((), generator=gen))
    grid = int(torch.randint(3, 9, (), generator=gen))
    blobs = F.interpolate(torch.randn(1, 1, grid, grid, generator=gen), size=(canvas, canvas), mode="bicubic",
                          align_corners=False)[0, 0] * (10.0 + 20.0 * float(torch.rand((), generator=gen)))
    theta = math.pi * float(torch.rand((), generator=gen))
    period = 6.0 + 26.0 * float(torch.rand((), generator=gen))
    phase = 2 * math.pi * float(torch.rand((), generator=gen))
    amp = 25.0 * float(torch.rand((), generator=gen))
    coords = torch.arange(canvas, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    stripes = amp * torch.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
    noise = torch.randn(canvas, canvas, generator=gen) * (3.0 + 7.0 * float(torch.rand((), generator=gen)))
    return base + blobs + stripes + noise


def make_embedded_detection(
    split: str,
    *,
    num_images: int | None = None,
    canvas: int = 128,
    seed: int = 0,
    object_sizes: tuple[int, int] = (16, 64),
    max_objects: int = 4,
    color: bool = False,
) -> DetectionDataset:
    """Generates the embedded detection set: Fashion-MNIST objects pasted on textured canvases.

    Each canvas gets a seeded textured background (:func:`_texture`) and ``1..max_objects``
    objects: a Fashion-MNIST image of the split (train canvases use only the train images, test
    canvases only the test images) resized to a random side in ``object_sizes`` and pasted with its
    own pixel mask (resized pixels brighter than :data:`OBJECT_THRESHOLD`) at a random position
    where its square does not overlap an earlier object's (an object that finds no free place in
    20 tries is left out). Boxes are the tight boxes of the pasted masks; the class is the
    Fashion-MNIST class (10 categories, labels ``1..10``). Everything is drawn from one generator
    seeded by ``(seed, split)``: the same arguments give the same bytes.

    With ``color=True`` the same canvases (same layout, objects, boxes and masks) are coloured by
    :func:`_colorize_canvases` from a second generator, so the greyscale set is unchanged.

    Args:
        split: ``"train"`` or ``"test"``.
        num_images: canvases (default :data:`EMBEDDED_NUM_IMAGES` of the split).
        canvas: canvas side in pixels.
        seed: the generator seed.
        object_sizes: smallest and largest pasted side in pixels.
        max_objects: most objects per canvas.
        color: colour the canvases (3 channels).

    Returns:
        A :class:`DetectionDataset` with masks: 1-channel ``embedded-detection``, or 3-channel
        ``embedded-detection-color`` with ``color=True``.
    """
    from sslbench.benchmark.datasets import ArrayDataset, load_dataset

    if split not in EMBEDDED_NUM_IMAGES:
        raise DatasetError(f"The embedded detection set has no split '{split}'.", "Use 'train' or 'test'.")
    num_images = EMBEDDED_NUM_IMAGES[split] if num_images is None else num_images
    lo, hi = object_sizes
    if num_images < 1 or max_objects < 1 or not 4 <= lo <= hi <= canvas:
        raise ConfigError(
            f"make_embedded_detection got num_images={num_images}, max_objects={max_objects}, "
            f"object_sizes={object_sizes}, canvas={canvas}.",
            "Use num_images >= 1, max_objects >= 1 and 4 <= min size <= max size <= canvas.")
    source = load_dataset("fashion-mnist-mini", split)
    assert isinstance(source, ArrayDataset)  # the embedded data is held in memory
    src_images = source.images[:, 0].float()
    src_labels = source.labels
    gen = torch.Generator().manual_seed(_split_seed(seed, split))
    images = torch.empty(num_images, 1, canvas, canvas, dtype=torch.uint8)
    instances = torch.zeros(num_images, canvas, canvas, dtype=torch.uint8)
    records = []
    for i in range(num_images):
        img = _texture(canvas, gen)
        inst = instances[i]
        squares: list[tuple[int, int, int]] = []
        boxes: list[list[int]] = []
        labels: list[int] = []
        for _ in range(int(torch.randint(1, max_objects + 1, (), generator=gen))):
            for _attempt in range(20):
                side = int(torch.randint(lo, hi + 1, (), generator=gen))
                x = int(torch.randint(0, canvas - side + 1, (), generator=gen))
                y = int(torch.randint(0, canvas - side + 1, (), generator=gen))
                if all(x + side <= qx or qx + qs <= x or y + side <= qy or qy + qs <= y for qx, qy, qs in squares):
                    break
            else:
                continue
            k = int(torch.randint(0, src_images.shape[0], (), generator=gen))
            obj = F.interpolate(src_images[k][None, None], size=(side, side), mode="bilinear", align_corners=False,
                                antialias=True)[0, 0]
            mask = obj > OBJECT_THRESHOLD
            if int(mask.sum()) < 4:
                continue
            squares.append((x, y, side))
            img[y:y + side, x:x + side][mask] = obj[mask]
            inst[y:y + side, x:x + side][mask] = len(boxes) + 1
            rows = torch.nonzero(mask.any(dim=1)).flatten()
            cols = torch.nonzero(mask.any(dim=0)).flatten()
            boxes.append([x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1])
            labels.append(int(src_labels[k]) + 1)
        images[i, 0] = img.round().clamp(0, 255).to(torch.uint8)
        box_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        n = len(labels)
        areas = torch.stack([(inst == j + 1).sum() for j in range(n)]).float() if n else torch.zeros(0)
        records.append(ImageRecord(
            image_id=i + 1, file_name=f"{i + 1:06d}.png", height=canvas, width=canvas, boxes=box_t,
            labels=torch.tensor(labels, dtype=torch.int64), difficult=torch.zeros(n, dtype=torch.bool),
            iscrowd=torch.zeros(n, dtype=torch.bool), areas=areas))

    def load_masks(index: int) -> Tensor:
        n = records[index].num_objects
        ids = torch.arange(1, n + 1, dtype=torch.uint8).view(n, 1, 1)
        return (instances[index][None] == ids).to(torch.uint8)

    if color:
        images = _colorize_canvases(images, instances, records, torch.Generator().manual_seed(
            _split_seed(seed, split) + 1))
        return DetectionDataset("embedded-detection-color", FASHION_MNIST_CLASSES, 3, records,
                                lambda index: images[index].clone(), load_masks)
    return DetectionDataset("embedded-detection", FASHION_MNIST_CLASSES, 1, records,
                            lambda index: images[index].clone(), load_masks)


def _colorize_canvases(images: Tensor, instances: Tensor, records: Sequence[ImageRecord],
                       gen: torch.Generator) -> Tensor:
    """Colours greyscale canvases, as :func:`sslbench.benchmark.datasets.colorize_fashion_mnist`
    colours the pretraining images: the grey level is kept as brightness and multiplied by a
    colour: each object's own (hue tied to its class, ``(label - 1) / 10 + N(0, 0.04)`` turns,
    with probability 1/2, else uniform; saturation U(0.5, 0.9)), the background's a linear
    gradient between two random dull tints (any hue, saturation U(0.2, 0.5)) along a random
    direction. All draws come from ``gen``, image by image.

    Shape:
        images: (N, 1, S, S) uint8; instances: (N, S, S) uint8 (0 background, j + 1 object j);
        returns (N, 3, S, S) uint8.
    """
    from sslbench.benchmark.datasets import hsv_to_rgb

    n, _, size, _ = images.shape
    coords = torch.linspace(-0.5, 0.5, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i, rec in enumerate(records):
        ends = hsv_to_rgb(torch.rand(2, generator=gen), 0.2 + 0.3 * torch.rand(2, generator=gen), torch.ones(2))
        angle = 2 * math.pi * float(torch.rand((), generator=gen))
        t = (xx * math.cos(angle) + yy * math.sin(angle) + 0.5).clamp(0, 1)
        tint = ends[0][:, None, None] * (1 - t) + ends[1][:, None, None] * t  # (3, S, S)
        k = rec.num_objects
        tied = torch.rand(k, generator=gen) < 0.5
        hue = torch.where(tied, (rec.labels.float() - 1) / 10 + 0.04 * torch.randn(k, generator=gen),
                          torch.rand(k, generator=gen))
        colours = hsv_to_rgb(hue % 1.0, 0.5 + 0.4 * torch.rand(k, generator=gen), torch.ones(k))  # (k, 3)
        for j in range(k):
            inside = instances[i] == j + 1
            tint[:, inside] = colours[j][:, None]
        out[i] = (images[i].float() * tint).round().clamp(0, 255).to(torch.uint8)
    return out


# ----------------------------------------------------------------------------------------------
# COCO-format folders


def _read_image(path: Path, channels: int) -> Tensor:
    """Decodes an image file to uint8 ``(channels, H, W)``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Cannot read image '{path}' ({exc}).",
                           "Check that the file exists and is a valid image.") from None
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _image_channels(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Cannot read image '{path}' ({exc}).",
                           "Check that the file exists and is a valid image.") from None


def _segmentation_to_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a uint8 (H, W) mask."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return np.asarray(mask_utils.decode(rle), dtype=np.uint8)


def _invalid(source: str, ann: Any, problem: str) -> DatasetError:
    ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
    return DatasetError(f"Invalid annotation id {ann_id} in '{source}': {problem}.",
                        "Fix or remove the annotation (boxes are [x, y, width, height] in pixels, inside the "
                        "image, with positive width and height, and a category id listed under 'categories').")


def records_from_coco(coco: dict[str, Any], source: str, *, drop_degenerate: bool = False
                      ) -> tuple[list[ImageRecord], tuple[str, ...], tuple[int, ...]]:
    """Validates a COCO-format dict and turns it into :class:`ImageRecord` s.

    Every annotation must have a finite ``bbox`` ``[x, y, w, h]`` with ``w, h > 0`` inside its
    image (within :data:`BOX_TOLERANCE` pixels; boxes are then clipped to the image), a known
    ``category_id`` and an existing ``image_id``. Categories are mapped to labels ``1..K`` in
    increasing id order.

    Args:
        coco: the parsed annotation file.
        source: the file's path, for error messages.
        drop_degenerate: skip (instead of rejecting) boxes with zero width or height; COCO 2017
            train has a few, which torchvision's references drop too.

    Returns:
        The records (in the file's image order), the category names and their COCO ids.

    Raises:
        DatasetError: a missing section or an invalid annotation (naming the annotation id).
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(f"'{source}' has no '{key}' list.",
                               "Use a COCO-format annotation file (images, annotations, categories).")
    cats = sorted(coco["categories"], key=lambda c: int(c["id"]))
    cat_ids = tuple(int(c["id"]) for c in cats)
    if not cats or len(set(cat_ids)) != len(cat_ids):
        raise DatasetError(f"'{source}' lists no categories or repeats a category id.",
                           "List each category once under 'categories' with a unique id.")
    label_of = {cid: k + 1 for k, cid in enumerate(cat_ids)}
    images: dict[int, dict[str, Any]] = {}
    for img in coco["images"]:
        try:
            images[int(img["id"])] = {"file_name": str(img["file_name"]), "height": int(img["height"]),
                                      "width": int(img["width"]), "anns": []}
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"Image entry {img!r} in '{source}' lacks id, file_name, height or width.",
                               "Give every image an integer id, its file_name, height and width.") from None
    for ann in coco["annotations"]:
        if not isinstance(ann, dict):
            raise _invalid(source, ann, "it is not an object")
        image_id = ann.get("image_id")
        image = images.get(image_id) if isinstance(image_id, int) else None
        if image is None:
            raise _invalid(source, ann, f"image_id {ann.get('image_id')!r} is not among the images")
        if ann.get("category_id") not in label_of:
            raise _invalid(source, ann, f"category_id {ann.get('category_id')!r} is not among the categories "
                                        f"{list(cat_ids)}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise _invalid(source, ann, f"bbox {bbox!r} is not four numbers [x, y, width, height]")
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise _invalid(source, ann, f"bbox {bbox!r} is not finite")
        if w <= 0 or h <= 0:
            if drop_degenerate and w >= 0 and h >= 0:
                continue
            raise _invalid(source, ann, f"bbox {bbox!r} has a non-positive width or height")
        W, H = image["width"], image["height"]
        tol = BOX_TOLERANCE
        if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
            raise _invalid(source, ann, f"bbox {bbox!r} lies outside the {W}x{H} image {ann['image_id']}")
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(W)), min(y + h, float(H))
        area = ann.get("area")
        area = float(area) if isinstance(area, (int, float)) and math.isfinite(area) and area > 0 else w * h
        # VOC difficult objects are written as iscrowd = ignore = difficult = 1 (to_coco); plain
        # "ignore" without "iscrowd" is read as difficult too (trained on, not scored).
        crowd, ignore = bool(ann.get("iscrowd", 0)), bool(ann.get("ignore", 0))
        difficult = bool(ann.get("difficult", 0)) or (ignore and not crowd)
        image["anns"].append(([x1, y1, x2, y2], label_of[ann["category_id"]], crowd and not difficult, difficult,
                              area, ann.get("segmentation")))
    records = []
    for image_id, img in images.items():
        anns = img["anns"]
        n = len(anns)
        segs = tuple(a[5] for a in anns)
        records.append(ImageRecord(
            image_id=image_id, file_name=img["file_name"], height=img["height"], width=img["width"],
            boxes=torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(n, 4),
            labels=torch.tensor([a[1] for a in anns], dtype=torch.int64),
            difficult=torch.tensor([a[3] for a in anns], dtype=torch.bool).reshape(n),
            iscrowd=torch.tensor([a[2] for a in anns], dtype=torch.bool).reshape(n),
            areas=torch.tensor([a[4] for a in anns], dtype=torch.float32).reshape(n),
            segmentations=segs if n and all(s for s in segs) else None))
    return records, tuple(str(c.get("name", c["id"])) for c in cats), cat_ids


def _coco_dataset(name: str, records: list[ImageRecord], categories: tuple[str, ...], cat_ids: tuple[int, ...],
                  load_image: Callable[[int], Tensor], channels: int) -> DetectionDataset:
    """Wraps validated records; masks exist when every non-empty image has segmentations."""
    with_objects = [r for r in records if r.num_objects]
    has_masks = bool(with_objects) and all(r.segmentations is not None for r in with_objects)

    def load_masks(index: int) -> Tensor:
        rec = records[index]
        if not rec.num_objects or rec.segmentations is None:
            return torch.zeros(rec.num_objects, rec.height, rec.width, dtype=torch.uint8)
        return torch.from_numpy(np.stack([_segmentation_to_mask(s, rec.height, rec.width)
                                          for s in rec.segmentations]))

    return DetectionDataset(name, categories, channels, records, load_image, load_masks if has_masks else None,
                            cat_ids)


def _find_annotation_file(path: Path) -> Path:
    candidates = [path / "annotations.json"] if (path / "annotations.json").is_file() else sorted(
        (path / "annotations").glob("instances_*.json"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DatasetError(f"No COCO annotation file in '{path}' (looked for annotations.json and "
                           "annotations/instances_*.json).",
                           "Put the annotations in <folder>/annotations.json and the images in <folder>/images/, "
                           "or pass annotation_file.")
    raise DatasetError(f"Several annotation files in '{path / 'annotations'}': "
                       f"{', '.join(c.name for c in candidates)}.", "Pass the one to use as annotation_file.")


def load_coco_folder(path: str | Path, *, annotation_file: str | Path | None = None, channels: int | None = None,
                     name: str = "coco-folder") -> DetectionDataset:
    """Reads any COCO-format detection folder.

    Layout: the annotations in ``<path>/annotations.json`` (or the single
    ``<path>/annotations/instances_*.json``, or ``annotation_file``); image ``file_name`` s are
    resolved against ``<path>/images/``, then ``<path>/<x>/`` for ``instances_<x>.json`` (COCO's
    ``train2017/``), then ``<path>``. Masks are read from the annotations' ``segmentation``
    (polygons or RLE) when every image with objects has them.

    Args:
        path: the folder.
        annotation_file: an explicit annotation file.
        channels: 1 (grey) or 3 (RGB); default from the first image's mode.
        name: the dataset name recorded with results.

    Raises:
        DatasetError: the folder, the annotation file or an image is missing, or an annotation is
            invalid.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"COCO folder '{path}' does not exist.",
                           "Pass a folder with annotations.json and images/ (see save_coco_folder).")
    ann_path = Path(annotation_file) if annotation_file is not None else _find_annotation_file(path)
    try:
        coco = json.loads(ann_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"Cannot read COCO annotations '{ann_path}' ({exc}).",
                           "Check that the file exists and is valid JSON.") from None
    if not isinstance(coco, dict):
        raise DatasetError(f"'{ann_path}' is not a COCO annotation dict.", "Use a COCO-format annotation file.")
    records, categories, cat_ids = records_from_coco(coco, str(ann_path))
    if not records:
        raise DatasetError(f"'{ann_path}' lists no images.", "Add images to the annotation file.")
    roots = [path / "images", path / ann_path.stem.removeprefix("instances_"), path]
    root = next((r for r in roots if (r / records[0].file_name).is_file()), None)
    if root is None:
        raise DatasetError(f"Image '{records[0].file_name}' of '{ann_path}' is in none of: "
                           f"{', '.join(str(r) for r in roots)}.", "Put the images in <folder>/images/.")
    channels = channels or _image_channels(root / records[0].file_name)
    image_root = root

    def load_image(index: int) -> Tensor:
        return _read_image(image_root / records[index].file_name, channels)

    return _coco_dataset(name, records, categories, cat_ids, load_image, channels)


def save_coco_folder(dataset: DetectionDataset, path: str | Path) -> Path:
    """Writes a dataset as a COCO folder: ``images/<file_name>`` (PNG) and ``annotations.json``
    (:meth:`DetectionDataset.to_coco`). :func:`load_coco_folder` reads it back identically.

    Returns:
        The folder.
    """
    from PIL import Image

    path = Path(path)
    (path / "images").mkdir(parents=True, exist_ok=True)
    coco = dataset.to_coco()
    for i, (entry, rec) in enumerate(zip(coco["images"], dataset.records)):
        file_name = rec.file_name or f"{rec.image_id:06d}.png"
        if not file_name.lower().endswith(".png"):
            file_name = str(Path(file_name).with_suffix(".png"))
        entry["file_name"] = file_name
        arr = dataset.image(i).permute(1, 2, 0).numpy()
        out = path / "images" / file_name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(out)
    (path / "annotations.json").write_text(json.dumps(coco))
    return path


# ----------------------------------------------------------------------------------------------
# torchvision loaders (Pascal VOC, COCO 2017)


def _voc_records(annotation_paths: Sequence[str], first_id: int) -> list[ImageRecord]:
    """Parses VOC XML files (torchvision's ``VOCDetection.parse_voc_xml``); VOC's 1-based pixel
    boxes become 0-based ``[xmin - 1, ymin - 1, xmax, ymax]`` (as detectron2's VOC loader)."""
    from torchvision.datasets import VOCDetection

    label_of = {name: k + 1 for k, name in enumerate(VOC_CLASSES)}
    records = []
    for i, xml_path in enumerate(annotation_paths):
        try:
            ann = VOCDetection.parse_voc_xml(ET.parse(xml_path).getroot())["annotation"]
            size = ann["size"]
            height, width = int(size["height"]), int(size["width"])
        except (OSError, ET.ParseError, KeyError, ValueError) as exc:
            raise DatasetError(f"Cannot read VOC annotation '{xml_path}' ({exc}).",
                               "Re-extract the VOC archive.") from None
        objects = ann.get("object", [])
        objects = objects if isinstance(objects, list) else [objects]
        boxes, labels, difficult = [], [], []
        for obj in objects:
            if obj.get("name") not in label_of:
                raise DatasetError(f"VOC annotation '{xml_path}' has an object of unknown class "
                                   f"{obj.get('name')!r}.", f"Valid classes: {', '.join(VOC_CLASSES)}.")
            bb = obj["bndbox"]
            x1, y1, x2, y2 = (float(bb[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            box = [x1 - 1.0, y1 - 1.0, x2, y2]
            tol = BOX_TOLERANCE
            if not (-tol <= box[0] < box[2] <= width + tol and -tol <= box[1] < box[3] <= height + tol):
                raise DatasetError(f"VOC annotation '{xml_path}' has an invalid box {[x1, y1, x2, y2]} for a "
                                   f"{width}x{height} image.", "Fix the box or remove the object.")
            boxes.append([max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))])
            labels.append(label_of[obj["name"]])
            difficult.append(int(obj.get("difficult", 0)) == 1)
        n = len(labels)
        box_t = torch.tensor(boxes, dtype=torch.float32).reshape(n, 4)
        records.append(ImageRecord(
            image_id=first_id + i, file_name=Path(xml_path).stem + ".jpg", height=height, width=width,
            boxes=box_t, labels=torch.tensor(labels, dtype=torch.int64),
            difficult=torch.tensor(difficult, dtype=torch.bool).reshape(n),
            iscrowd=torch.zeros(n, dtype=torch.bool), areas=_box_area(box_t)))
    return records


def _voc_split(root: Path, year: str, image_set: str) -> Any:
    from torchvision.datasets import VOCDetection

    try:
        return VOCDetection(str(root), year=year, image_set=image_set, download=False)
    except (RuntimeError, OSError) as exc:
        where = root / "VOCdevkit" / f"VOC{year}"
        raise DatasetError(
            f"Pascal VOC {year} {image_set} not found: torchvision's VOCDetection looked in '{where}' "
            f"(JPEGImages/, Annotations/, ImageSets/Main/{image_set}.txt) ({str(exc).splitlines()[0][:120]}).",
            f"Extract VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar (and VOCtrainval_11-May-2012.tar for "
            f"voc0712) into '{root}' so that '{root}/VOCdevkit/VOC2007' exists, or pass data_dir.") from None


def load_voc(split: str, *, years: Sequence[str] = ("2007",), data_dir: str | Path | None = None) -> DetectionDataset:
    """Pascal VOC through torchvision's ``VOCDetection`` (never downloads).

    Split ``"train"`` is the trainval set of each year in ``years`` (``("2007",)`` for VOC07,
    ``("2007", "2012")`` for VOC07+12); ``"test"`` is always VOC 2007 test. Difficult objects are
    kept for training (as detectron2) and ignored by the metric.

    Args:
        split: ``"train"`` or ``"test"``.
        years: the trainval years.
        data_dir: the folder holding ``VOCdevkit/`` (default ``<sslbench data dir>/voc``).

    Raises:
        DatasetError: the data is missing or unreadable.
    """
    from sslbench.benchmark.datasets import default_data_dir

    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir() / "voc"
    parts = [("2007", "test")] if split == "test" else [(y, "trainval") for y in years]
    records: list[ImageRecord] = []
    image_paths: list[str] = []
    for year, image_set in parts:
        voc = _voc_split(root, year, image_set)
        part = _voc_records(voc.annotations, first_id=len(records) + 1)
        for rec, img in zip(part, voc.images):
            records.append(rec)
            image_paths.append(img)
    name = "voc0712" if "2012" in years else "voc07"

    def load_image(index: int) -> Tensor:
        return _read_image(Path(image_paths[index]), 3)

    return DetectionDataset(name, VOC_CLASSES, 3, records, load_image)


def load_coco2017(split: str, *, data_dir: str | Path | None = None) -> DetectionDataset:
    """COCO 2017 through torchvision's ``CocoDetection`` (never downloads): ``"train"`` is
    train2017, ``"test"`` is val2017 (the split every paper reports). Masks are decoded from the
    polygons / RLE with pycocotools; crowd regions are not trained on and are ignored by the
    metric; boxes with zero width or height (a few in train2017) are dropped.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: the folder holding ``annotations/instances_<x>2017.json`` and ``<x>2017/``
            (default ``<sslbench data dir>/coco``).

    Raises:
        DatasetError: the data is missing or an annotation is invalid.
    """
    from sslbench.benchmark.datasets import default_data_dir

    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir() / "coco"
    part = "train2017" if split == "train" else "val2017"
    ann_file, img_dir = root / "annotations" / f"instances_{part}.json", root / part
    if not ann_file.is_file() or not img_dir.is_dir():
        raise DatasetError(f"COCO 2017 {split} not found: looked for '{ann_file}' and '{img_dir}/'.",
                           f"Download train2017.zip, val2017.zip and annotations_trainval2017.zip from "
                           f"https://cocodataset.org and extract them into '{root}', or pass data_dir.")
    from torchvision.datasets import CocoDetection

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_ds = CocoDetection(str(img_dir), str(ann_file))
    records, categories, cat_ids = records_from_coco(coco_ds.coco.dataset, str(ann_file), drop_degenerate=True)
    position = {image_id: k for k, image_id in enumerate(coco_ds.ids)}

    def load_image(index: int) -> Tensor:
        image = coco_ds[position[records[index].image_id]][0]
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()

    return _coco_dataset("coco2017", records, categories, cat_ids, load_image, 3)


def load_detection_dataset(name: str, split: str, data_dir: str | Path | None = None) -> DetectionDataset:
    """One split of a detection dataset by name (:data:`DETECTION_DATASETS`).

    ``coco-folder`` needs ``data_dir``: split ``s`` is the COCO folder ``<data_dir>/<s>/`` when
    it exists, else ``<data_dir>`` with the annotation file ``annotations/instances_<s>*.json``
    (``"test"`` also accepts ``instances_val*.json``), images under ``<data_dir>/images/`` or
    the folder named after the file (see :func:`load_coco_folder`).

    Raises:
        UnknownNameError: an unknown name (the error lists the valid ones).
        DatasetError: a bad split or missing data.
    """
    if name not in DETECTION_DATASETS:
        raise unknown_name("detection dataset", name, DETECTION_DATASETS)
    if split not in ("train", "test"):
        raise DatasetError(f"Detection dataset '{name}' has no split '{split}'.", "Use 'train' or 'test'.")
    if name in ("embedded-detection", "embedded-detection-color"):
        return make_embedded_detection(split, color=name == "embedded-detection-color")
    if name in ("voc07", "voc0712"):
        return load_voc(split, years=("2007",) if name == "voc07" else ("2007", "2012"), data_dir=data_dir)
    if name == "coco2017":
        return load_coco2017(split, data_dir=data_dir)
    if data_dir is None:
        raise DatasetError("Detection dataset 'coco-folder' needs a data directory.",
                           "Pass data_dir=<folder> holding train/ and test/ COCO folders.")
    root = Path(data_dir).expanduser()
    if (root / split).is_dir():
        return load_coco_folder(root / split, name=f"coco-folder:{root.name}")
    prefixes = (split, "val") if split == "test" else (split,)
    files = [f for p in prefixes for f in sorted((root / "annotations").glob(f"instances_{p}*.json"))]
    if not files:
        raise DatasetError(f"No '{split}' split in COCO folder '{root}': looked for '{root / split}/' and "
                           f"'{root / 'annotations'}/instances_{split}*.json'.",
                           "Put each split in its own COCO folder (<data_dir>/train/, <data_dir>/test/).")
    return load_coco_folder(root, annotation_file=files[0], name=f"coco-folder:{root.name}")
