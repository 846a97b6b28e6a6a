"""Tests of the dataset layer: embedded data, batching, registry, loaders and their errors."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.benchmark import datasets as D
from sslbench.benchmark.errors import ConfigError, DatasetError, UnknownNameError

ALL_NAMES = (
    "fashion-mnist-mini", "fashion-mnist", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic"
)
HAS_DEBIAN_FMNIST = (D.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture(scope="module")
def mini_train() -> D.ArrayDataset:
    ds = D.load_dataset("fashion-mnist-mini", "train")
    assert isinstance(ds, D.ArrayDataset)
    return ds


@pytest.fixture(scope="module")
def mini_test() -> D.ArrayDataset:
    ds = D.load_dataset("fashion-mnist-mini", "test")
    assert isinstance(ds, D.ArrayDataset)
    return ds


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if anything tries to download."""

    def refuse(name: str, root: Path, fetch: object) -> None:
        raise AssertionError(f"tried to download {name} into {root}")

    monkeypatch.setattr(D, "_torchvision_download", refuse)


def _rows(images: torch.Tensor) -> set[bytes]:
    return {hashlib.sha1(row.numpy().tobytes()).digest() for row in images}


# ----------------------------------------------------------------------------------------------
# Embedded Fashion-MNIST subset


def test_embedded_shapes_dtypes_and_balance(mini_train: D.ArrayDataset, mini_test: D.ArrayDataset) -> None:
    for ds, n, per_class in ((mini_train, 10000, 1000), (mini_test, 2000, 200)):
        assert ds.images.shape == (n, 1, 28, 28)
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        assert ds.labels.shape == (n,)
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
        assert ds.info.name == "fashion-mnist-mini" and ds.info.num_classes == 10
    assert mini_train.split == "train" and mini_test.split == "test"
    # Real images, not blanks: Fashion-MNIST backgrounds are black, objects bright.
    assert mini_train.images.max() == 255 and mini_train.images.min() == 0


def test_embedded_splits_are_disjoint_and_without_duplicates(
    mini_train: D.ArrayDataset, mini_test: D.ArrayDataset
) -> None:
    train, test = _rows(mini_train.images), _rows(mini_test.images)
    assert len(train) == 10000 and len(test) == 2000
    assert not train & test


def test_embedded_mean_std_match_info(mini_train: D.ArrayDataset) -> None:
    x = mini_train.images.double() / 255
    assert x.mean().item() == pytest.approx(mini_train.info.mean[0], abs=0.01)
    assert x.std().item() == pytest.approx(mini_train.info.std[0], abs=0.01)
    # Tighter: the stored values are the measured ones to 4 decimals.
    assert x.mean().item() == pytest.approx(mini_train.info.mean[0], abs=1e-4)
    assert x.std().item() == pytest.approx(mini_train.info.std[0], abs=1e-4)


def test_embedded_loads_fast_and_copies() -> None:
    D._embedded_arrays.cache_clear()
    t0 = time.perf_counter()
    a = D.load_dataset("fashion-mnist-mini", "train")
    assert time.perf_counter() - t0 < 1.0  # target < 0.5 s; slack for a loaded CI machine
    b = D.load_dataset("fashion-mnist-mini", "train")
    a.images[0] = 0  # each load owns its tensors; the cache is not shared
    assert b.images[0].any()


def test_embedded_metadata_and_licence() -> None:
    meta = D.embedded_metadata()
    assert meta["seed"] == 20240501
    assert meta["source_files"] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert "rng.choice" in str(meta["selection"])
    licence = (D.EMBEDDED_NPZ.parent / "LICENSE-fashion-mnist.txt").read_text(encoding="utf-8")
    assert "Zalando SE" in licence and "Permission is hereby granted" in licence
    assert D.EMBEDDED_NPZ.stat().st_size < 6_000_000


