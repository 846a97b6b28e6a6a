"""Datasets: a registry of named image datasets, held in memory or decoded from folders.

Every dataset yields :class:`Batch` es of uint8 images ``(B, C, H, W)`` with int64 labels and the
images' positions in the split; augmentation and normalisation happen later, batched, on the
training device. Small datasets (Fashion-MNIST, CIFAR, STL-10) are held as one uint8 tensor
(:class:`ArrayDataset`) that moves to the GPU once; ImageFolder-style data (ImageNet, Imagenette)
is decoded per image in DataLoader workers (:class:`FolderDataset`) or, when it is small enough,
decoded once into a cache file and held in memory like the others (:class:`FolderArrays`).

Nothing downloads unless ``download=True`` (``--download``). A missing or unreadable dataset
raises one :class:`~sslbench.benchmark.errors.DatasetError` naming every place looked in and how
to get the data.

The embedded ``fashion-mnist-mini`` (12,000 Fashion-MNIST images, built by
``python -m sslbench.benchmark.make_embedded_data``) ships with the package and needs nothing.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import io
import json
import math
import os
import pickle
import statistics
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sslbench.benchmark.errors import ConfigError, DatasetError, unknown_name

if TYPE_CHECKING:
    from sslbench.benchmark.augment import CropSampler

#: Where Debian's ``dataset-fashion-mnist`` package installs the original gzipped idx files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The embedded subset, next to this module (shipped as package data).
EMBEDDED_NPZ = Path(__file__).resolve().parent / "data" / "fashion_mnist_mini.npz"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Image file extensions a folder dataset reads (torchvision's ``IMG_EXTENSIONS``).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------------------------
# Descriptions and batches


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, known without loading it.

    Attributes:
        name: the registry name.
        image_size: side of the square images the pipeline works on.
        channels: 1 (grey) or 3 (RGB).
        num_classes: number of classes; 0 means "discovered at load time" (imagefolder).
        mean: per-channel mean on the [0, 1] scale (of the training split).
        std: per-channel standard deviation on the [0, 1] scale (over all pixels, not the mean
            of per-image standard deviations).
        in_memory: True when a split is held as one uint8 tensor (:class:`ArrayDataset`).
        source: one line saying where the data comes from and how to get it.
    """

    name: str
    image_size: int
    channels: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool
    source: str

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_size < 1 or self.num_classes < 0:
            raise ValueError(f"bad image_size {self.image_size} or num_classes {self.num_classes}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values, got {self.mean}, {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")


