"""Regenerates the embedded Fashion-MNIST subset, ``benchmark/data/fashion_mnist_mini.npz``.

The subset is class balanced: 1,000 training and 200 test images per class (10,000 + 2,000),
drawn without replacement from the original Fashion-MNIST files with ``numpy.random.default_rng``
and a fixed seed, so the file can be rebuilt bit-for-bit from the same source files::

    apt-get install dataset-fashion-mnist       # or pass --source DIR with the four idx files
    python -m sslbench.benchmark.make_embedded_data

The source is read with :func:`sslbench.benchmark.datasets.read_fashion_mnist_split`, which accepts
the idx files gzipped (Debian, upstream) or not (torchvision's ``FashionMNIST/raw``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from sslbench.benchmark.datasets import (
    DEBIAN_FASHION_MNIST_DIR,
    EMBEDDED_NPZ,
    fashion_mnist_dirs,
    locate_fashion_mnist,
    read_fashion_mnist_split,
)
from sslbench.benchmark.errors import DatasetError, SSLBenchError

SEED = 20240501
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
NUM_CLASSES = 10


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Draws ``per_class`` positions of every class without replacement.

    Args:
        labels: class of every image in the pool.
        per_class: how many positions to take from each class.
        rng: the generator; classes are drawn in order 0, 1, ... so the result depends only on it.

    Returns:
        The chosen positions, sorted ascending (the original file order, which mixes classes).

    Shape:
        labels: (N,); returns (num_classes * per_class,).
    """
    chosen = []
    for c in range(NUM_CLASSES):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise DatasetError(
                f"Fashion-MNIST source has only {len(pool)} images of class {c}; {per_class} needed.",
                "Use the original, unmodified Fashion-MNIST files.",
            )
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _row_hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.sha1(row.tobytes()).digest() for row in images]


def build(source_dir: Path | None, out: Path, seed: int = SEED) -> dict[str, object]:
    """Builds the subset and writes it with ``np.savez_compressed``.

    Args:
        source_dir: folder with the original idx files; None searches the usual places.
        out: the npz to write.
        seed: seed of the class-balanced draw.

    Returns:
        The metadata stored in the file's ``meta`` field.
    """
    dirs = [source_dir.resolve()] if source_dir else fashion_mnist_dirs([])
    train_files = locate_fashion_mnist("train", dirs)
    test_files = locate_fashion_mnist("test", dirs)
    if train_files is None or test_files is None:
        raise DatasetError(
            f"The original Fashion-MNIST idx files are not in {', '.join(map(str, dirs))}.",
            "Install them with `apt-get install dataset-fashion-mnist`, or pass --source DIR "
            "holding train-/t10k-images-idx3-ubyte[.gz] and train-/t10k-labels-idx1-ubyte[.gz].",
        )
    x_train, y_train = read_fashion_mnist_split(*train_files)
    x_test, y_test = read_fashion_mnist_split(*test_files)

    rng = np.random.default_rng(seed)
    train_idx = balanced_indices(y_train, TRAIN_PER_CLASS, rng)
    test_idx = balanced_indices(y_test, TEST_PER_CLASS, rng)

    # Fashion-MNIST has no pixel-identical image in both splits (checked when this file was
    # written), but the embedded splits must be disjoint whatever the source, so check it here.
    overlap = set(_row_hashes(x_train[train_idx])) & set(_row_hashes(x_test[test_idx]))
    if overlap:
        raise DatasetError(
            f"{len(overlap)} chosen test images also occur in the chosen training images.",
            "Use the original Fashion-MNIST files, or change the seed.",
        )

    meta = {
        "dataset": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), MIT licence, (c) 2017 Zalando SE",
        "source_files": [p.name for p in (*train_files, *test_files)],
        "source_dir": str(train_files[0].parent),
        "seed": seed,
        "selection": (
            f"numpy.random.default_rng({seed}); for class 0..9 in order, rng.choice(positions of "
            f"that class, {TRAIN_PER_CLASS}, replace=False) from the train file, then the same with "
            f"{TEST_PER_CLASS} per class from the t10k file; positions sorted ascending"
        ),
        "generator": "python -m sslbench.benchmark.make_embedded_data",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        train_images=x_train[train_idx],
        train_labels=y_train[train_idx],
        test_images=x_test[test_idx],
        test_labels=y_test[test_idx],
        # Positions in the original files (uint16 is enough for 60,000), for provenance.
        train_source_indices=train_idx.astype(np.uint16),
        test_source_indices=test_idx.astype(np.uint16),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    return meta


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help=f"folder with the original idx files (default: {DEBIAN_FASHION_MNIST_DIR})",
    )
    parser.add_argument("--out", type=Path, default=EMBEDDED_NPZ, help="npz to write")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    try:
        meta = build(args.source, args.out, args.seed)
    except SSLBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.2f} MB) from {meta['source_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
