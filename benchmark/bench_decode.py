"""Decoding speed: image folders against the in-memory path and against torchvision's loader.

It generates two JPEG folders (nothing downloads) and measures images/s of the data side of a
training step as the engine runs it: ``dataset.batches`` -> the training device -> the batched
two-view augmentation (with ``--train-step``, also a SimCLR forward/backward on a small CNN):

- CIFAR-sized: ``--cifar-images`` (5,000) 32-px JPEGs over 10 classes, drawn from
  :func:`~sslbench.benchmark.datasets.make_synthetic`. Rows: ``in-memory`` (the same decoded
  pixels as one uint8 tensor, an :class:`~sslbench.benchmark.datasets.ArrayDataset`),
  ``folder cached`` (``imagefolder`` with ``cache=on``: decoded once into the cache file, then
  in memory; the one-off decode is reported apart as ``cache_build_s``) and ``folder uncached``
  (``cache=off``: decoded per image in DataLoader workers every epoch).
- ImageNet-like: ``--photo-images`` (800) JPEGs of 340-460 x 300-400 px, trained at 224 px from
  the full frame (256-px canvases). Rows: ``photo folder (ours)`` (our per-image decoder in the
  workers + the batched ``simclr-small`` augmentation on the training device) against
  ``torchvision ImageFolder`` (``ImageFolder`` + ``DataLoader`` with the same workers and
  per-image torchvision v2 transforms giving the same two views: RandomResizedCrop(224), flip,
  ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, normalise; on a CPU-only machine
  this row mostly measures where the augmentation runs: in the workers for torchvision, in the
  training process for sslbench, as on a GPU), and the loaders
  alone: ours (uint8 full-frame canvases) against ``ImageFolder`` with RandomResizedCrop(224) +
  PILToTensor. It also times one process decoding each photo with our decoder
  (``torchvision.io`` + uint8 antialiased resize) against PIL (decode + bicubic resize, the
  decoder before this benchmark existed).

Ratios printed: cached folder / in-memory (the goal is >= 0.9 at CIFAR size), uncached folder /
in-memory, and ours / torchvision at 224 px. Why no FFCV or DALI: when the cached folder runs at
the in-memory speed and our uncached loader at least matches torchvision's ``ImageFolder`` with the
same workers, the data path is as fast as sslbench's own in-memory training for every dataset that
fits the cache (CIFAR, STL, Imagenette, ImageNet-100 at small sizes), and for larger folders it is
torchvision's own per-image cost, which more workers scale; a separate file format (FFCV's
.beton) or a GPU pipeline (DALI) would add a dependency and a conversion step for no gain there.
GPU JPEG decoding (``torchvision.io.decode_jpeg(..., device="cuda")``) is not used: it needs the
main process to decode every batch and was not measurable on the CPU machines this was written on.

Run it::

    python -m sslbench.benchmark.bench_decode --json bench-decode.json     # the full sizes
    python -m sslbench.benchmark.bench_decode --small                      # a CPU smoke run

Numbers are per machine and per run: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Row:
    """One measured pipeline."""

    name: str
    images_per_s: float
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# Generated folders


def make_cifar_folder(root: Path, num_images: int, seed: int = 0) -> Path:
    """``root/train/<class>/<i>.jpg``: ``num_images`` 32-px RGB JPEGs over 10 classes
    (:func:`make_synthetic`'s bars), quality 90. Returns ``root``."""
    from PIL import Image

    from sslbench.benchmark.datasets import make_synthetic

    ds = make_synthetic(10, max(1, num_images // 10), 32, 3, seed=seed)
    images = ds.images.permute(0, 2, 3, 1).numpy()
    for i, (image, label) in enumerate(zip(images, ds.labels.tolist(), strict=True)):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def make_photo_folder(root: Path, num_images: int, size: tuple[int, int] = (400, 350), seed: int = 0) -> Path:
    """``root/train/<class>/<i>.jpg``: ``num_images`` smooth random photos around ``size``
    (width and height each within +-15%) over 10 classes, quality 90. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(num_images):
        w = int(size[0] * rng.uniform(0.85, 1.15))
        h = int(size[1] * rng.uniform(0.85, 1.15))
        base = rng.integers(0, 255, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
        folder = root / "train" / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


# ----------------------------------------------------------------------------------------------
# Measurements


def _stepper(args: argparse.Namespace, size: int, num: int, device: torch.device
             ) -> Callable[[list[torch.Tensor]], None] | None:
    """A SimCLR forward/backward/step on ``--backbone`` (``--train-step``), or None."""
    if not args.train_step:
        return None
    from sslbench.benchmark.engine import build_method
    from sslbench.benchmark.recipes import resolve
    from sslbench.methods import StepContext

    cfg = resolve("simclr-quick", [f"backbone={args.backbone}"])
    method = build_method(cfg, 3, size, num).to(device).train()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)

    def step(views: list[torch.Tensor]) -> None:
        out = method(views, StepContext(0, 1, 1))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return step


def _timed(batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]], consume: Callable[
        [torch.Tensor, torch.Tensor], None], epochs: int, device: torch.device) -> float:
    """images/s over ``epochs`` epochs of ``batches(epoch)``, after one warm-up batch (workers
    starting, first allocations)."""
    count, t0 = 0, 0.0
    for epoch in range(epochs):
        for i, (images, indices) in enumerate(batches(epoch)):
            consume(images, indices)
            if epoch == 0 and i == 0:
                _sync(device)
                t0 = time.perf_counter()
                continue
            count += images.shape[0]
    _sync(device)
    if count == 0:
        raise SystemExit("nothing was timed: use more images, a smaller --batch-size or more --epochs")
    return count / max(1e-9, time.perf_counter() - t0)


def measure_sslbench(ds: Any, args: argparse.Namespace, device: torch.device, recipe: str,
                     augment: bool = True) -> float:
    """images/s of ``ds.batches`` -> device -> BatchAugment(``recipe``) two views (with the
    full-frame crop sampler where the split has one) [-> a training step]."""
    from sslbench.benchmark.augment import BatchAugment, get_augment_recipe
    from sslbench.benchmark.datasets import ArrayDataset, full_frame_sampler

    if isinstance(ds, ArrayDataset):
        ds = ds.to(device)
    info = ds.info
    aug = BatchAugment(get_augment_recipe(recipe), info.mean, info.std, info.image_size)
    gen = torch.Generator(device=device).manual_seed(0)
    step = _stepper(args, info.image_size, len(ds), device) if augment else None

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shuffle = torch.Generator().manual_seed(epoch)
        for b in ds.batches(args.batch_size, shuffle=True, generator=shuffle, drop_last=True):
            yield b.images, b.indices

    def consume(images: torch.Tensor, indices: torch.Tensor) -> None:
        images = images.to(device, non_blocking=True)
        if augment:
            views = aug(images, gen, full_frame_sampler(ds, indices))
            if step is not None:
                step(views)

    return _timed(batches, consume, args.epochs, device)


def measure_torchvision(root: Path, args: argparse.Namespace, device: torch.device, size: int,
                        augment: bool = True) -> float:
    """images/s of torchvision's ``ImageFolder`` + ``DataLoader`` (``--workers``): two v2 views per
    image (RandomResizedCrop, flip, jitter, grayscale, normalise) with ``augment``, else one
    RandomResizedCrop as uint8 (the loader alone)."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from sslbench.benchmark.datasets import IMAGENET_MEAN, IMAGENET_STD

    crop = [v2.PILToTensor(), v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True)]
    if augment:
        views = v2.Compose([*crop, v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                            v2.RandomGrayscale(p=0.2), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])

        def transform(image: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return views(image), views(image)
    else:
        transform = v2.Compose(crop)
    folder = ImageFolder(str(root / "train"), transform=transform)
    loader = DataLoader(folder, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
                        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
    step = _stepper(args, size, len(folder), device) if augment else None

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(epoch)
        for x, y in loader:
            yield (torch.cat(list(x)) if isinstance(x, (list, tuple)) else x), y

    def consume(images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(device, non_blocking=True)
        if step is not None:
            step(list(images.chunk(2)))

    return _timed(batches, consume, args.epochs, device)


def _pil_full_frame(path: str, side: int) -> torch.Tensor:
    """The decoder before ``torchvision.io``: PIL draft + convert + bicubic resize."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (side, side))
        rgb = im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)


def measure_decoders(paths: Sequence[str], side: int) -> dict[str, float]:
    """images/s of one process decoding each file to a ``side`` canvas: ours and PIL's."""
    from sslbench.benchmark.datasets import decode_full_frame

    out = {}
    for name, fn in (("ours", lambda p: decode_full_frame(p, side)[0]), ("pil", lambda p: _pil_full_frame(p, side))):
        fn(paths[0])
        t = time.perf_counter()
        for p in paths:
            fn(p)
        out[name] = len(paths) / (time.perf_counter() - t)
    return out


# ----------------------------------------------------------------------------------------------
# Report


def table(rows: list[Row], ratios: dict[str, float]) -> str:
    """The markdown table of images/s with the ratios to the in-memory and torchvision rows."""
    rate = {r.name: r.images_per_s for r in rows}
    memory = rate.get("in-memory")
    tv = {"photo folder (ours)": rate.get("torchvision ImageFolder"),
          "photo loader only (ours)": rate.get("torchvision ImageFolder loader only")}
    lines = ["| pipeline | images/s | x in-memory | x torchvision | note |", "|---|---|---|---|---|"]
    for r in rows:
        vs_mem = f"{r.images_per_s / memory:.2f}" if memory and r.name.startswith(("in-memory", "folder")) else "–"
        ref = tv.get(r.name)
        vs_tv = f"{r.images_per_s / ref:.2f}" if ref else "–"
        lines.append(f"| {r.name} | {r.images_per_s:,.0f} | {vs_mem} | {vs_tv} | {r.note} |")
    lines.append("")
    lines += [f"{k}: {v:.3g}" for k, v in ratios.items()]
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, str]:
    import PIL
    import torchvision

    return {"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
            "cpu_count": str(os.cpu_count()), "python": sys.version.split()[0]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sslbench.benchmark.bench_decode", description=__doc__.split("\n")[0])
    p.add_argument("--cifar-images", type=int, default=5000)
    p.add_argument("--photo-images", type=int, default=800)
    p.add_argument("--photo-size", type=int, default=224, help="training image size of the photo folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per pipeline (after one warm-up batch)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--train-step", action="store_true", help="add a SimCLR forward/backward per batch")
    p.add_argument("--backbone", default="small-cnn", help="the backbone of --train-step")
    p.add_argument("--work-dir", type=Path, default=None, help="where the folders and the cache go (default: a temp dir)")
    p.add_argument("--small", action="store_true", help="a CPU smoke run: few images, 64-px photos, 1 worker")
    p.add_argument("--json", type=Path, default=None, help="write the rows, ratios and environment here")
    args = p.parse_args(argv)
    if args.small:
        args.cifar_images, args.photo_images, args.photo_size = 320, 64, 64
        args.batch_size, args.epochs = 16, 1
        args.workers = 1 if args.workers is None else args.workers
    if args.workers is None:
        args.workers = os.cpu_count() or 1
    return args


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    args = parse_args(argv)
    from sslbench.benchmark.datasets import ArrayDataset, load_dataset
    from sslbench.benchmark.engine import resolve_device

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        old_cache = os.environ.get("SSLBENCH_CACHE")
        os.environ["SSLBENCH_CACHE"] = str(work / "cache")  # never the user's cache
        try:
            return _run(args, work, device, echo, load_dataset, ArrayDataset)
        finally:
            if old_cache is None:
                os.environ.pop("SSLBENCH_CACHE", None)
            else:
                os.environ["SSLBENCH_CACHE"] = old_cache


def _run(args: argparse.Namespace, work: Path, device: torch.device, echo: Callable[[str], None],
         load_dataset: Any, array_dataset: Any) -> dict[str, Any]:
    rows: list[Row] = []
    extra: dict[str, float] = {}
    w = args.workers
    cifar = make_cifar_folder(work / "cifar", args.cifar_images)
    photos = make_photo_folder(work / "photos", args.photo_images,
                               size=(round(args.photo_size * 400 / 224), round(args.photo_size * 350 / 224)))
    common = {"data_dir": str(cifar), "image_size": 32, "num_workers": w, "frame": "full"}

    t = time.perf_counter()
    cached = load_dataset("imagefolder", "train", cache="on", **common)
    extra["cache_build_s"] = time.perf_counter() - t
    memory = array_dataset(cached.images.clone(), cached.labels.clone(), cached.info, "train")
    uncached = load_dataset("imagefolder", "train", cache="off", **common)
    pixels = torch.cat([b.images for b in uncached.batches(512)])
    same = bool(torch.equal(pixels, cached.images))
    for name, ds, note in (("in-memory", memory, "ArrayDataset of the same decoded pixels"),
                           ("folder cached", cached, f"cache=on, built once in {extra['cache_build_s']:.1f} s"),
                           ("folder uncached", uncached, f"cache=off, {w} workers")):
        rows.append(Row(name, measure_sslbench(ds, args, device, "simclr-small"), note))
        echo(f"{name:38s} {rows[-1].images_per_s:10,.0f} images/s")

    size = args.photo_size
    ours = load_dataset("imagefolder", "train", data_dir=str(photos), image_size=size, num_workers=w,
                        frame="full", cache="off")
    for name, value, note in (
        ("photo folder (ours)", measure_sslbench(ours, args, device, "simclr-small"),
         f"{w} workers, full frame {ours.side}px -> {size}px, batched 2-view simclr-small augmentation"),
        ("torchvision ImageFolder", measure_torchvision(photos, args, device, size),
         f"{w} workers, per-image v2: 2 x (RandomResizedCrop({size}), flip, jitter, grayscale, normalise)"),
        ("photo loader only (ours)", measure_sslbench(ours, args, device, "simclr-small", augment=False),
         f"uint8 {ours.side}px canvases"),
        ("torchvision ImageFolder loader only", measure_torchvision(photos, args, device, size, augment=False),
         f"RandomResizedCrop({size}) + PILToTensor"),
    ):
        rows.append(Row(name, value, note))
        echo(f"{name:38s} {value:10,.0f} images/s")
    decoders = measure_decoders([p for p, _ in ours.samples], ours.side)
    rate = {r.name: r.images_per_s for r in rows}
    ratios = {
        "cached_vs_memory": rate["folder cached"] / rate["in-memory"],
        "uncached_vs_memory": rate["folder uncached"] / rate["in-memory"],
        "ours_vs_torchvision": rate["photo folder (ours)"] / rate["torchvision ImageFolder"],
        "ours_vs_torchvision_loader_only": rate["photo loader only (ours)"] / rate["torchvision ImageFolder loader only"],
        "decode_ours_per_s": decoders["ours"],
        "decode_pil_per_s": decoders["pil"],
        "decode_ours_vs_pil": decoders["ours"] / decoders["pil"],
    }
    report = {"environment": environment(device), "args": {k: str(v) for k, v in vars(args).items()},
              "rows": [asdict(r) for r in rows], "ratios": ratios, "extra": extra, "same_pixels": same,
              "median_photo_side": statistics.median(min(s) for s in _sizes(ours.samples))}
    echo("")
    echo(table(rows, ratios))
    echo(f"cached pixels == uncached pixels: {same}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


def _sizes(samples: Sequence[tuple[str, int]]) -> Iterator[tuple[int, int]]:
    from PIL import Image

    for path, _ in samples:
        with Image.open(path) as im:
            yield im.size


if __name__ == "__main__":
    main()
