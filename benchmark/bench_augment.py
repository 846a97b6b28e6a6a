"""Throughput of the batched augmentation against torchvision's per-image transforms.

The per-image baseline is what solo-learn and lightly do without DALI: a torchvision v2
``Compose`` of the same recipe (RandomResizedCrop, flip, RandomApply(ColorJitter), RandomGrayscale,
RandomApply(GaussianBlur), RandomSolarize, ToDtype, Normalize) applied image by image, view by
view, in a Python loop. Both pipelines get the same uint8 images; the batched one also pays for
moving the uint8 batch to ``--device``.

Usage::

    python -m sslbench.benchmark.bench_augment                      # fashion-mnist-mini, simclr-small
    python -m sslbench.benchmark.bench_augment --synthetic --size 32 --channels 3 --recipe simclr
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torchvision
from torchvision.transforms import v2

from sslbench.benchmark.augment import BatchAugment, ViewSpec, blur_kernel_size, get_augment_recipe
from sslbench.benchmark.errors import ConfigError, SSLBenchError


def torchvision_view(spec: ViewSpec, size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The per-image torchvision v2 equivalent of one view, for uint8 (C, H, W) tensors.

    Ops that the spec disables are left out, as a hand-written per-image pipeline would.
    """
    ops: list[torch.nn.Module] = [
        v2.RandomResizedCrop(size, scale=spec.crop_scale, ratio=spec.crop_ratio, antialias=True)
    ]
    if spec.flip_p > 0:
        ops.append(v2.RandomHorizontalFlip(spec.flip_p))
    if spec.jitter_p > 0:
        jitter = v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)
        ops.append(v2.RandomApply([jitter], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(spec.grayscale_p))
    kernel = blur_kernel_size(size, spec.blur_kernel_frac)
    if spec.blur_p > 0 and kernel > 1:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, spec.blur_sigma)], p=spec.blur_p))
    if spec.solarize_p > 0:
        ops.append(v2.RandomSolarize(round(spec.solarize_threshold * 255), p=spec.solarize_p))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def _median_seconds(
    fn: Callable[[], object], repeats: int, sync: Callable[[], None], min_total_s: float = 0.0
) -> float:
    """Median wall time of ``fn`` after one warm-up run, over ``repeats`` runs or more.

    Fast functions run until ``min_total_s`` seconds have been timed, so that a burst of load
    from other processes cannot dominate a handful of few-millisecond iterations.
    """
    fn()
    sync()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_total_s:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load_images(args: argparse.Namespace) -> tuple[torch.Tensor, tuple[float, ...], tuple[float, ...], str]:
    """The uint8 (B, C, H, W) batch on the CPU, its normalisation and a description."""
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        shape = (args.batch, args.channels, args.size, args.size)
        images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        return images, (0.5,) * args.channels, (0.25,) * args.channels, "synthetic"
    from sslbench.benchmark.datasets import load_dataset

    data = load_dataset(args.dataset, "train")
    held = getattr(data, "images", None)
    if not isinstance(held, torch.Tensor):
        raise ConfigError(
            f"Dataset '{args.dataset}' is decoded per image, not held in memory.",
            "Pick an in-memory dataset (e.g. fashion-mnist-mini, cifar10) or use --synthetic.",
        )
    if len(held) < args.batch:
        raise ConfigError(f"Dataset '{args.dataset}' has {len(held)} images, fewer than --batch {args.batch}.", "")
    return held[: args.batch].contiguous(), data.info.mean, data.info.std, args.dataset


def run(args: argparse.Namespace) -> dict[str, float]:
    """Times both pipelines and prints the table; returns images/s per pipeline."""
    if min(args.batch, args.repeats, args.threads, args.size, args.channels) < 1 or args.channels not in (1, 3):
        raise ConfigError("--batch, --repeats, --threads, --size must be >= 1 and --channels 1 or 3.", "")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available.", "Use --device cpu.")
    recipe = get_augment_recipe(args.recipe)
    images, mean, std, source = _load_images(args)
    b, c, h, w = images.shape
    aug = BatchAugment(recipe, mean, std, h)
    per_image = [torchvision_view(spec, size, mean, std) for spec, size in zip(recipe.views, aug.view_sizes)]
    n_out = b * len(recipe.views)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generator = torch.Generator(device=device).manual_seed(0)
    batched_s = _median_seconds(lambda: aug(images.to(device), generator), args.repeats, sync, args.min_time)
    torch.manual_seed(0)  # torchvision's transforms draw from the global RNG
    looped_s = _median_seconds(lambda: [t(img) for img in images for t in per_image], args.repeats, lambda: None)

    rates = {"batched": n_out / batched_s, "per_image": n_out / looped_s}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"Augmentation throughput: recipe '{recipe.name}', {len(recipe.views)} views "
          f"(sizes {', '.join(map(str, aug.view_sizes))}) of {b} images {c}x{h}x{w} ({source})")
    print(f"device {device} ({device_name}), torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, threads {torch.get_num_threads()}; median of {args.repeats} "
          f"timed iterations (batched: at least {args.min_time:g} s of them) after 1 warm-up")
    if hasattr(os, "getloadavg"):  # other processes on the cores distort CPU timings badly
        print(f"CPU cores {os.cpu_count()}, load average (1 min) {os.getloadavg()[0]:.1f}")
    print(f"{'pipeline':<48}{'images/s':>12}{'ms / iteration':>16}")
    for label, key, seconds in ((f"batched (sslbench BatchAugment, on {device})", "batched", batched_s),
                                ("per-image (torchvision v2 loop, cpu)", "per_image", looped_s)):
        print(f"{label:<48}{rates[key]:>12,.0f}{seconds * 1e3:>16.1f}")
    print(f"batched / per-image = {rates['batched'] / rates['per_image']:.0f}x "
          f"(images/s counts augmented views: {len(recipe.views)} per input image)")
    return rates


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(prog="python -m sslbench.benchmark.bench_augment", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="simclr-small", help="augmentation recipe (default simclr-small)")
    p.add_argument("--dataset", default="fashion-mnist-mini", help="in-memory dataset for the images")
    p.add_argument("--synthetic", action="store_true", help="random uint8 images instead of --dataset")
    p.add_argument("--size", type=int, default=32, help="side of the --synthetic images (default 32)")
    p.add_argument("--channels", type=int, default=3, help="channels of the --synthetic images (1 or 3)")
    p.add_argument("--batch", type=int, default=512, help="images per batch (default 512)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed iterations after a warm-up (default 5)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="the batched pipeline repeats until this many seconds are timed (default 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device of the batched pipeline (default cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except SSLBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