class Batch(NamedTuple):
    """One batch of a split.

    Attributes:
        images: uint8 images, on the dataset's device.
        labels: int64 class indices (-1 for unlabelled images, e.g. STL-10 "unlabeled").
        indices: int64 positions of the images in the split (instance-discrimination methods
            keep a per-image memory indexed by them).

    Shape:
        images: (B, C, H, W); labels: (B,); indices: (B,).
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


def _check_batch_args(batch_size: int, generator: torch.Generator | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"the shuffling generator must live on the CPU, got one on {generator.device}; the "
            "permutation is drawn on the CPU and moved to the data's device"
        )


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def _epoch_order(n: int, shuffle: bool, generator: torch.Generator | None) -> torch.Tensor:
    """The order in which one epoch visits a split: ``randperm`` on the CPU, or ``arange``."""
    if shuffle:
        return torch.randperm(n, generator=generator)
    return torch.arange(n)


def _shard_order(
    order: torch.Tensor, batch_size: int, drop_last: bool, rank: int, world_size: int
) -> tuple[torch.Tensor, int]:
    """This rank's part of an epoch order: its contiguous slice of every global batch.

    Global batch ``b`` is ``order[b * B : (b + 1) * B]``; rank ``r`` of ``W`` takes its rows
    ``r * B / W : (r + 1) * B / W``. The ranks' slices of one batch, concatenated in rank
    order, are that batch.

    Returns:
        The rank's order and its batch size ``B / W`` (``order`` and ``B`` for one process).

    Shape:
        order: (N,); returns (N // B * B / W,) for W > 1.
    """
    if world_size == 1 and rank == 0:
        return order, batch_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {world_size} ranks")
    if not drop_last:
        raise ValueError("a batch split over ranks needs drop_last=True (a short final batch "
                         "cannot be split evenly)")
    local, num = batch_size // world_size, len(order) // batch_size
    return order[: num * batch_size].view(num, world_size, local)[:, rank].reshape(-1), local


# ----------------------------------------------------------------------------------------------
# In-memory splits


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A split held in memory as one uint8 tensor (moved to the GPU once with :meth:`to`).

    Attributes:
        images: uint8 images.
        labels: int64 class indices (-1 for unlabelled images).
        info: the dataset's description.
        split: the split's name ("train", "test", ...).

    Shape:
        images: (N, C, H, W); labels: (N,).
    """

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    split: str

    def __post_init__(self) -> None:
        img, lab = self.images, self.labels
        if img.dtype != torch.uint8 or img.dim() != 4 or img.shape[1] != self.info.channels:
            raise ValueError(
                f"images must be uint8 (N, {self.info.channels}, H, W), got {img.dtype} "
                f"{tuple(img.shape)}"
            )
        if lab.dtype != torch.int64 or lab.shape != (img.shape[0],):
            raise ValueError(f"labels must be int64 ({img.shape[0]},), got {lab.dtype} {tuple(lab.shape)}")
        if img.device != lab.device:
            raise ValueError(f"images on {img.device} but labels on {lab.device}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        _, c, h, w = self.images.shape
        return (
            f"ArrayDataset('{self.info.name}', split='{self.split}', {len(self)} images "
            f"{c}x{h}x{w}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        """Where the images and labels live."""
        return self.images.device

    def to(self, device: torch.device | str) -> ArrayDataset:
        """Returns the split with images and labels on ``device`` (one copy, done once)."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def subset(self, indices: torch.Tensor) -> ArrayDataset:
        """Returns the images at ``indices`` as a new split (positions are renumbered from 0).

        Args:
            indices: int64 positions in this split, on any device.

        Shape:
            indices: (M,).
        """
        if indices.dtype != torch.int64 or indices.dim() != 1:
            raise ValueError(
                f"indices must be a 1-D int64 tensor, got {indices.dtype} {tuple(indices.shape)}"
            )
        idx = indices.to(self.device)
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        """How many batches :meth:`batches` yields per epoch."""
        return _num_batches(len(self), batch_size, drop_last)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Yields one epoch of batches by indexing the in-memory tensors (no per-image loop).

        Args:
            batch_size: images per batch (over all ranks).
            shuffle: visit the images in the order ``torch.randperm(N, generator=generator)``
                (drawn on the CPU, then moved to the data's device); otherwise in order.
            generator: a CPU generator; the same generator state gives the same order.
            drop_last: leave out the final batch when it is smaller than ``batch_size``.
            rank: with ``world_size > 1``, yield only this rank's contiguous slice of each
                batch (``batch_size / world_size`` images). All ranks must pass the same
                generator state, so that they slice the same batches; needs ``drop_last``.
            world_size: number of data-parallel ranks sharing each batch.
        """
        _check_batch_args(batch_size, generator)
        order = _epoch_order(len(self), shuffle, generator)
        order, batch_size = _shard_order(order, batch_size, drop_last, rank, world_size)
        return self._iterate(order.to(self.device), batch_size, drop_last)

    def _iterate(self, order: torch.Tensor, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        stop = self.num_batches(batch_size, drop_last) * batch_size
        for start in range(0, min(stop, len(order)), batch_size):
            idx = order[start : start + batch_size]
            yield Batch(self.images[idx], self.labels[idx], idx)


# ----------------------------------------------------------------------------------------------
# Folder splits (decoded per image)

#: How a folder split frames its images: ``centre`` (evaluation: the shorter side resized to the
#: image size, then the centre square) or ``full`` (training: the WHOLE image resized to a square
#: canvas of ``load_size``, so that the batched RandomResizedCrop sees all of it).
FRAMES = ("centre", "full")
#: ``data.cache`` values: hold a folder split in memory, decoded once (see :func:`load_dataset`).
CACHE_MODES = ("auto", "on", "off")
#: ``cache="auto"`` holds a folder split in memory when its decoded images take at most this.
CACHE_LIMIT_BYTES = 4 * 2**30
#: Default training canvas side over the image size (256 for 224: the usual "resize 256, crop 224").
LOAD_SIZE_RATIO = 8 / 7
#: Files whose shorter side is read (from their headers) to choose the image and canvas sizes.
SIZE_SAMPLE = 64
#: Scans check every image file's first bytes up to this many files (always with ``strict``);
#: above it, unreadable files are found when decoded (about 13 us per file, warm cache).
HEADER_CHECK_MAX_FILES = 200_000
#: A file that fails to decode is replaced by the next file of the split that decodes, up to
#: this many tries (then by a black image).
_REPLACEMENT_TRIES = 8
#: Leading bytes of the formats in IMAGE_EXTENSIONS (a file's extension need not match its format).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*",
               b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")
#: What PIL and torchvision raise for a file that is not a readable image.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, RuntimeError)


def _note(message: str) -> None:
    """One line about what a folder dataset found or chose, on stderr."""
    print(f"sslbench: imagefolder: {message}", file=sys.stderr)


def _pil_tensor(image: object) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _read_rgb(path: str, min_side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decodes an image file to uint8 RGB.

    JPEG and PNG are decoded by ``torchvision.io`` (libjpeg-turbo / libpng; with the uint8 resize
    below about 2.5x faster than PIL on 2 CPU cores, see ``bench_decode``); other formats by PIL. A
    JPEG at least ``2 * min_side`` on both sides is decoded by PIL at the smallest libjpeg DCT scale
    (1/2, 1/4, 1/8) that keeps both sides >= ``min_side``, which is much faster for large photos.
    EXIF orientation is not applied (neither torchvision's ``ImageFolder`` nor ``decode_jpeg``
    apply it by default).

    Returns:
        The image and the file's own (width, height).

    Shape:
        returns (3, h, w).
    """
    from PIL import Image

    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        size = (int(im.size[0]), int(im.size[1]))
        fmt = im.format
        if fmt == "JPEG" and min(size) >= 2 * min_side:
            im.draft("RGB", (min_side, min_side))
            return _pil_tensor(im.convert("RGB")), size
        if fmt not in ("JPEG", "PNG"):
            return _pil_tensor(im.convert("RGB")), size
        import torchvision.io as tio

        try:
            out = tio.decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=tio.ImageReadMode.RGB)
            if out.dtype == torch.uint8 and out.shape[0] == 3:
                return out, size
        except RuntimeError:  # a variant libjpeg / libpng refuses (e.g. some CMYK JPEGs): PIL's turn
            pass
        return _pil_tensor(im.convert("RGB")), size


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a uint8 image with antialiasing (torchvision's uint8 kernel; torchvision's
    ``Resize`` default). Shape: image (3, h, w) -> (3, height, width)."""
    if image.shape[-2:] == (height, width):
        return image
    from torchvision.transforms.v2 import functional as TF

    out: torch.Tensor = TF.resize(image, [height, width], antialias=True)
    return out


def decode_image(path: str, image_size: int) -> torch.Tensor:
    """Reads an image file as RGB, resizes its shorter side and centre-crops it to a square (the
    evaluation frame, ``frame="centre"``).

    Args:
        path: an image file (JPEG and PNG via ``torchvision.io``, others via PIL).
        image_size: side of the square output.

    Returns:
        uint8 RGB image.

    Shape:
        returns (3, image_size, image_size).
    """
    image, _ = _read_rgb(path, image_size)
    h, w = image.shape[-2:]
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    image = _resize(image, new_h, new_w)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    return image[:, top : top + image_size, left : left + image_size].contiguous()


def decode_full_frame(path: str, load_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reads an image file as RGB and resizes the WHOLE image to a ``load_size`` square (the
    training frame, ``frame="full"``): nothing is cropped, so a box covering a fraction of the
    canvas covers the same fraction of the original image; the aspect ratio is squashed, which
    :class:`FullFrameCropSampler` undoes for the crops.

    Returns:
        The canvas and the file's own (width, height).

    Shape:
        returns (3, load_size, load_size).
    """
    image, size = _read_rgb(path, load_size)
    return _resize(image, load_size, load_size), size


class FullFrameCropSampler:
    """RandomResizedCrop drawn on each image's original frame, placed on its full-frame canvas.

    A full-frame canvas (:func:`decode_full_frame`) is the whole image resized to a square, so
    area fractions of the canvas are area fractions of the original, but the canvas's aspect ratio
    is 1, not the image's. This sampler draws torchvision's RandomResizedCrop on a frame of the
    image's own aspect ratio ``a = width / height``: area fraction ~ U(scale), log aspect ratio ~
    U(log ratio), the first of the tries that fits wins; none fits -> the centre crop with ``a``
    clamped into ``ratio``. The box is then mapped onto the canvas (x scaled by canvas width / a),
    so after the resize to the view size the crop shows the original content with torchvision's
    distortion distribution. With ``a = canvas width / height`` it gives the boxes of
    :func:`sslbench.benchmark.augment.sample_view_params`' own RandomResizedCrop from the same
    draws. A ``CropSampler`` for :class:`~sslbench.benchmark.augment.BatchAugment`.

    Args:
        aspect: each image's original width / height (positive).

    Shape:
        aspect: (B,).
    """

    def __init__(self, aspect: torch.Tensor) -> None:
        if aspect.dim() != 1 or not bool(torch.isfinite(aspect).all()) or not bool((aspect > 0).all()):
            raise ValueError(f"aspect must be a 1-D tensor of positive ratios, got {aspect!r}")
        self.aspect = aspect

    def __call__(self, u: torch.Tensor, height: int, width: int, scale: tuple[float, float],
                 ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Boxes ``(top, left, height, width)`` in canvas pixels from RandomResizedCrop's uniform
        columns (``2 * tries`` for area and aspect ratio, then two for the position).

        Shape:
            u: (B, 2 * tries + 2); returns (B, 4).
        """
        if u.shape[0] != self.aspect.shape[0]:
            raise ValueError(f"{u.shape[0]} crops asked for {self.aspect.shape[0]} images")
        n = (u.shape[1] - 2) // 2
        a = self.aspect.to(device=u.device, dtype=u.dtype)
        area = a[:, None] * (scale[0] + (scale[1] - scale[0]) * u[:, :n])  # the frame is a x 1
        log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
        r = torch.exp(log_lo + (log_hi - log_lo) * u[:, n : 2 * n])
        w, h = torch.sqrt(area * r), torch.sqrt(area / r)
        fits = (w <= a[:, None]) & (h <= 1.0)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        any_fit = fits.any(dim=1)
        fb_w = a.clamp(max=ratio[1])  # centre crop: the whole frame, its aspect clamped into ratio
        fb_h = torch.where(a < ratio[0], a / ratio[0], torch.ones_like(a))
        w, h = torch.where(any_fit, w, fb_w), torch.where(any_fit, h, fb_h)
        top = torch.where(any_fit, u[:, 2 * n] * (1.0 - h), (1.0 - h) / 2)
        left = torch.where(any_fit, u[:, 2 * n + 1] * (a - w), (a - w) / 2)
        sx = width / a
        return torch.stack((top * height, left * sx, h * height, w * sx), dim=1)


def full_frame_sampler(dataset: object, indices: torch.Tensor) -> CropSampler | None:
    """The crop sampler a training batch at ``indices`` needs: a :class:`FullFrameCropSampler`
    for a full-frame folder split (:class:`FolderDataset` or :class:`FolderArrays` with
    ``frame="full"``), None for any other dataset (RandomResizedCrop on the batch as it is)."""
    method = getattr(dataset, "crop_sampler", None)
    return method(indices) if callable(method) else None


_Item = tuple[torch.Tensor, int, int, int, int, bool]  # (image, label, index, width, height, replaced)


class _DecodedImages(Dataset[_Item]):
    """Map-style dataset for the DataLoader workers. A file that cannot be decoded is replaced by
    the next file of the split that can (its label, the asked index) and flagged, so that the
    main process counts it (or, with ``strict``, raises a clean error naming it); a worker never
    dies of a bad file."""

    def __init__(self, samples: Sequence[tuple[str, int]], frame: str, side: int) -> None:
        self.samples = samples
        self.frame = frame
        self.side = side

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, path: str) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.frame == "full":
            return decode_full_frame(path, self.side)
        image = decode_image(path, self.side)
        return image, (self.side, self.side)

    def __getitem__(self, index: int) -> _Item:
        for k in range(_REPLACEMENT_TRIES + 1):
            path, label = self.samples[(index + k) % len(self.samples)]
            try:
                image, (w, h) = self._decode(path)
            except _DECODE_ERRORS:  # PIL raises OSError, ValueError, SyntaxError; torchvision RuntimeError
                continue
            return image, label, index, w, h, k > 0
        return torch.zeros(3, self.side, self.side, dtype=torch.uint8), -1, index, 1, 1, True


class _OrderSampler(Sampler[int]):
    """Yields the current epoch's order; set before each epoch so one DataLoader (and its
    persistent workers) serves every epoch. Sampling runs in the main process."""

    def __init__(self, n: int) -> None:
        self.order: list[int] = list(range(n))

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class FolderDataset:
    """An ImageFolder-style split (``root/<class>/<image>``, or unlabelled images) decoded per
    image in DataLoader workers.

    Two frames (``frame``): ``centre`` (evaluation) resizes each image's shorter side to
    ``info.image_size`` and takes the centre square; ``full`` (training) resizes the whole image
    to a ``load_size`` square, so that the batched augmentation's RandomResizedCrop sees the full
    photo (area fractions are fractions of the original image) and crops it to the image size;
    :meth:`crop_sampler` gives the boxes in each image's own aspect ratio. Images are returned as
    uint8, so the same batched augmentation consumes them as in-memory data. Batches come back on
    the CPU (pinned when CUDA is available). One DataLoader per (batch_size, drop_last) is kept
    with persistent workers; do not iterate two epochs of the same dataset at once.

    A file that fails to decode is replaced by the next file of the split that decodes (its image
    and label, at the asked index) and counted: each epoch that meets new ones prints how many and
    one path. With ``strict`` the first one raises :class:`DatasetError` instead.

    Args:
        samples: (file path, class index or -1 when unlabelled) of every image, in a fixed order.
        classes: class folder names; class index i is ``classes[i]``.
        info: the dataset's description (``image_size`` is the size the model sees).
        split: the split's name.
        num_workers: decoding processes (0 decodes in the main process).
        frame: ``centre`` or ``full`` (see above).
        load_size: the ``full`` frame's canvas side (default: ``info.image_size``); >= the image size.
        strict: raise on the first file that fails to decode instead of replacing it.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        info: DatasetInfo,
        split: str,
        num_workers: int = 2,
        *,
        frame: str = "centre",
        load_size: int | None = None,
        strict: bool = False,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
        side = info.image_size if frame == "centre" or load_size is None else load_size
        if side < info.image_size:
            raise ValueError(f"load_size {side} is smaller than the image size {info.image_size}")
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.info = info
        self.split = split
        self.num_workers = num_workers
        self.frame = frame
        self.side = side
        self.strict = strict
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        #: each image's original width / height, known once it has been decoded (NaN before)
        self.frame_aspect = torch.full((len(self.samples),), math.nan)
        #: indices of the files that failed to decode (and were replaced)
        self.unreadable: set[int] = set()
        self._loaders: dict[tuple[int, bool], tuple[DataLoader[_Item], _OrderSampler]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        frame = f"full frame {self.side}px -> {self.info.image_size}px" if self.frame == "full" else (
            f"{self.info.image_size}px centre")
        return (
            f"FolderDataset('{self.info.name}', split='{self.split}', {len(self)} images, "
            f"{len(self.classes)} classes, {frame})"
        )

    @property
    def device(self) -> torch.device:
        """Batches are produced on the CPU."""
        return torch.device("cpu")

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        """How many batches :meth:`batches` yields per epoch."""
        return _num_batches(len(self), batch_size, drop_last)

    def crop_sampler(self, indices: torch.Tensor) -> CropSampler | None:
        """For a batch just yielded by :meth:`batches`: the :class:`FullFrameCropSampler` of its
        images with the ``full`` frame (None with ``centre``).

        Shape:
            indices: (B,).
        """
        if self.frame != "full":
            return None
        aspect = self.frame_aspect[indices.cpu()]
        if bool(aspect.isnan().any()):
            raise ValueError("crop_sampler() needs indices of images already decoded by batches()")
        return FullFrameCropSampler(aspect)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Yields one epoch of decoded batches; same arguments as :meth:`ArrayDataset.batches`
        (with ``world_size > 1`` each rank decodes only its own slices)."""
        _check_batch_args(batch_size, generator)
        order = _epoch_order(len(self), shuffle, generator)
        order, batch_size = _shard_order(order, batch_size, drop_last, rank, world_size)
        loader, sampler = self._loader(batch_size, drop_last)
        sampler.order = order.tolist()
        return self._iterate(loader)

    def _loader(self, batch_size: int, drop_last: bool) -> tuple[DataLoader[_Item], _OrderSampler]:
        key = (batch_size, drop_last)
        if key not in self._loaders:
            sampler = _OrderSampler(len(self))
            loader = DataLoader(
                _DecodedImages(self.samples, self.frame, self.side),
                batch_size=batch_size,
                sampler=sampler,
                drop_last=drop_last,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                pin_memory=torch.cuda.is_available(),
            )
            self._loaders[key] = (loader, sampler)
        return self._loaders[key]

    def _iterate(self, loader: DataLoader[_Item]) -> Iterator[Batch]:
        fresh: list[int] = []
        for images, labels, indices, widths, heights, replaced in loader:
            self.frame_aspect[indices] = widths.double().div(heights.double()).float()
            if bool(replaced.any()):
                bad = indices[replaced].tolist()
                if self.strict:
                    self._raise_unreadable(bad[0])
                fresh += [i for i in bad if i not in self.unreadable]
                self.unreadable.update(bad)
            yield Batch(images, labels, indices)
        if fresh:
            _note(f"{len(fresh)} image file(s) of split '{self.split}' failed to decode and were "
                  f"replaced by the next readable image (e.g. '{self.samples[fresh[0]][0]}'); "
                  "data.strict=true makes this an error.")

    def _raise_unreadable(self, index: int) -> None:
        path = self.samples[index][0]
        try:  # decode again here, for the reason
            _read_rgb(path, self.side)
            reason = "it failed to decode in a worker"
        except _DECODE_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
        raise DatasetError(
            f"Cannot read image file '{path}' of dataset '{self.info.name}' ({reason}).",
            "Replace or delete the file (it is corrupt, truncated or not an image), or drop "
            "data.strict to skip such files with a warning.",
        )


@dataclass(frozen=True, eq=False)
class FolderArrays(ArrayDataset):
    """A folder split decoded once and held in memory (``data.cache``), loaded from the cache
    file; it trains exactly as the :class:`FolderDataset` it was decoded from (same pixels, same
    replacements), at the in-memory speed.

    Attributes:
        classes: class folder names.
        frame: ``centre`` or ``full``, as the FolderDataset's.
        frame_aspect: each image's original width / height (``full`` frame).
        cache_file: the file the images were read from.

    Shape:
        frame_aspect: (N,).
    """

    classes: tuple[str, ...] = ()
    frame: str = "centre"
    frame_aspect: torch.Tensor | None = None
    cache_file: str = ""

    def __repr__(self) -> str:
        _, c, h, w = self.images.shape
        return (f"FolderArrays('{self.info.name}', split='{self.split}', {len(self)} images {c}x{h}x{w}, "
                f"{self.frame} frame, device={self.device}, cache='{self.cache_file}')")

    def to(self, device: torch.device | str) -> FolderArrays:
        """Returns the split with its tensors on ``device`` (one copy, done once)."""
        aspect = None if self.frame_aspect is None else self.frame_aspect.to(device)
        return replace(self, images=self.images.to(device), labels=self.labels.to(device), frame_aspect=aspect)

    def subset(self, indices: torch.Tensor) -> FolderArrays:
        """Returns the images at ``indices`` as a new split (see :meth:`ArrayDataset.subset`)."""
        out = super().subset(indices)
        aspect = None if self.frame_aspect is None else self.frame_aspect[indices.to(self.frame_aspect.device)]
        return replace(self, images=out.images, labels=out.labels, frame_aspect=aspect)

    def crop_sampler(self, indices: torch.Tensor) -> CropSampler | None:
        """As :meth:`FolderDataset.crop_sampler`. Shape: indices (B,)."""
        if self.frame != "full" or self.frame_aspect is None:
            return None
        return FullFrameCropSampler(self.frame_aspect[indices.to(self.frame_aspect.device)])


# ----------------------------------------------------------------------------------------------
# Registry


class DatasetLoader(Protocol):
    """A registered loader: returns one split (already checked to be valid)."""

    def __call__(
        self,
        split: str,
        *,
        data_dir: Path | None,
        download: bool,
        image_size: int | None,
        num_workers: int,
    ) -> ArrayDataset | FolderDataset: ...


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    splits: tuple[str, ...]
    loader: DatasetLoader


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(
    name: str, *, info: DatasetInfo, splits: tuple[str, ...]
) -> Callable[[DatasetLoader], DatasetLoader]:
    """Registers a loader function under ``name`` (a decorator).

    Args:
        name: the registry name; must not be registered yet.
        info: the dataset's description (``info.name`` must equal ``name``).
        splits: the valid split names.
    """
    if info.name != name:
        raise ValueError(f"info.name '{info.name}' differs from the registered name '{name}'")

    def decorate(loader: DatasetLoader) -> DatasetLoader:
        if name in _REGISTRY:
            raise ValueError(f"dataset '{name}' is already registered")
        _REGISTRY[name] = _Entry(info, tuple(splits), loader)
        return loader

    return decorate


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise unknown_name("dataset", name, _REGISTRY, "`sslbench datasets` lists them.")
    return _REGISTRY[name]


def dataset_info(name: str) -> DatasetInfo:
    """The description of a registered dataset (without loading it)."""
    return _entry(name).info


def dataset_splits(name: str) -> tuple[str, ...]:
    """The valid split names of a registered dataset."""
    return _entry(name).splits


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    num_workers: int = 2,
    cache: str = "off",
    strict: bool = False,
    frame: str = "centre",
    load_size: int | None = None,
) -> ArrayDataset | FolderDataset:
    """Loads one split of a registered dataset (on the CPU).

    Args:
        name: a registered name (:func:`list_datasets`).
        split: one of the dataset's splits ("train", "test", ...).
        data_dir: where the data lives (not needed for ``fashion-mnist-mini``); torchvision
            datasets default to ``$XDG_CACHE_HOME/sslbench/datasets`` (``~/.cache/...``).
        download: let torchvision fetch a missing dataset (needs internet); never implied.
        image_size: output side for folder datasets (default: inferred from the images,
            :func:`infer_image_size`). In-memory datasets keep their native size and ignore it
            (the batched augmentation resizes).
        num_workers: decoding processes for folder datasets.
        cache: folder datasets: ``auto`` holds the split in memory, decoded once into a cache
            file (:func:`cached_split`), when it takes at most :data:`CACHE_LIMIT_BYTES`;
            ``on`` always; ``off`` never (the default here, so that a library call writes no cache
            file unless asked; ``data.cache`` defaults to ``auto``). A cached split is a
            :class:`FolderArrays`.
        strict: folder datasets: a corrupt or non-image file is an error instead of being
            skipped (at scan time) or replaced (at decode time) with a printed count.
        frame: folder datasets: ``centre`` (evaluation; shorter side resized, centre square) or
            ``full`` (pretraining: the whole image on a ``load_size`` canvas, crops drawn on the
            original frame by :func:`full_frame_sampler`). In-memory data is always whole.
        load_size: the ``full`` frame's canvas side (default :func:`auto_load_size`: 256 for 224).

    Raises:
        UnknownNameError: ``name`` is not registered.
        DatasetError: a bad split, or the data is missing or unreadable.
    """
    entry = _entry(name)
    if split not in entry.splits:
        raise DatasetError(
            f"Dataset '{name}' has no split '{split}'.",
            f"Valid splits: {', '.join(entry.splits)}.",
        )
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size}.", "Pass e.g. 224.")
    if num_workers < 0:
        raise ConfigError(
            f"num_workers must be >= 0, got {num_workers}.", "Pass 0 to decode in the main process."
        )
    if cache not in CACHE_MODES or frame not in FRAMES or (load_size is not None and load_size < 1):
        raise ConfigError(
            f"Invalid folder options cache={cache!r}, frame={frame!r}, load_size={load_size!r}.",
            f"cache is one of {', '.join(CACHE_MODES)}, frame one of {', '.join(FRAMES)}, load_size "
            "a positive integer or None.",
        )
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if entry.loader is _load_imagefolder:  # the folder dataset: its decode and cache options
        return _load_imagefolder(split, data_dir=root, download=download, image_size=image_size,
                                 num_workers=num_workers, cache=cache, strict=strict, frame=frame,
                                 load_size=load_size)
    return entry.loader(
        split, data_dir=root, download=download, image_size=image_size, num_workers=num_workers
    )


def default_data_dir() -> Path:
    """Where torchvision datasets live when no ``data_dir`` is given."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sslbench" / "datasets"


def _array_dataset(images: np.ndarray, labels: np.ndarray, info: DatasetInfo, split: str) -> ArrayDataset:
    """Wraps uint8 (N, C, H, W) images and integer labels, copied into fresh, writable tensors."""
    img = torch.from_numpy(np.array(images, dtype=np.uint8, order="C", copy=True))
    lab = torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))
    return ArrayDataset(img, lab, info, split)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files) and the embedded subset

_FMNIST_PREFIX = {"train": "train", "test": "t10k"}
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801


def fashion_mnist_dirs(extra: Sequence[Path]) -> list[Path]:
    """Folders searched for the Fashion-MNIST idx files, in order.

    For each folder in ``extra``: the folder itself, its ``FashionMNIST/raw`` (torchvision's
    layout) and ``fashion-mnist``; then :data:`DEBIAN_FASHION_MNIST_DIR`.
    """
    dirs: list[Path] = []
    for d in extra:
        dirs += [d, d / "FashionMNIST" / "raw", d / "fashion-mnist"]
    dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return [d.resolve() for d in dirs]


def locate_fashion_mnist(split: str, dirs: Sequence[Path]) -> tuple[Path, Path] | None:
    """The (images, labels) idx files of ``split`` in the first folder that has both.

    Accepts gzipped (``*.gz``, Debian and upstream) and plain (torchvision) files.
    """
    prefix = _FMNIST_PREFIX[split]
    for d in dirs:
        for ext in (".gz", ""):
            images = d / f"{prefix}-images-idx3-ubyte{ext}"
            labels = d / f"{prefix}-labels-idx1-ubyte{ext}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """Reads an idx file (big-endian header: magic, then one uint32 per dimension)."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"Cannot read '{path}' ({exc}).",
            "The file is corrupt or truncated: fetch it again (e.g. `apt-get install --reinstall "
            "dataset-fashion-mnist`, or delete it and add --download).",
        ) from None
    header = 4 * (1 + dims)
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">u4")) if len(raw) >= header else ()
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic or len(raw) != header + math.prod(shape):
        raise DatasetError(
            f"'{path}' is not a valid idx file (wrong magic number or size).",
            "Replace it with the original Fashion-MNIST file.",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_fashion_mnist_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split from its idx files.

    Returns:
        uint8 images and uint8 labels (0..9).

    Shape:
        images: (N, 28, 28); labels: (N,).
    """
    images = _read_idx(images_path, _IDX_IMAGES, 3)
    labels = _read_idx(labels_path, _IDX_LABELS, 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) > 9:
        raise DatasetError(
            f"'{images_path}' and '{labels_path}' do not hold one Fashion-MNIST split "
            f"(images {images.shape}, {len(labels)} labels).",
            "Replace them with the original Fashion-MNIST files.",
        )
    return images, labels


_FMNIST_SOURCE = (
    "Fashion-MNIST (Zalando, MIT): apt-get install dataset-fashion-mnist, --data-dir DIR with the "
    "idx files, or --download"
)


@register_dataset(
    "fashion-mnist",
    info=DatasetInfo(
        name="fashion-mnist",
        image_size=28,
        channels=1,
        num_classes=10,
        mean=(0.2860,),  # computed over all 60,000 training images
        std=(0.3530,),
        in_memory=True,
        source=_FMNIST_SOURCE,
    ),
    splits=("train", "test"),
)
def _load_fashion_mnist(split: str, *, data_dir: Path | None, download: bool,
                        image_size: int | None, num_workers: int) -> ArrayDataset:
    root = data_dir if data_dir is not None else default_data_dir()
    dirs = fashion_mnist_dirs([root])
    found = locate_fashion_mnist(split, dirs)
    if found is None and download:
        import torchvision

        _torchvision_download("fashion-mnist", root,
                              lambda: torchvision.datasets.FashionMNIST(str(root), train=True, download=True))
        found = locate_fashion_mnist(split, dirs)
    if found is None:
        prefix = _FMNIST_PREFIX[split]
        raise DatasetError(
            f"Dataset 'fashion-mnist' (split '{split}') not found: no {prefix}-images-idx3-ubyte[.gz] "
            f"with {prefix}-labels-idx1-ubyte[.gz] in any of: {', '.join(map(str, dirs))}.",
            "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), pass "
            "--data-dir DIR containing the four Fashion-MNIST idx files, or add --download "
            "(download=True) to fetch them with torchvision (needs internet, about 30 MB). The "
            "embedded subset 'fashion-mnist-mini' needs nothing.",
        )
    images, labels = read_fashion_mnist_split(*found)
    info = replace(dataset_info("fashion-mnist"), source=f"{found[0].parent} ({_FMNIST_SOURCE})")
    return _array_dataset(images[:, None], labels, info, split)


@functools.lru_cache(maxsize=1)
def _embedded_arrays() -> dict[str, np.ndarray]:
    """The decompressed embedded npz (read once per process; callers copy what they use)."""
    ref = importlib.resources.files("sslbench.benchmark").joinpath("data/fashion_mnist_mini.npz")
    try:
        with importlib.resources.as_file(ref) as path, np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        for key in ("train_images", "train_labels", "test_images", "test_labels"):
            arrays[key]  # noqa: B018 - a missing key is a corrupt file
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(
            f"The embedded dataset file '{ref}' is missing or corrupt ({type(exc).__name__}: {exc}).",
            "Reinstall sslbench, or rebuild it with `python -m sslbench.benchmark.make_embedded_data`.",
        ) from None
    return arrays


def embedded_metadata() -> dict[str, object]:
    """How the embedded subset was built (source files, seed, selection method)."""
    return dict(json.loads(str(_embedded_arrays()["meta"])))


@register_dataset(
    "fashion-mnist-mini",
    info=DatasetInfo(
        name="fashion-mnist-mini",
        image_size=28,
        channels=1,
        num_classes=10,
        mean=(0.2843,),  # computed over the 10,000 embedded training images
        std=(0.3524,),
        in_memory=True,
        source="embedded: 10,000 train + 2,000 test Fashion-MNIST images, class balanced (in the package)",
    ),
    splits=("train", "test"),
)
def _load_fashion_mnist_mini(split: str, *, data_dir: Path | None, download: bool,
                             image_size: int | None, num_workers: int) -> ArrayDataset:
    arrays = _embedded_arrays()
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    return _array_dataset(images[:, None], labels, dataset_info("fashion-mnist-mini"), split)


def colorize_fashion_mnist(images: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """The embedded grayscale images in colour, reproducibly (for the colour methods' tests and
    benchmark: CMC's L/ab views and colorization need colour, and no colour dataset is embedded).

    Each garment keeps its grayscale texture as its brightness and gets one colour: with
    probability 1/2 a hue tied to its class (hue = class / 10 plus N(0, 0.04) turns), else a uniform
    random hue; saturation U(0.5, 0.9). The background (where the garment is dark) is a linear
    gradient between two random dull colours (any hue, saturation U(0.2, 0.5), value U(0.1, 0.35))
    along a random direction. So colour carries some class information, as in natural images
    (colorization can learn which shapes have which colours), but not all of it, and the
    background's colour is a nuisance.

    Args:
        images: uint8 (N, 28, 28) grayscale.
        labels: (N,) class indices.
        seed: the draws' seed (one per split).

    Returns:
        uint8 (N, 3, H, W) RGB images.
    """
    g = torch.Generator().manual_seed(seed)
    n, h, w = images.shape
    v = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None]  # (N, 1, H, W)
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    tied = torch.rand(n, generator=g) < 0.5
    hue = torch.where(tied, lab.float() / 10 + 0.04 * torch.randn(n, generator=g), torch.rand(n, generator=g))
    obj = hsv_to_rgb(hue % 1.0, 0.5 + 0.4 * torch.rand(n, generator=g), torch.ones(n))
    ends = [hsv_to_rgb(torch.rand(n, generator=g), 0.2 + 0.3 * torch.rand(n, generator=g),
                        0.1 + 0.25 * torch.rand(n, generator=g)) for _ in range(2)]
    angle = 2 * math.pi * torch.rand(n, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
    t = (xx * angle.cos()[:, None, None] + yy * angle.sin()[:, None, None] + 0.5).clamp(0, 1)[:, None]
    background = ends[0][:, :, None, None] * (1 - t) + ends[1][:, :, None, None] * t
    rgb = background * (1 - v) + obj[:, :, None, None] * v
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def hsv_to_rgb(hue: torch.Tensor, sat: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """(N,) HSV in [0, 1] -> (N, 3) RGB in [0, 1] (the standard hexcone formula)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    return val[:, None] - val[:, None] * sat[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


@register_dataset(
    "fashion-mnist-color-mini",
    info=DatasetInfo(
        name="fashion-mnist-color-mini",
        image_size=28,
        channels=3,
        num_classes=10,
        mean=(0.3205, 0.3181, 0.3156),  # computed over the 10,000 generated training images
        std=(0.2265, 0.2249, 0.2194),
        in_memory=True,
        source="generated: the embedded fashion-mnist-mini images coloured by colorize_fashion_mnist "
               "(seeds 0 train, 1 test); for the colour methods (CMC, colorization)",
    ),
    splits=("train", "test"),
)
def _load_fashion_mnist_color_mini(split: str, *, data_dir: Path | None, download: bool,
                                   image_size: int | None, num_workers: int) -> ArrayDataset:
    arrays = _embedded_arrays()
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    rgb = colorize_fashion_mnist(images, labels, seed=0 if split == "train" else 1)
    return _array_dataset(rgb, labels, dataset_info("fashion-mnist-color-mini"), split)


# ----------------------------------------------------------------------------------------------
# torchvision datasets: CIFAR-10/100, STL-10


def _torchvision_download(name: str, root: Path, fetch: Callable[[], object]) -> None:
    """Runs a torchvision download, turning its failures into one DatasetError."""
    try:
        fetch()
    except Exception as exc:  # network, disk, checksum: torchvision raises many kinds
        raise DatasetError(
            f"Downloading dataset '{name}' into '{root}' failed ({type(exc).__name__}: {exc}).",
            "Check the internet connection and free disk space, or download the archive "
            "yourself, extract it there and pass --data-dir.",
        ) from None


def _missing(name: str, split: str, looked: Sequence[Path], what: str, size: str) -> DatasetError:
    return DatasetError(
        f"Dataset '{name}' (split '{split}') not found. Looked in: {', '.join(map(str, looked))}.",
        f"Pass --data-dir DIR containing {what}, or add --download (download=True) to fetch it "
        f"with torchvision (needs internet, {size}).",
    )


def _corrupt(name: str, path: Path, detail: str) -> DatasetError:
    return DatasetError(
        f"Dataset '{name}': '{path}' is corrupt or incomplete ({detail}).",
        f"Delete '{path}' and add --download to fetch it again, or re-extract the original archive.",
    )


@dataclass(frozen=True)
class _CifarSpec:
    folder: str
    archive: str
    size: str


_CIFAR = {
    "cifar10": _CifarSpec("cifar-10-batches-py", "cifar-10-python.tar.gz", "about 170 MB"),
    "cifar100": _CifarSpec("cifar-100-python", "cifar-100-python.tar.gz", "about 170 MB"),
}


def _load_cifar(name: str, split: str, data_dir: Path | None, download: bool) -> ArrayDataset:
    import torchvision

    spec = _CIFAR[name]
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = (data_dir if data_dir is not None else default_data_dir()).resolve()
    if root.name == spec.folder:  # --data-dir pointing at the extracted folder itself
        root = root.parent
    folder = root / spec.folder
    if download:  # torchvision skips the download when the files pass their checksums
        _torchvision_download(name, root, lambda: cls(str(root), train=True, download=True))
    elif not folder.is_dir():
        raise _missing(name, split, [folder], f"{spec.folder} (the extracted {spec.archive})", spec.size)
    try:
        ds = cls(str(root), train=split == "train", download=False)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        from torchvision.datasets.utils import check_integrity

        files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        bad = [folder / f for f, md5 in files if not check_integrity(str(folder / f), md5)]
        raise _corrupt(name, bad[0] if bad else folder,
                       f"{len(bad)} file(s) missing or failing their checksum" if bad else str(exc)) from None
    images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    info = replace(dataset_info(name), source=str(folder))
    return _array_dataset(images, np.asarray(ds.targets), info, split)


@register_dataset(
    "cifar10",
    info=DatasetInfo(
        name="cifar10",
        image_size=32,
        channels=3,
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        # Over all training pixels; the often-copied (0.2023, 0.1994, 0.2010) is the mean of
        # per-image standard deviations and too small.
        std=(0.2470, 0.2435, 0.2616),
        in_memory=True,
        source="CIFAR-10 via torchvision: --data-dir DIR with cifar-10-batches-py, or --download",
    ),
    splits=("train", "test"),
)
def _load_cifar10(split: str, *, data_dir: Path | None, download: bool,
                  image_size: int | None, num_workers: int) -> ArrayDataset:
    return _load_cifar("cifar10", split, data_dir, download)


@register_dataset(
    "cifar100",
    info=DatasetInfo(
        name="cifar100",
        image_size=32,
        channels=3,
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        in_memory=True,
        source="CIFAR-100 via torchvision: --data-dir DIR with cifar-100-python, or --download",
    ),
    splits=("train", "test"),
)
def _load_cifar100(split: str, *, data_dir: Path | None, download: bool,
                   image_size: int | None, num_workers: int) -> ArrayDataset:
    return _load_cifar("cifar100", split, data_dir, download)


_STL_FOLDER = "stl10_binary"
_STL_SIDE = 96
#: split -> (images file, labels file or None, expected image count)
_STL_FILES: dict[str, tuple[str, str | None, int]] = {
    "train": ("train_X.bin", "train_y.bin", 5000),
    "test": ("test_X.bin", "test_y.bin", 8000),
    "unlabeled": ("unlabeled_X.bin", None, 100000),
}


def _read_stl_part(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one STL-10 binary part directly (no checksum pass over the 2.6 GB unlabelled file).

    Shape:
        returns images (N, 3, 96, 96) uint8 and labels (N,) int64 (0..9, or -1 when unlabelled).
    """
    x_name, y_name, count = _STL_FILES[part]
    x_path = folder / x_name
    expected = count * 3 * _STL_SIDE * _STL_SIDE
    if not x_path.is_file() or x_path.stat().st_size != expected:
        raise _corrupt("stl10", x_path, f"expected {expected} bytes")
    # Stored column-major per image: (N, C, W, H) -> transpose to (N, C, H, W), as torchvision.
    images = np.fromfile(x_path, dtype=np.uint8).reshape(count, 3, _STL_SIDE, _STL_SIDE).transpose(0, 1, 3, 2)
    if y_name is None:
        return images, np.full(count, -1, dtype=np.int64)
    y_path = folder / y_name
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1 if y_path.is_file() else np.empty(0)
    if labels.shape != (count,) or labels.min() < 0 or labels.max() > 9:
        raise _corrupt("stl10", y_path, f"expected {count} labels in 1..10")
    return images, labels


@register_dataset(
    "stl10",
    info=DatasetInfo(
        name="stl10",
        image_size=_STL_SIDE,
        channels=3,
        num_classes=10,
        mean=(0.4467, 0.4398, 0.4066),
        std=(0.2603, 0.2566, 0.2713),
        in_memory=True,
        source="STL-10 via torchvision: --data-dir DIR with stl10_binary, or --download (2.6 GB)",
    ),
    splits=("train", "test", "unlabeled", "train+unlabeled"),
)
def _load_stl10(split: str, *, data_dir: Path | None, download: bool,
                image_size: int | None, num_workers: int) -> ArrayDataset:
    root = (data_dir if data_dir is not None else default_data_dir()).resolve()
    if root.name == _STL_FOLDER:
        root = root.parent
    folder = root / _STL_FOLDER
    if not folder.is_dir():
        if not download:
            raise _missing("stl10", split, [folder], f"{_STL_FOLDER} (the extracted stl10_binary.tar.gz)",
                           "about 2.6 GB")
        import torchvision

        _torchvision_download("stl10", root,
                              lambda: torchvision.datasets.STL10(str(root), split="test", download=True))
    parts = [_read_stl_part(folder, p) for p in split.split("+")]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    info = replace(dataset_info("stl10"), source=str(folder))
    return _array_dataset(images, labels, info, split)


# ----------------------------------------------------------------------------------------------
# ImageFolder


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path, *, recursive: bool = True) -> tuple[list[str], list[str]]:
    """Files below ``folder`` (recursively, following links; hidden ones left out), sorted: those
    with an image extension and the others."""
    images: list[str] = []
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for f in sorted(filenames):
            if not f.startswith("."):
                (images if f.lower().endswith(IMAGE_EXTENSIONS) else others).append(os.path.join(dirpath, f))
    return images, others


def image_header_ok(path: str) -> bool:
    """Whether a file starts like a JPEG, PNG, BMP, TIFF, WebP or PPM/PGM image (a cheap check of
    its first 16 bytes, not a decode)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _split_folder(root: Path, split: str) -> Path:
    """The folder of a split: ``root/<split>``; "test" falls back to ``root/val``; "train" falls
    back to ``root`` itself when it has none of train/, val/, test/ (an ImageFolder root, or a
    flat folder of unlabelled images)."""
    candidates = [root / split] + ([root / "val"] if split == "test" else [])
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is not None:
        return folder
    if split == "train" and root.is_dir() and not any((root / s).is_dir() for s in ("train", "val", "test")):
        if any(not e.name.startswith(".") and (e.is_dir() or e.name.lower().endswith(IMAGE_EXTENSIONS))
               for e in os.scandir(root)):
            return root
    present = _class_dirs(root) if root.is_dir() else []
    raise DatasetError(
        f"Dataset 'imagefolder' (split '{split}') not found. Looked in: "
        f"{', '.join(str(c) for c in candidates)}"
        + (f" ('{root}' holds: {', '.join(present)})." if present else "."),
        "Pass --data-dir DIR laid out as DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg "
        "(or DIR/test/...), or DIR/*.jpg of unlabelled images for pretraining; folder datasets "
        "cannot be downloaded by sslbench.",
    )


def scan_image_folder(
    root: Path, split: str, *, strict: bool = False
) -> tuple[list[tuple[str, int]], list[str], Path]:
    """Finds the images of one split of an image folder.

    Split folders: ``root/train``, ``root/val``, ``root/test``; "test" falls back to ``root/val``
    when there is no test folder; "train" falls back to ``root`` itself when it has none of the
    three. In a split folder, class subfolders (``<split>/<class>/**/<image>``) give labelled
    images; a folder with no subfolders, only images, gives unlabelled images (label -1, as
    STL-10's "unlabeled" split; fine for pretraining, refused by the protocols that need labels).
    Class indices come from the ``train`` folder's class names (sorted) whenever it has class
    folders, so that every split uses the same mapping.

    Files without an image extension (:data:`IMAGE_EXTENSIONS`) are ignored, and so are image
    files directly beside class folders (both counted in a printed note). Image files whose first
    bytes are no image format's (:func:`image_header_ok`: empty, truncated to nothing, HTML saved
    as .jpg...) are skipped with a printed count and one example, or, with ``strict``, raise. The
    check reads 16 bytes per file; above :data:`HEADER_CHECK_MAX_FILES` files it is left to the
    decoder (unless ``strict``), which replaces what it cannot read (:class:`FolderDataset`).

    Returns:
        (path, class index or -1) per image, the class names, and the folder that was read.

    Raises:
        DatasetError: no such split, unknown or empty class folders, no images, or (``strict``)
            a file that is not an image.
    """
    folder = _split_folder(root, split)
    train_folder = root / "train" if (root / "train").is_dir() else (root if folder == root else None)
    train_classes = _class_dirs(train_folder) if train_folder is not None else []
    here = _class_dirs(folder)
    samples: list[tuple[str, int]] = []
    ignored: list[str] = []
    if here:
        classes = train_classes or here
        unknown = sorted(set(here) - set(classes))
        if unknown:
            raise DatasetError(
                f"Folder '{folder}' has class folders that '{train_folder}' lacks: {', '.join(unknown[:5])}.",
                "Every split must use the training split's class folder names.",
            )
        index = {c: i for i, c in enumerate(classes)}
        empty = []
        for c in here:
            files, others = _image_files(folder / c)
            empty += [] if files else [c]
            samples += [(f, index[c]) for f in files]
            ignored += others
        if empty:
            raise DatasetError(
                f"Class folder(s) {', '.join(empty[:5])} in '{folder}' hold no images "
                f"({', '.join(IMAGE_EXTENSIONS)}).",
                "Remove the empty folders or add the images.",
            )
        loose, others = _image_files(folder, recursive=False)
        ignored += loose + others
    else:
        classes = train_classes
        files, ignored = _image_files(folder, recursive=False)
        if not files:
            raise DatasetError(
                f"Folder '{folder}' holds no class subfolders and no images ({', '.join(IMAGE_EXTENSIONS)}).",
                "Lay the images out as <split>/<class>/<image> (labelled) or <split>/<image> (unlabelled).",
            )
        samples = [(f, -1) for f in files]
    if ignored:
        _note(f"ignored {len(ignored)} file(s) in '{folder}' that are not images of a class folder "
              f"(e.g. '{ignored[0]}').")
    if strict or len(samples) <= HEADER_CHECK_MAX_FILES:
        bad = [s for s in samples if not image_header_ok(s[0])]
        if bad and strict:
            raise DatasetError(
                f"{len(bad)} file(s) of '{folder}' are not images (e.g. '{bad[0][0]}': its first bytes "
                "are no JPEG, PNG, BMP, TIFF, WebP or PPM header).",
                "Replace or delete them, or drop data.strict (--strict-data) to skip them with a warning.",
            )
        if bad:
            skipped = {s[0] for s in bad}
            samples = [s for s in samples if s[0] not in skipped]
            _note(f"skipped {len(bad)} corrupt or non-image file(s) in '{folder}' (e.g. '{bad[0][0]}'); "
                  "data.strict=true makes this an error.")
            if not samples:
                raise DatasetError(f"No readable images in '{folder}'.", "Check the files.")
    return samples, classes, folder


def _shorter_sides(samples: Sequence[tuple[str, int]], count: int = SIZE_SAMPLE) -> list[int]:
    """The shorter sides of up to ``count`` images spread evenly over the split (read from the
    file headers, not decoded)."""
    from PIL import Image

    n = min(count, len(samples))
    picks = sorted({round(i * (len(samples) - 1) / max(1, n - 1)) for i in range(n)})
    sides = []
    for i in picks:
        try:
            with Image.open(samples[i][0]) as im:
                sides.append(min(im.size))
        except _DECODE_ERRORS:
            continue
    return sides


def infer_image_size(shorter_sides: Sequence[int], default: int = 224) -> tuple[int, str]:
    """The image size of a folder given no ``data.image_size``: the default (224) for photos,
    the images' own size for small images.

    Rule, on the shorter sides of a sample of the images: median >= ``default`` -> ``default``;
    otherwise the common shorter side when every sampled image has the same one (a CIFAR-sized
    folder trains at 32 px, not at 224, which was ~20x slower), else the median rounded to a
    multiple of 8 -- unless the sizes vary widely (90th percentile > 2x the 10th), which is an
    error asking for ``data.image_size``.

    Returns:
        The size and a phrase saying why.

    Raises:
        DatasetError: small images of widely varying sizes.
    """
    if not shorter_sides:
        return default, "the default (no image header could be read)"
    sides = sorted(shorter_sides)
    median = int(statistics.median(sides))
    if median >= default:
        return default, f"the default; the images' median shorter side is {median} px"
    lo, hi = sides[int(0.1 * (len(sides) - 1))], sides[math.ceil(0.9 * (len(sides) - 1))]
    if hi > 2 * lo:
        raise DatasetError(
            f"The images' sizes vary widely (shorter sides {lo}-{hi} px between the 10th and 90th "
            f"percentiles of {len(sides)} sampled images, median {median} px), so no image size can be "
            "inferred.",
            "Set data.image_size (e.g. --set data.image_size=" + f"{max(8, round(median / 8) * 8)}).",
        )
    if sides[0] == sides[-1]:
        return sides[0], f"the images' shorter side ({len(sides)} sampled)"
    size = max(8, round(median / 8) * 8)
    return size, f"the images' median shorter side {median} px, rounded to a multiple of 8"


def infer_folder_image_size(data_dir: str | Path) -> tuple[int, str]:
    """The image size an image folder's training split infers (:func:`infer_image_size`), without
    loading it: for choosing a recipe before the data is loaded (one walk of the file names, 64
    headers read).

    Raises:
        DatasetError: no training split, or small images of widely varying sizes.
    """
    folder = _split_folder(Path(data_dir).expanduser().resolve(), "train")
    files, _ = _image_files(folder)
    return infer_image_size(_shorter_sides([(f, -1) for f in files]), dataset_info("imagefolder").image_size)


def auto_load_size(image_size: int, shorter_sides: Sequence[int]) -> int:
    """The ``full`` frame's canvas side when ``data.load_size`` is not set: ``LOAD_SIZE_RATIO x``
    the image size (256 for 224), but not above the images' median shorter side (no upsampling of
    small images: a 32-px folder keeps 32-px canvases) and not below the image size."""
    target = round(image_size * LOAD_SIZE_RATIO)
    if shorter_sides:
        target = min(target, int(statistics.median(shorter_sides)))
    return max(image_size, target)


def folder_cache_dir() -> Path:
    """Where decoded folder splits are cached: ``$SSLBENCH_CACHE``, else
    ``$XDG_CACHE_HOME/sslbench`` (``~/.cache/sslbench``), in a subfolder ``imagefolder``."""
    base = os.environ.get("SSLBENCH_CACHE")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sslbench")
    return Path(base).expanduser() / "imagefolder"


_CACHE_VERSION = 1  # bump when decoding changes the pixels


def cache_key(ds: FolderDataset) -> str:
    """Names a split's cache file: a hash of its files (path, label, size, mtime), frame, canvas
    side and image size, and the cache format version; any change to the folder gives a new file."""
    h = hashlib.sha256(json.dumps([_CACHE_VERSION, ds.frame, ds.side, ds.info.image_size]).encode())
    for path, label in ds.samples:
        st = os.stat(path)
        h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def cache_bytes(ds: FolderDataset) -> int:
    """Bytes of the split decoded as one uint8 tensor."""
    return len(ds) * 3 * ds.side * ds.side


def _read_cache(path: Path, ds: FolderDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None:
    """The cached images, labels, aspects and replaced paths, or None when the file is missing,
    unreadable or does not fit ``ds``. Read with ``allow_pickle=False``: a cache file is only data."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, aspect = z["images"], z["labels"], z["aspect"]
            replaced = [str(p) for p in z["replaced"]]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        _note(f"cache file '{path}' is unreadable ({type(exc).__name__}); decoding again.")
        return None
    if images.shape != (len(ds), 3, ds.side, ds.side) or images.dtype != np.uint8 or labels.shape != (len(ds),):
        _note(f"cache file '{path}' does not fit the folder; decoding again.")
        return None
    return images, labels, aspect, replaced


def _write_cache(path: Path, ds: FolderDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Decodes every image of ``ds`` (with its workers, in order) and writes the cache file
    atomically (a failed write is a note: the decoded split is still used)."""
    from sslbench.benchmark.files import atomic_write

    _note(f"decoding {len(ds):,} images of split '{ds.split}' once into the cache "
          f"({cache_bytes(ds) / 2**30:.2f} GiB): '{path}'.")
    images = np.empty((len(ds), 3, ds.side, ds.side), dtype=np.uint8)
    labels = np.empty(len(ds), dtype=np.int64)
    for batch in ds.batches(256):
        idx = batch.indices.numpy()
        images[idx] = batch.images.numpy()
        labels[idx] = batch.labels.numpy()
    aspect = ds.frame_aspect.numpy().astype(np.float32)
    replaced = [ds.samples[i][0] for i in sorted(ds.unreadable)]
    try:
        atomic_write(path, lambda f: np.savez(f, images=images, labels=labels, aspect=aspect,
                                              replaced=np.array(replaced, dtype=str)))
    except OSError as exc:
        _note(f"could not write the cache file '{path}' ({exc}); the split is held in memory for this run only.")
    return images, labels, aspect, replaced


def cached_split(ds: FolderDataset, cache: str) -> FolderArrays | None:
    """The split held in memory, from its cache file (decoded and written on first use), or None
    when it is not to be cached.

    Args:
        ds: the split as decoded per image.
        cache: ``on`` (always), ``auto`` (when :func:`cache_bytes` <= :data:`CACHE_LIMIT_BYTES`) or
            ``off`` (never).
    """
    if cache not in CACHE_MODES:
        raise ConfigError(f"data.cache={cache!r} is invalid: it must be one of {', '.join(CACHE_MODES)}.",
                          "Fix data.cache.")
    if cache == "off":
        return None
    if cache == "auto" and cache_bytes(ds) > CACHE_LIMIT_BYTES:
        _note(f"split '{ds.split}' is decoded per image: {cache_bytes(ds) / 2**30:.1f} GiB decoded exceeds "
              f"the {CACHE_LIMIT_BYTES / 2**30:.0f} GiB cache limit (data.cache=on caches it anyway).")
        return None
    path = folder_cache_dir() / f"{ds.split}-{ds.frame}{ds.side}-{cache_key(ds)}.npz"
    found = _read_cache(path, ds)
    images, labels, aspect, replaced = found if found is not None else _write_cache(path, ds)
    if replaced:
        if ds.strict:
            raise DatasetError(
                f"{len(replaced)} image file(s) of '{ds.info.source}' cannot be decoded (e.g. '{replaced[0]}').",
                "Replace or delete them, or drop data.strict to skip them with a warning.")
        if found is not None:
            _note(f"{len(replaced)} image file(s) of split '{ds.split}' failed to decode and are replaced by "
                  f"the next readable image (e.g. '{replaced[0]}').")
    return FolderArrays(torch.from_numpy(images), torch.from_numpy(labels), ds.info, ds.split,
                        classes=ds.classes, frame=ds.frame, frame_aspect=torch.from_numpy(aspect),
                        cache_file=str(path))


def _load_imagefolder(split: str, *, data_dir: Path | None, download: bool, image_size: int | None,
                      num_workers: int, cache: str = "off", strict: bool = False, frame: str = "centre",
                      load_size: int | None = None) -> FolderDataset | FolderArrays:
    if data_dir is None:
        raise DatasetError(
            "Dataset 'imagefolder' needs a folder of images, and none was given.",
            "Pass --data-dir DIR laid out as DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg.",
        )
    samples, classes, folder = scan_image_folder(data_dir.resolve(), split, strict=strict)
    sides = _shorter_sides(samples)
    if image_size is None:
        image_size, why = infer_image_size(sides, dataset_info("imagefolder").image_size)
        _note(f"image_size {image_size} for split '{split}' ({why}); set data.image_size to choose.")
    elif sides and image_size > 2 * statistics.median(sides):
        _note(f"data.image_size={image_size} upsamples images whose median shorter side is "
              f"{statistics.median(sides):g} px (leave data.image_size unset to train at their size).")
    side = None
    if frame == "full":
        side = load_size if load_size is not None else auto_load_size(image_size, sides)
        if side < image_size:
            raise ConfigError(f"data.load_size={side} is smaller than the image size {image_size}.",
                              "Leave data.load_size unset or set it >= data.image_size.")
    info = replace(dataset_info("imagefolder"), num_classes=len(classes), image_size=image_size, source=str(folder))
    ds = FolderDataset(samples, classes, info, split, num_workers=num_workers, frame=frame, load_size=side,
                       strict=strict)
    cached = cached_split(ds, cache)
    return cached if cached is not None else ds


# Registered by a call rather than a decorator, so that _load_imagefolder keeps its own signature
# (load_dataset passes it the folder options: cache, strict, frame, load_size).
register_dataset(
    "imagefolder",
    info=DatasetInfo(
        name="imagefolder",
        image_size=224,
        channels=3,
        num_classes=0,  # discovered at load time
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        in_memory=False,
        source="your images: --data-dir DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg",
    ),
    splits=("train", "val", "test"),
)(_load_imagefolder)


# ----------------------------------------------------------------------------------------------
# Synthetic data for unit tests


def _split_seed(seed: int, split: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(split.encode())) % (2**63)


def make_synthetic(
    num_classes: int = 4,
    per_class: int = 64,
    image_size: int = 16,
    channels: int = 1,
    seed: int = 0,
    split: str = "train",
) -> ArrayDataset:
    """A tiny generated dataset for fast tests, that a classifier can learn.

    Class ``c`` is a soft bar through the image at angle ``pi * c / num_classes`` (jittered by
    up to 15% of the angle step), shifted by up to ``image_size / 8`` pixels, with a random
    contrast and background and Gaussian pixel noise; with 3 channels each class also has its
    own tint. Images of class c are at positions c, c + num_classes, ...

    Args:
        num_classes: number of classes (>= 2).
        per_class: images per class.
        image_size: side of the square images (>= 8).
        channels: 1 or 3.
        seed: the same (seed, split) always gives the same images; others give others.
        split: a name mixed into the seed, so "train" and "test" differ.

    Returns:
        An in-memory split; ``info.name`` is "synthetic" and mean/std are measured on it.
    """
    if num_classes < 2 or per_class < 1 or image_size < 8 or channels not in (1, 3):
        raise ValueError(
            f"need num_classes >= 2, per_class >= 1, image_size >= 8, channels 1 or 3; got "
            f"{num_classes}, {per_class}, {image_size}, {channels}"
        )
    g = torch.Generator().manual_seed(_split_seed(seed, split))
    n = num_classes * per_class
    labels = torch.arange(n) % num_classes
    step = math.pi / num_classes
    angle = labels * step + (torch.rand(n, generator=g) - 0.5) * 0.3 * step
    shift = (torch.rand(n, 2, generator=g) - 0.5) * (image_size / 4)
    coords = torch.arange(image_size, dtype=torch.float32) - (image_size - 1) / 2
    yy, xx = coords[:, None], coords[None, :]
    dx = xx - shift[:, 0, None, None]
    dy = yy - shift[:, 1, None, None]
    dist = (-dx * angle.sin()[:, None, None] + dy * angle.cos()[:, None, None]).abs()
    bar = torch.exp(-((dist / (image_size / 10)) ** 2))  # (N, S, S)
    contrast = 0.5 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    background = 0.1 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    if channels == 3:
        phase = 2 * math.pi * labels[:, None].float() / num_classes + torch.tensor([0.0, 2.094, 4.189])
        tint = (0.6 + 0.4 * phase.cos())[:, :, None, None]  # (N, 3, 1, 1)
    else:
        tint = torch.ones(n, 1, 1, 1)
    x = background + contrast * tint * bar[:, None]
    x = x + 0.08 * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    scaled = images.double() / 255
    info = DatasetInfo(
        name="synthetic",
        image_size=image_size,
        channels=channels,
        num_classes=num_classes,
        mean=tuple(scaled.mean(dim=(0, 2, 3)).tolist()),
        std=tuple(scaled.std(dim=(0, 2, 3)).tolist()),
        in_memory=True,
        source=f"generated by make_synthetic(seed={seed}, split='{split}')",
    )
    return ArrayDataset(images, labels.to(torch.int64), info, split)


@register_dataset(
    "synthetic",
    info=DatasetInfo(
        name="synthetic",
        image_size=16,
        channels=1,
        num_classes=4,
        mean=(0.3271,),  # measured on make_synthetic(split="train") with the defaults
        std=(0.2293,),
        in_memory=True,
        source="generated: make_synthetic() defaults, 256 images of 16 px, 4 classes (for smoke tests)",
    ),
    splits=("train", "test"),
)
def _load_synthetic(split: str, *, data_dir: Path | None, download: bool,
                    image_size: int | None, num_workers: int) -> ArrayDataset:
    ds = make_synthetic(split=split)
    # Both splits report the training split's statistics, as the real datasets do.
    return replace(ds, info=dataset_info("synthetic"))


#: ``synthetic-cifar``: CIFAR-10's shapes (50,000 / 10,000 RGB images of 32 px, 10 classes), generated.
SYNTHETIC_CIFAR = {"train": 5000, "test": 1000}  # images per class


@register_dataset(
    "synthetic-cifar",
    info=DatasetInfo(
        name="synthetic-cifar",
        image_size=32,
        channels=3,
        num_classes=10,
        mean=(0.2767, 0.2767, 0.2767),  # measured on the generated training split
        std=(0.1720, 0.1730, 0.1731),
        in_memory=True,
        source="generated: make_synthetic(10 classes, 5,000 / 1,000 per class, 32 px, RGB, seed 0), "
               "CIFAR-10's shapes for speed benchmarks (bench_train); nothing is downloaded",
    ),
    splits=("train", "test"),
)
def _load_synthetic_cifar(split: str, *, data_dir: Path | None, download: bool,
                          image_size: int | None, num_workers: int) -> ArrayDataset:
    return _synthetic_cifar(split)


@functools.lru_cache(maxsize=2)
def _synthetic_cifar(split: str) -> ArrayDataset:
    """Generated once per process (seconds for 50,000 images): a benchmark builds many runs on it.
    The split is immutable (``to`` and ``subset`` return copies), so sharing it is safe."""
    ds = make_synthetic(10, SYNTHETIC_CIFAR[split], 32, 3, seed=0, split=split)
    return replace(ds, info=dataset_info("synthetic-cifar"))
