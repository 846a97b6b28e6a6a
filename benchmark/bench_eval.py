"""Evaluation speed: weighted kNN on random features and feature extraction of random images.

Times the two steps every kNN / linear evaluation spends its time in, as
:func:`sslbench.protocols.evaluate` runs them:

* kNN: :func:`~sslbench.protocols.knn.knn_classify` with k=200, T=0.1 on ``--train`` x ``--dim``
  random bank features against ``--test`` queries (10 classes), on ``--device``;
* extraction: :func:`~sslbench.protocols.features.extract_features` of ``--images`` random uint8
  3x32x32 images held on ``--device`` (as ``sslbench eval`` holds in-memory data), with a
  randomly initialised ``--backbone`` and ``--precision`` (``auto``: bf16 on CUDA, fp32 on the CPU).

On CUDA each step is also timed with the settings every evaluation used before (kNN blocks of
1,024 test rows; extraction in fp32, NCHW, batch 512, features copied to the host), so one run
shows the gain. Each number is the median of ``--repeats`` timed runs after one warm-up::

    python -m sslbench.benchmark.bench_eval                    # 50,000 x 10,000 x 512 kNN, 60,000 images
    python -m sslbench.benchmark.bench_eval --small            # CPU-sized: 5,000 x 1,000 kNN, 2,000 images
    python -m sslbench.benchmark.bench_eval --json eval.json   # also write the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sslbench.benchmark.errors import ConfigError, SSLBenchError

KNN_K = 200
KNN_TEMPERATURE = 0.1
NUM_CLASSES = 10
#: The settings of every evaluation before the CUDA path (the "before" rows on CUDA).
BEFORE_CHUNK = 1024
BEFORE_BATCH = 512
#: (--train, --test, --dim, --images) of the full and the --small run
FULL_SIZES = (50_000, 10_000, 512, 60_000)
SMALL_SIZES = (5_000, 1_000, 512, 2_000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up (CUDA synchronised)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_knn(num_train: int, num_test: int, dim: int, device: torch.device, repeats: int = 3,
              seed: int = 0) -> dict[str, Any]:
    """Times kNN (k=200, T=0.1, 10 classes) on random features held on ``device``.

    Returns:
        ``knn_seconds`` and ``knn_queries_per_s`` with the default chunk (``knn_chunk``); on CUDA
        also ``knn_seconds_before`` with blocks of 1,024 rows.
    """
    from sslbench.protocols.knn import knn_chunk_size, knn_classify

    g = torch.Generator().manual_seed(seed)
    train = torch.randn(num_train, dim, generator=g).to(device)
    train_y = torch.randint(0, NUM_CLASSES, (num_train,), generator=g).to(device)
    test = torch.randn(num_test, dim, generator=g).to(device)
    test_y = torch.randint(0, NUM_CLASSES, (num_test,), generator=g).to(device)

    def run(chunk: int | None) -> Callable[[], dict[str, float]]:
        return lambda: knn_classify(train, train_y, test, test_y, num_classes=NUM_CLASSES, k=KNN_K,
                                    temperature=KNN_TEMPERATURE, chunk_size=chunk)

    chunk = knn_chunk_size(num_train, device)
    seconds = median_seconds(run(None), device, repeats)
    out: dict[str, Any] = {"knn_train": num_train, "knn_test": num_test, "knn_dim": dim, "knn_k": KNN_K,
                           "knn_chunk": chunk, "knn_seconds": seconds, "knn_queries_per_s": num_test / seconds}
    if chunk != BEFORE_CHUNK:
        out["knn_seconds_before"] = median_seconds(run(BEFORE_CHUNK), device, repeats)
        out["knn_speedup"] = out["knn_seconds_before"] / seconds
    return out


def bench_extract(num_images: int, device: torch.device, *, backbone: str = "resnet18-small",
                  precision: str = "auto", batch_size: int | None = None, repeats: int = 3,
                  seed: int = 0) -> dict[str, Any]:
    """Times feature extraction of random 3x32x32 uint8 images (held on ``device``) through a
    randomly initialised ``backbone``, as :func:`sslbench.protocols.evaluate` runs it.

    Returns:
        ``extract_seconds`` and ``extract_images_per_s`` with the defaults for ``device`` (and
        ``precision`` / ``batch_size`` when given); on CUDA also ``extract_seconds_before`` (fp32,
        NCHW, batch 512, features copied to the host).
    """
    from sslbench.benchmark.backbones import build_backbone
    from sslbench.benchmark.datasets import ArrayDataset, DatasetInfo
    from sslbench.protocols.features import default_extract_batch_size, extract_features, resolve_precision
    from sslbench.protocols.linear import normalized_preprocess

    size, channels = 32, 3
    info = DatasetInfo(name="random", image_size=size, channels=channels, num_classes=NUM_CLASSES,
                       mean=(0.5,) * channels, std=(0.25,) * channels, in_memory=True,
                       source="random uint8 images (bench_eval)")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (num_images,), generator=g)
    data = ArrayDataset(images=images, labels=labels, info=info, split="train").to(device)
    torch.manual_seed(seed)
    encoder, dim = build_backbone(backbone, channels, size)
    encoder = encoder.to(device)
    preprocess = normalized_preprocess(info.mean, info.std, size)
    batch = batch_size or default_extract_batch_size(device)
    resolved = resolve_precision(precision, device)

    def run() -> object:
        return extract_features(encoder, data, batch_size=batch, device=device, preprocess=preprocess,
                                precision=resolved, output_device=None)

    seconds = median_seconds(run, device, repeats)
    out: dict[str, Any] = {"extract_images": num_images, "extract_backbone": backbone, "extract_dim": dim,
                           "extract_precision": resolved, "extract_batch_size": batch,
                           "extract_seconds": seconds, "extract_images_per_s": num_images / seconds}
    if device.type == "cuda":
        before = median_seconds(lambda: extract_features(encoder, data, batch_size=BEFORE_BATCH, device=device,
                                                         preprocess=preprocess, precision="fp32",
                                                         channels_last=False, output_device="cpu"),
                                device, repeats)
        out.update(extract_seconds_before=before, extract_images_per_s_before=num_images / before,
                   extract_speedup=before / seconds)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs both benchmarks, prints them and returns every number (what ``--json`` writes)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available.", "Use --device cpu.")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = SMALL_SIZES if args.small else FULL_SIZES
    num_train, num_test, dim, num_images = (given if given is not None else default for given, default in
                                            zip((args.train, args.test, args.dim, args.images), sizes))
    if min(num_train, num_test, dim, num_images, args.repeats) < 1:
        raise ConfigError("--train, --test, --dim, --images and --repeats must be >= 1.", "")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result: dict[str, Any] = {"device": str(device), "device_name": name, "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "repeats": args.repeats}
    if hasattr(os, "getloadavg"):  # other processes on the cores distort CPU timings badly
        result["load_average_1min"] = os.getloadavg()[0]
    print(f"Evaluation speed on {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; median of {args.repeats} timed runs after 1 warm-up")
    knn = bench_knn(num_train, num_test, dim, device, repeats=args.repeats)
    result.update(knn)
    line = (f"kNN k={KNN_K}: {num_train:,} x {num_test:,} x {dim} features, chunk {knn['knn_chunk']}: "
            f"{knn['knn_seconds']:.3f} s ({knn['knn_queries_per_s']:,.0f} queries/s)")
    if "knn_seconds_before" in knn:
        line += f"; chunk {BEFORE_CHUNK}: {knn['knn_seconds_before']:.3f} s ({knn['knn_speedup']:.1f}x)"
    print(line)
    ext = bench_extract(num_images, device, backbone=args.backbone, precision=args.precision,
                        batch_size=args.batch_size, repeats=args.repeats)
    result.update(ext)
    line = (f"extraction: {num_images:,} images 3x32x32, {args.backbone} ({ext['extract_dim']}-d), "
            f"{ext['extract_precision']}, batch {ext['extract_batch_size']}: {ext['extract_seconds']:.3f} s "
            f"({ext['extract_images_per_s']:,.0f} images/s)")
    if "extract_seconds_before" in ext:
        line += (f"; fp32 batch {BEFORE_BATCH} to host: {ext['extract_seconds_before']:.3f} s "
                 f"({ext['extract_images_per_s_before']:,.0f} images/s, {ext['extract_speedup']:.1f}x)")
    print(line)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"Wrote {path}")
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(prog="python -m sslbench.benchmark.bench_eval", description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true",
                   help="CPU-sized defaults: 5,000 x 1,000 kNN features, 2,000 images")
    p.add_argument("--train", type=int, help="kNN bank rows (default 50,000; --small 5,000)")
    p.add_argument("--test", type=int, help="kNN query rows (default 10,000; --small 1,000)")
    p.add_argument("--dim", type=int, help="feature dimension of the kNN features (default 512)")
    p.add_argument("--images", type=int, help="images to embed (default 60,000; --small 2,000)")
    p.add_argument("--backbone", default="resnet18-small", help="backbone of the extraction (default resnet18-small)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="extraction autocast (default auto: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--batch-size", type=int, help="extraction batch (default 1024 on CUDA, 512 on the CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (default 3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
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