@pytest.mark.skipif(not HAS_DEBIAN_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_embedded_images_are_the_original_ones(mini_train: D.ArrayDataset, mini_test: D.ArrayDataset) -> None:
    arrays = D._embedded_arrays()
    for split, ds in (("train", mini_train), ("test", mini_test)):
        found = D.locate_fashion_mnist(split, [D.DEBIAN_FASHION_MNIST_DIR])
        assert found is not None
        images, labels = D.read_fashion_mnist_split(*found)
        idx = arrays[f"{split}_source_indices"].astype(np.int64)
        assert len(np.unique(idx)) == len(ds)
        assert np.array_equal(images[idx], ds.images[:, 0].numpy())
        assert np.array_equal(labels[idx], ds.labels.numpy())


def test_embedded_rebuild_is_reproducible(tmp_path: Path) -> None:
    """The generator script rebuilds identical arrays from tiny fake source files."""
    from sslbench.benchmark import make_embedded_data as M

    rng = np.random.default_rng(1)
    for prefix, n in (("train", 1100 * 10), ("t10k", 210 * 10)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n // 10)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    out1, out2 = tmp_path / "a.npz", tmp_path / "b.npz"
    assert M.main(["--source", str(tmp_path), "--out", str(out1)]) == 0
    M.build(tmp_path, out2)
    with np.load(out1) as a, np.load(out2) as b:
        for key in ("train_images", "train_labels", "test_images", "test_labels"):
            assert np.array_equal(a[key], b[key])
        assert np.bincount(a["train_labels"]).tolist() == [1000] * 10
        assert np.bincount(a["test_labels"]).tolist() == [200] * 10
    assert M.main(["--source", str(tmp_path / "nothing"), "--out", str(out1)]) == 2


# ----------------------------------------------------------------------------------------------
# Batching


def _small(n: int = 23) -> D.ArrayDataset:
    ds = D.make_synthetic(num_classes=4, per_class=8, image_size=8)
    return ds.subset(torch.arange(n))


def test_batches_cover_every_index_once_and_match_images() -> None:
    ds = _small(23)
    batches = list(ds.batches(5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b.indices) for b in batches] == [5, 5, 5, 5, 3]
    seen = torch.cat([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(23))
    assert not torch.equal(seen, torch.arange(23))  # actually shuffled
    for b in batches:
        assert b.images.dtype == torch.uint8 and b.images.shape[1:] == (1, 8, 8)
        assert b.indices.dtype == torch.int64 and b.labels.dtype == torch.int64
        assert torch.equal(b.images, ds.images[b.indices])
        assert torch.equal(b.labels, ds.labels[b.indices])


def test_batches_unshuffled_are_in_order() -> None:
    ds = _small(10)
    batches = list(ds.batches(4))
    assert [b.indices.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(batches[0].images, ds.images[:4])


def test_batches_shuffle_is_deterministic_per_generator_state() -> None:
    ds = _small(23)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([b.indices for b in ds.batches(4, shuffle=True, generator=gen)]).tolist()

    assert order(7) == order(7)
    assert order(7) != order(8)
    # The order is exactly torch.randperm under that generator (the documented contract).
    assert order(7) == torch.randperm(23, generator=torch.Generator().manual_seed(7)).tolist()


def test_batches_drop_last() -> None:
    ds = _small(23)
    gen = torch.Generator().manual_seed(0)
    kept = list(ds.batches(5, shuffle=True, generator=gen, drop_last=True))
    assert [len(b.indices) for b in kept] == [5, 5, 5, 5]
    assert len(set(torch.cat([b.indices for b in kept]).tolist())) == 20
    assert ds.num_batches(5, drop_last=True) == 4 and ds.num_batches(5, drop_last=False) == 5
    assert list(ds.batches(30, drop_last=True)) == []
    assert ds.num_batches(30, drop_last=True) == 0 and ds.num_batches(23, drop_last=True) == 1


def test_batches_reject_bad_arguments() -> None:
    ds = _small(10)
    with pytest.raises(ValueError, match="batch_size"):
        ds.batches(0)
    with pytest.raises(ValueError, match="batch_size"):
        ds.num_batches(0, drop_last=False)


def test_subset_and_to() -> None:
    ds = D.make_synthetic(num_classes=4, per_class=8, image_size=8)
    idx = torch.tensor([5, 0, 31, 5])
    sub = ds.subset(idx)
    assert len(sub) == 4 and sub.info == ds.info and sub.split == ds.split
    assert torch.equal(sub.images, ds.images[idx]) and sub.labels.tolist() == ds.labels[idx].tolist()
    with pytest.raises(ValueError, match="int64"):
        ds.subset(torch.tensor([0.0, 1.0]))
    moved = ds.to("cpu")
    assert moved.device == torch.device("cpu") and torch.equal(moved.images, ds.images)
    assert "synthetic" in repr(ds) and "32 images" in repr(ds)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_match_cpu() -> None:
    ds = _small(23)
    gpu = ds.to("cuda")
    assert gpu.device.type == "cuda" and gpu.labels.device.type == "cuda"
    cpu_batches = list(ds.batches(5, shuffle=True, generator=torch.Generator().manual_seed(3)))
    gpu_batches = list(gpu.batches(5, shuffle=True, generator=torch.Generator().manual_seed(3)))
    for a, b in zip(cpu_batches, gpu_batches, strict=True):
        assert b.images.device.type == "cuda" and b.indices.device.type == "cuda"
        assert torch.equal(a.images, b.images.cpu()) and torch.equal(a.indices, b.indices.cpu())
    with pytest.raises(ValueError, match="CPU"):
        gpu.batches(5, shuffle=True, generator=torch.Generator(device="cuda"))


def test_array_dataset_validates_its_tensors() -> None:
    info = D.make_synthetic().info
    with pytest.raises(ValueError, match="uint8"):
        D.ArrayDataset(torch.zeros(2, 1, 16, 16), torch.zeros(2, dtype=torch.int64), info, "train")
    with pytest.raises(ValueError, match="labels"):
        D.ArrayDataset(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64),
                       info, "train")


# ----------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_is_deterministic_and_seed_and_split_dependent() -> None:
    a, b = D.make_synthetic(seed=3), D.make_synthetic(seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, D.make_synthetic(seed=4).images)
    assert not torch.equal(a.images, D.make_synthetic(seed=3, split="test").images)
    assert a.images.shape == (256, 1, 16, 16) and a.info.name == "synthetic"
    assert torch.bincount(a.labels).tolist() == [64] * 4
    c = D.make_synthetic(num_classes=3, per_class=5, image_size=12, channels=3)
    assert c.images.shape == (15, 3, 12, 12) and c.info.channels == 3 and c.info.num_classes == 3
    x = c.images.double() / 255
    assert list(c.info.mean) == pytest.approx(x.mean(dim=(0, 2, 3)).tolist())
    with pytest.raises(ValueError):
        D.make_synthetic(channels=2)


def test_registered_synthetic_is_make_synthetic_with_train_statistics() -> None:
    train = D.load_dataset("synthetic", "train")
    test = D.load_dataset("synthetic", "test")
    assert torch.equal(train.images, D.make_synthetic().images)
    assert torch.equal(test.images, D.make_synthetic(split="test").images)
    assert train.info == test.info == D.dataset_info("synthetic")
    measured = D.make_synthetic().info
    assert train.info.mean[0] == pytest.approx(measured.mean[0], abs=1e-4)
    assert train.info.std[0] == pytest.approx(measured.std[0], abs=1e-4)
    assert (train.info.image_size, train.info.channels, train.info.num_classes) == (16, 1, 4)


@pytest.mark.parametrize("channels,num_classes", [(1, 4), (3, 10)])
def test_synthetic_classes_are_separable(channels: int, num_classes: int) -> None:
    train = D.make_synthetic(num_classes=num_classes, channels=channels, seed=0, split="train")
    test = D.make_synthetic(num_classes=num_classes, channels=channels, seed=0, split="test")
    xa, xb = train.images.flatten(1).float(), test.images.flatten(1).float()
    means = torch.stack([xa[train.labels == c].mean(0) for c in range(num_classes)])
    acc = (torch.cdist(xb, means).argmin(1) == test.labels).float().mean().item()
    assert acc > 0.8, acc  # chance is 1 / num_classes
    # ... and not trivially: a single image is noisy (pixels differ from the class mean).
    assert (xb[0] - means[test.labels[0]]).abs().mean() > 5


# ----------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_all_datasets_with_correct_info() -> None:
    assert set(ALL_NAMES) <= set(D.list_datasets())
    assert D.list_datasets() == sorted(D.list_datasets())
    expected = {
        "fashion-mnist-mini": (28, 1, 10),
        "fashion-mnist": (28, 1, 10),
        "cifar10": (32, 3, 10),
        "cifar100": (32, 3, 100),
        "stl10": (96, 3, 10),
        "imagefolder": (224, 3, 0),
    }
    for name, (size, channels, classes) in expected.items():
        info = D.dataset_info(name)
        assert (info.image_size, info.channels, info.num_classes) == (size, channels, classes)
        assert info.name == name and len(info.mean) == channels and info.source
    assert D.dataset_info("imagefolder").in_memory is False
    assert D.dataset_splits("stl10") == ("train", "test", "unlabeled", "train+unlabeled")


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        D.dataset_info("cifar-10")
    msg = str(err.value)
    assert "cifar-10" in msg and "Did you mean 'cifar10'" in msg
    assert all(name in msg for name in ALL_NAMES)
    with pytest.raises(UnknownNameError):
        D.load_dataset("imagenet-21k", "train")


def test_register_rejects_duplicates() -> None:
    info = D.make_synthetic().info
    with pytest.raises(ValueError, match="already registered"):
        D.register_dataset("cifar10", info=D.dataset_info("cifar10"), splits=("train",))(lambda *a, **k: None)
    with pytest.raises(ValueError, match="differs"):
        D.register_dataset("other", info=info, splits=("train",))


def test_bad_split_and_arguments() -> None:
    with pytest.raises(DatasetError, match="Valid splits: train, test"):
        D.load_dataset("fashion-mnist-mini", "val")
    with pytest.raises(ConfigError, match="num_workers"):
        D.load_dataset("fashion-mnist-mini", "train", num_workers=-1)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST (full) from idx files


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x803 if array.ndim == 3 else 0x801
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("layout,ext", [("", ".gz"), ("FashionMNIST/raw", ""), ("fashion-mnist", ".gz")])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None,
                                       layout: str, ext: str) -> None:
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    folder = tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    _write_idx(folder / f"t10k-images-idx3-ubyte{ext}", images)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", labels)
    ds = D.load_dataset("fashion-mnist", "test", data_dir=str(tmp_path))
    assert ds.images.shape == (6, 1, 28, 28) and ds.info.num_classes == 10
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert ds.labels.tolist() == [3, 1, 4, 1, 5, 9]


def test_fashion_mnist_missing_names_every_place_and_the_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    debian = tmp_path / "no-debian"
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", debian)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as err:
        D.load_dataset("fashion-mnist", "train", data_dir=str(empty))
    msg = str(err.value)
    for place in (empty, empty / "FashionMNIST" / "raw", debian):
        assert str(place.resolve()) in msg
    assert "--download" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "train-images-idx3-ubyte" in msg


def test_fashion_mnist_corrupt_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:20])  # truncated gzip stream
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        D.load_dataset("fashion-mnist", "train", data_dir=str(tmp_path))
    _write_idx(bad, np.zeros((3, 28, 28), dtype=np.uint8))  # valid idx, but 3 images for 4 labels
    with pytest.raises(DatasetError, match="do not hold one Fashion-MNIST split"):
        D.load_dataset("fashion-mnist", "train", data_dir=str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03junk"))
    with pytest.raises(DatasetError, match="not a valid idx file"):
        D.load_dataset("fashion-mnist", "train", data_dir=str(tmp_path))


@pytest.mark.skipif(not HAS_DEBIAN_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_full_from_debian(no_download: None) -> None:
    ds = D.load_dataset("fashion-mnist", "test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    train = D.load_dataset("fashion-mnist", "train")
    x = train.images.double() / 255
    assert x.mean().item() == pytest.approx(train.info.mean[0], abs=1e-4)
    assert x.std().item() == pytest.approx(train.info.std[0], abs=1e-4)


# ----------------------------------------------------------------------------------------------
# CIFAR and STL-10 (torchvision formats, faked on disk)


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("stl10", "stl10_binary")])
def test_missing_torchvision_dataset(tmp_path: Path, no_download: None, name: str, folder: str) -> None:
    with pytest.raises(DatasetError) as err:
        D.load_dataset(name, "train", data_dir=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path.resolve() / folder) in msg
    assert "--download" in msg and "--data-dir" in msg and name in msg


def test_cifar_corrupt_file_is_named(tmp_path: Path, no_download: None) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as err:
        D.load_dataset("cifar10", "train", data_dir=str(folder))  # the folder itself works too
    assert str(folder / "data_batch_1") in str(err.value)


def test_cifar10_layout_is_nchw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None) -> None:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    # CIFAR rows: 1024 red values, then green, then blue, each row-major (the format's spec).
    rows = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rows, "labels": [7, 0, 9]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    ds = D.load_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert ds.images.shape == (3, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images.numpy(), rows.reshape(3, 3, 32, 32))
    assert ds.labels.tolist() == [7, 0, 9]


