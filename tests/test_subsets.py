"""Labelled subsets for semi-supervised evaluation: deterministic, balanced, checked on load."""

import json

import numpy as np
import pytest

from sslbench.benchmark.errors import ConfigError, DatasetError
from sslbench.protocols.subsets import (
    balanced_subset,
    load_subset,
    read_subset,
    save_subset,
    subset_from_file_names,
)

LABELS = np.repeat(np.arange(10), 100)  # a balanced split of 1,000 images


def test_balanced_deterministic_and_recorded_by_hash(tmp_path):
    a = balanced_subset(LABELS, "toy", fraction=0.01, seed=0)
    assert a.spec == "1%" and len(a.indices) == 10
    assert np.bincount(LABELS[list(a.indices)], minlength=10).tolist() == [1] * 10
    assert a == balanced_subset(LABELS, "toy", fraction=0.01, seed=0)  # same seed, same subset
    assert a.sha256 != balanced_subset(LABELS, "toy", fraction=0.01, seed=1).sha256
    b = balanced_subset(LABELS, "toy", per_class=25, seed=3)
    assert np.bincount(LABELS[list(b.indices)]).tolist() == [25] * 10
    assert list(b.indices) == sorted(set(b.indices))
    path = save_subset(b, tmp_path / "toy-25.json")
    assert load_subset(path, dataset="toy", num_samples=1000) == b


def test_subset_only_indexes_the_training_split():
    """Indices are positions in the training split passed in: a test image cannot be drawn."""
    s = balanced_subset(LABELS, "toy", fraction=0.1, seed=0)
    assert 0 <= min(s.indices) and max(s.indices) < len(LABELS) and s.num_samples == len(LABELS)


def test_bad_requests_and_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        balanced_subset(LABELS, "toy")
    with pytest.raises(ConfigError, match="fewer than the 200 per class"):
        balanced_subset(LABELS, "toy", per_class=200)
    s = balanced_subset(LABELS, "toy", per_class=2)
    path = save_subset(s, tmp_path / "s.json")
    with pytest.raises(DatasetError, match="is for 'toy' .1000 training images., not 'cifar10' .50000."):
        load_subset(path, dataset="cifar10", num_samples=50000)
    raw = json.loads(path.read_text())
    raw["indices"][0] += 1
    path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="corrupt"):
        load_subset(path, dataset="toy", num_samples=1000)
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(DatasetError, match="Cannot read"):
        load_subset(tmp_path / "junk.json", dataset="toy", num_samples=1000)


def test_published_file_name_lists(tmp_path):
    names = [f"train/n0{c}/{c}_{i}.JPEG" for c in range(3) for i in range(4)]
    listing = tmp_path / "1percent.txt"
    listing.write_text("0_1.JPEG\n2_3.JPEG\n\n")
    s = subset_from_file_names(listing, names, "imagenet")
    assert s.indices == (1, 11) and s.spec == "1percent.txt"
    listing.write_text("0_1.JPEG\nnot_here.JPEG\n")
    with pytest.raises(DatasetError, match="1 of the 2 files .* not_here.JPEG"):
        subset_from_file_names(listing, names, "imagenet")


def test_read_subset_takes_an_sslbench_file_or_a_published_list(tmp_path):
    s = balanced_subset(LABELS, "toy", per_class=3, seed=0)
    path = save_subset(s, tmp_path / "toy.json")
    assert read_subset(path, dataset="toy", num_samples=1000) == s
    with pytest.raises(DatasetError, match="is for 'toy'"):
        read_subset(path, dataset="other", num_samples=1000)
    names = [f"train/c{c}/img{i}.png" for i, c in enumerate(LABELS)]
    listing = tmp_path / "10percent.txt"
    listing.write_text("img5.png\nimg500.png\n")
    listed = read_subset(listing, dataset="toy", num_samples=1000, sample_names=names)
    assert listed.indices == (5, 500) and listed.spec == "10percent.txt"
    with pytest.raises(DatasetError, match="has no file names"):
        read_subset(listing, dataset="toy", num_samples=1000)
    with pytest.raises(DatasetError, match="Cannot read"):
        read_subset(tmp_path / "missing.txt", dataset="toy", num_samples=1000)
