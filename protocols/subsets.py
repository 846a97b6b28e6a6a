"""Labelled subsets for semi-supervised evaluation: fixed, versioned, class-balanced index files.

A :class:`LabelledSubset` is the list of training-split positions whose labels a semi-supervised
protocol may use (1 % and 10 % as in SimCLR / BYOL, any fraction, or a number of images per
class), drawn per class with a seeded generator, so two users with the same dataset get the same
subset. It is stored as a small JSON file whose ``sha256`` (of the dataset, split size and
indices) is recorded with every result measured on it; loading checks the hash, the dataset and
the split size, so a corrupt file or one made for another dataset is a clear error, never a
silently different subset. ImageNet's published SimCLR subsets (``1percent.txt``,
``10percent.txt``: one file name per line) are read by :func:`subset_from_file_names`.

Only training-split positions are ever drawn: a subset cannot contain a test image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslbench.benchmark.errors import ConfigError, DatasetError

FORMAT = "sslbench-labelled-subset"
VERSION = 1


@dataclass(frozen=True)
class LabelledSubset:
    """Training-split positions whose labels may be used.

    Attributes:
        dataset: the dataset's registered name.
        num_samples: size of the training split the indices point into.
        indices: sorted, distinct positions in ``[0, num_samples)``.
        spec: how it was drawn (``"1%"``, ``"10%"``, ``"25-per-class"``, or the source file).
        seed: the seed of the draw (-1 for a published list).
    """

    dataset: str
    num_samples: int
    indices: tuple[int, ...]
    spec: str
    seed: int

    @property
    def sha256(self) -> str:
        """A hash of what defines the subset (dataset, split size, indices), recorded on results."""
        blob = json.dumps([self.dataset, self.num_samples, list(self.indices)], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict[str, object]:
        return {"format": FORMAT, "version": VERSION, "dataset": self.dataset,
                "num_samples": self.num_samples, "spec": self.spec, "seed": self.seed,
                "sha256": self.sha256, "indices": list(self.indices)}


def balanced_subset(labels: Sequence[int] | np.ndarray, dataset: str, *, fraction: float | None = None,
                    per_class: int | None = None, seed: int = 0) -> LabelledSubset:
    """Draws the same number of images from every class of the training split.

    ``per_class`` images per class, or, with ``fraction``, ``max(1, round(fraction * N / C))``
    per class (N images, C classes; 1 % of a balanced split is 1 % of every class).

    Raises:
        ConfigError: neither or both of ``fraction`` / ``per_class``, a value out of range, or a
            class with fewer images than asked for.
    """
    y = np.asarray(labels)
    if (fraction is None) == (per_class is None):
        raise ConfigError("Give exactly one of fraction and per_class for a labelled subset.",
                          "e.g. fraction=0.01 (1 %) or per_class=25.")
    if y.ndim != 1 or y.size == 0 or (y < 0).any():
        raise ConfigError("A labelled subset needs the 1-D labels of a labelled training split.",
                          "Use a dataset whose training split has labels.")
    classes, counts = np.unique(y, return_counts=True)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"Labelled fraction {fraction} is not in (0, 1].", "e.g. 0.01 or 0.1.")
        k = max(1, round(fraction * y.size / classes.size))
        spec = f"{fraction * 100:g}%"
    else:
        assert per_class is not None
        if per_class < 1:
            raise ConfigError(f"per_class={per_class} must be >= 1.", "e.g. 25.")
        k, spec = per_class, f"{per_class}-per-class"
    if counts.min() < k:
        raise ConfigError(f"Class {classes[counts.argmin()]} of '{dataset}' has {counts.min()} images, "
                          f"fewer than the {k} per class asked for.", "Ask for fewer per class.")
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(y == c))[:k] for c in classes]
    indices = tuple(int(i) for i in np.sort(np.concatenate(chosen)))
    return LabelledSubset(dataset, int(y.size), indices, spec, seed)


def save_subset(subset: LabelledSubset, path: str | Path) -> Path:
    """Writes the subset as JSON (atomically); returns the path."""
    from sslbench.benchmark.files import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(subset.to_dict(), indent=1) + "\n")
    return path


def load_subset(path: str | Path, *, dataset: str, num_samples: int) -> LabelledSubset:
    """Reads a subset file and checks it belongs to ``dataset``'s training split of
    ``num_samples`` images.

    Raises:
        DatasetError: unreadable, corrupt (hash mismatch), or made for another dataset or split.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        subset = LabelledSubset(str(raw["dataset"]), int(raw["num_samples"]),
                                tuple(int(i) for i in raw["indices"]), str(raw["spec"]), int(raw["seed"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"Cannot read the labelled-subset file '{path}' ({exc}).",
                           "Pass a file written by sslbench (save_subset).") from None
    if subset.sha256 != raw.get("sha256"):
        raise DatasetError(f"The labelled-subset file '{path}' is corrupt: its indices do not match "
                           "its recorded sha256.", "Regenerate it or fetch it again.")
    if subset.dataset != dataset or subset.num_samples != num_samples:
        raise DatasetError(
            f"The labelled-subset file '{path}' is for '{subset.dataset}' ({subset.num_samples} "
            f"training images), not '{dataset}' ({num_samples}).",
            "Use a subset made for this dataset and split.")
    _check_indices(subset, path)
    return subset


def subset_from_file_names(path: str | Path, sample_names: Sequence[str], dataset: str) -> LabelledSubset:
    """A published list of training file names (ImageNet's SimCLR ``1percent.txt``, one name
    per line) as a subset of a split whose images are named ``sample_names`` (base names).

    Raises:
        DatasetError: unreadable, or a listed name is not in the split.
    """
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise DatasetError(f"Cannot read the subset list '{path}' ({exc}).", "Check the path.") from None
    position = {Path(n).name: i for i, n in enumerate(sample_names)}
    missing = [n for n in names if Path(n).name not in position]
    if missing:
        raise DatasetError(
            f"{len(missing)} of the {len(names)} files listed in '{path}' are not in the training "
            f"split of '{dataset}' (first: {missing[0]}).",
            "The list is for another dataset or the split is incomplete.")
    indices = tuple(sorted({position[Path(n).name] for n in names}))
    return LabelledSubset(dataset, len(sample_names), indices, path.name, -1)


def read_subset(path: str | Path, *, dataset: str, num_samples: int,
                sample_names: Sequence[str] | None = None) -> LabelledSubset:
    """A labelled subset given by path: an sslbench JSON file (:func:`load_subset`) or a published
    list of training file names such as ImageNet's SimCLR ``1percent.txt``
    (:func:`subset_from_file_names`, matched against ``sample_names``).

    Args:
        path: the file.
        dataset: the training split's dataset name.
        num_samples: the training split's size.
        sample_names: the training images' file names, in split order (an image folder's
            sample paths); None for in-memory data, which can only take JSON files.

    Raises:
        DatasetError: unreadable, corrupt, for another dataset or split, or a list of file names
            for a split without file names.
    """
    path = Path(path)
    try:
        head = path.read_text(encoding="utf-8").lstrip()[:1]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot read the labelled-subset file '{path}' ({exc}).", "Check the path.") from None
    if head == "{":
        return load_subset(path, dataset=dataset, num_samples=num_samples)
    if sample_names is None:
        raise DatasetError(
            f"'{path}' is a list of file names, but the training split of '{dataset}' has no file names "
            "(it is held in memory).",
            "Pass an sslbench subset file (save_subset), or use an image-folder dataset.")
    if len(sample_names) != num_samples:
        raise ValueError(f"{len(sample_names)} sample names for a split of {num_samples} images")
    return subset_from_file_names(path, sample_names, dataset)


def _check_indices(subset: LabelledSubset, path: Path) -> None:
    idx = np.asarray(subset.indices)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= subset.num_samples or (np.diff(idx) <= 0).any():
        raise DatasetError(f"The labelled-subset file '{path}' holds indices outside [0, "
                           f"{subset.num_samples}) or not sorted and distinct.", "Regenerate it.")