def test_cifar_download_failure_is_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DatasetError, match="Downloading dataset 'cifar100'"):
        D.load_dataset("cifar100", "train", data_dir=str(tmp_path), download=True)


def test_stl10_matches_torchvision_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         no_download: None) -> None:
    import torchvision
    import torchvision.datasets.stl10 as tv_stl

    monkeypatch.setattr(tv_stl, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setitem(D._STL_FILES, "train", ("train_X.bin", "train_y.bin", 3))
    monkeypatch.setitem(D._STL_FILES, "unlabeled", ("unlabeled_X.bin", None, 2))
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 256, 3 * 27648, dtype=np.uint8).tofile(folder / "train_X.bin")
    np.array([1, 10, 4], dtype=np.uint8).tofile(folder / "train_y.bin")
    rng.integers(0, 256, 2 * 27648, dtype=np.uint8).tofile(folder / "unlabeled_X.bin")
    ref = torchvision.datasets.STL10(str(tmp_path), split="train+unlabeled")
    ds = D.load_dataset("stl10", "train+unlabeled", data_dir=str(tmp_path))
    assert ds.images.shape == (5, 3, 96, 96)
    assert np.array_equal(ds.images.numpy(), ref.data)
    assert ds.labels.tolist() == [0, 9, 3, -1, -1] == ref.labels.tolist()
    (folder / "train_y.bin").write_bytes(b"\x01\x02")
    with pytest.raises(DatasetError, match="train_y.bin"):
        D.load_dataset("stl10", "train", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------------
# ImageFolder

COLOURS = {"cat": (250, 10, 10), "dog": (10, 10, 250)}


def _make_folder(root: Path, splits: tuple[str, ...] = ("train", "val")) -> None:
    sizes = [(40, 24), (24, 50), (33, 33)]  # (width, height), non-square
    for split in splits:
        for cls, colour in COLOURS.items():
            (root / split / cls).mkdir(parents=True)
            for i, size in enumerate(sizes):
                Image.new("RGB", size, colour).save(root / split / cls / f"{i}.png")
    # A grey image and a non-image file that must be ignored.
    Image.new("L", (30, 20), 128).save(root / "train" / "dog" / "grey.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")


def test_imagefolder_loads_and_batches(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), image_size=16, num_workers=0)
    assert isinstance(ds, D.FolderDataset)
    assert len(ds) == 7 and ds.classes == ("cat", "dog")
    assert ds.info.num_classes == 2 and ds.info.image_size == 16 and ds.info.channels == 3
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1] and ds.device == torch.device("cpu")
    assert ds.num_batches(3, drop_last=False) == 3
    batches = list(ds.batches(3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [b.images.shape for b in batches] == [(3, 3, 16, 16)] * 2 + [(1, 3, 16, 16)]
    assert sorted(torch.cat([b.indices for b in batches]).tolist()) == list(range(7))
    for b in batches:
        assert b.images.dtype == torch.uint8 and b.labels.dtype == torch.int64
        assert torch.equal(b.labels, ds.labels[b.indices])
        for image, index in zip(b.images, b.indices.tolist(), strict=True):
            path = ds.samples[index][0]
            centre = image[:, 8, 8].tolist()
            if path.endswith("grey.png"):
                assert centre == [128, 128, 128]
            else:
                expected = COLOURS["cat" if "/cat/" in path else "dog"]
                assert all(abs(a - e) <= 2 for a, e in zip(centre, expected, strict=True))
    same = list(ds.batches(3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [b.indices.tolist() for b in same] == [b.indices.tolist() for b in batches]
    assert [len(b.indices) for b in ds.batches(3, drop_last=True)] == [3, 3]


def test_decode_image_centre_crops_the_shorter_side(tmp_path: Path) -> None:
    ramp = np.arange(48, dtype=np.uint8) * 5  # value = 5 * position along the long side
    wide = np.zeros((16, 48, 3), dtype=np.uint8)
    wide[:, :, 0] = ramp[None, :]
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")
    out = D.decode_image(str(tmp_path / "wide.png"), 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    assert out[0, 0].tolist() == (ramp[16:32]).tolist()  # the middle 16 of 48 columns
    tall = D.decode_image(str(tmp_path / "tall.png"), 16)
    assert tall[0, :, 0].tolist() == (ramp[16:32]).tolist()
    small = D.decode_image(str(tmp_path / "wide.png"), 32)  # upscaled: shorter side 16 -> 32
    assert small.shape == (3, 32, 32)
    assert abs(int(small[0, 0, 16]) - 5 * 24) <= 6  # centre column stays the centre


def test_imagefolder_test_falls_back_to_val_and_infers_the_size(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    ds = D.load_dataset("imagefolder", "test", data_dir=str(tmp_path), num_workers=0)
    # shorter sides 24, 24, 33 per class: the median 24 (tests/test_image_folders.py has the rule)
    assert len(ds) == 6 and ds.info.image_size == 24 and ds.info.source == str(tmp_path.resolve() / "val")
    (batch,) = list(ds.batches(8))
    assert batch.images.shape == (6, 3, 24, 24)


def test_imagefolder_with_worker_processes(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), image_size=8, num_workers=1)
    for epoch in range(2):  # the second epoch reuses the persistent worker
        gen = torch.Generator().manual_seed(epoch)
        seen = torch.cat([b.indices for b in ds.batches(4, shuffle=True, generator=gen)])
        assert seen.tolist() == torch.randperm(7, generator=torch.Generator().manual_seed(epoch)).tolist()


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="--data-dir"):
        D.load_dataset("imagefolder", "train")
    with pytest.raises(DatasetError) as err:
        D.load_dataset("imagefolder", "train", data_dir=str(tmp_path))
    assert str(tmp_path.resolve() / "train") in str(err.value)
    _make_folder(tmp_path, splits=("train",))
    with pytest.raises(DatasetError) as err:
        D.load_dataset("imagefolder", "test", data_dir=str(tmp_path))
    for looked in ("test", "val"):
        assert str(tmp_path.resolve() / looked) in str(err.value)
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(DatasetError, match="bird"):
        D.load_dataset("imagefolder", "train", data_dir=str(tmp_path))


def test_imagefolder_corrupt_image_is_named(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    bad = tmp_path / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetError) as err:  # strict: named at the scan (skipped otherwise)
        ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), image_size=8, num_workers=0,
                            strict=True)
        list(ds.batches(16))
    assert str(bad.resolve()) in str(err.value)


def test_imagefolder_val_classes_use_train_mapping(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    for f in (tmp_path / "val" / "cat").iterdir():
        f.unlink()
    (tmp_path / "val" / "cat").rmdir()
    ds = D.load_dataset("imagefolder", "val", data_dir=str(tmp_path), num_workers=0)
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [1, 1, 1]


@pytest.mark.slow
def test_synthetic_cifar_has_cifar_shapes_and_its_declared_statistics() -> None:
    train = D.load_dataset("synthetic-cifar", "train")
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert len(D.load_dataset("synthetic-cifar", "test")) == 10_000
    measured = D.make_synthetic(10, 5000, 32, 3, seed=0, split="train").info
    assert measured.mean == pytest.approx(train.info.mean, abs=1e-4)
    assert measured.std == pytest.approx(train.info.std, abs=1e-4)
    again = D.load_dataset("synthetic-cifar", "train")
    assert torch.equal(again.images[:64], train.images[:64])  # deterministic
