"""Image folders as users have them: full-frame training crops, inferred image sizes, unlabelled
folders, split discovery, corrupt files, the decoded cache (benchmark/datasets.py, folder part),
the new data.* keys, and bench_decode. Every tree is generated with PIL in tmp_path."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.benchmark import datasets as D
from sslbench.benchmark.augment import AugmentRecipe, BatchAugment, ViewSpec, _crop_boxes
from sslbench.benchmark.errors import ConfigError, DatasetError

GREEN, GREY = (0, 200, 0), (128, 128, 128)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test caches into its own folder, never into ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SSLBENCH_CACHE", str(cache))
    return cache / "imagefolder"


def _noise(size: tuple[int, int], seed: int, tint: int = 0) -> Image.Image:
    """A smooth random RGB image of (width, height) ``size``; ``tint`` raises one channel."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 120, (h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    base[..., tint % 3] += 120
    return Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)


def _tree(root: Path, layout: dict[str, int], size: tuple[int, int] = (32, 32), classes: int = 2) -> None:
    """``root/<split>/class<c>/<i>.jpg``: ``layout[split]`` images per class."""
    for split, n in layout.items():
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                _noise(size, 1000 * c + i, tint=c).save(folder / f"{i}.jpg", quality=92)


def _bordered(path: Path, size: tuple[int, int] = (200, 100), border: int = 8) -> None:
    """A grey photo with a green border ``border`` px wide."""
    w, h = size
    a = np.full((h, w, 3), GREY, dtype=np.uint8)
    a[:border], a[-border:], a[:, :border], a[:, -border:] = GREEN, GREEN, GREEN, GREEN
    Image.fromarray(a).save(path, quality=95)


def _is_green(pixels: torch.Tensor) -> torch.Tensor:
    """Which pixels of a (3, ...) uint8 tensor are the border's green."""
    r, g, b = pixels.int().unbind(0)
    return (g > 150) & (r < 80) & (b < 80)


# ----------------------------------------------------------------------------------------------
# The full frame reaches the augmentation


def test_full_frame_keeps_the_whole_image_and_centre_does_not(tmp_path: Path) -> None:
    _bordered(tmp_path / "wide.jpg")
    canvas, size = D.decode_full_frame(str(tmp_path / "wide.jpg"), 64)
    assert canvas.shape == (3, 64, 64) and canvas.dtype == torch.uint8 and size == (200, 100)
    for edge in (canvas[:, :, 0], canvas[:, :, -1], canvas[:, 0, :], canvas[:, -1, :]):
        assert bool(_is_green(edge).all())  # all four borders survive
    assert not bool(_is_green(canvas[:, 32, 16:48]).any())
    centre = D.decode_image(str(tmp_path / "wide.jpg"), 64)  # evaluation: the middle square
    assert not bool(_is_green(centre[:, 16:48, 0]).any()) and not bool(_is_green(centre[:, 16:48, -1]).any())


def _crop_only(scale: tuple[float, float]) -> BatchAugment:
    view = ViewSpec(crop_scale=scale, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    return BatchAugment(AugmentRecipe("crop-only", (view,), "test"), (0.5,) * 3, (0.25,) * 3, 32)


def test_random_resized_crop_reaches_the_border_only_on_the_full_frame(tmp_path: Path) -> None:
    """A 0.08-1 crop of the full photo reaches its left and right borders; crops of the old
    centre square never can (the resize + centre crop cut them away)."""
    folder = tmp_path / "data" / "train" / "only"
    folder.mkdir(parents=True)
    _bordered(folder / "wide.jpg")
    reached = {}
    for frame in D.FRAMES:
        ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path / "data"), image_size=32,
                            num_workers=0, frame=frame, load_size=64)
        (batch,) = list(ds.batches(1))
        images = batch.images.expand(400, -1, -1, -1).contiguous()
        indices = batch.indices.expand(400)
        sampler = D.full_frame_sampler(ds, indices)
        assert (sampler is None) == (frame == "centre")
        gen = torch.Generator().manual_seed(0)
        (views,), params = _crop_only((0.08, 1.0))(images, gen, sampler, return_params=True)
        left = views[:, :, 8:24, 0] * 0.25 + 0.5  # back to [0, 1]; the middle of the left column
        green = (left[:, 1] > 0.6) & (left[:, 0] < 0.3)
        reached[frame] = float(green.all(dim=1).float().mean())
        if frame == "full":
            boxes = params[0].boxes  # canvas pixels; canvas 64 x 64 holds the 200 x 100 photo
            area = boxes[:, 2] * boxes[:, 3] / 64**2  # = the fraction of the ORIGINAL photo
            assert float(area.min()) >= 0.08 - 1e-6 and float(area.max()) <= 1.0 + 1e-6
            aspect = (boxes[:, 3] * 200 / 64) / (boxes[:, 2] * 100 / 64)  # in original pixels
            assert float(aspect.min()) >= 3 / 4 - 1e-4 and float(aspect.max()) <= 4 / 3 + 1e-4
    assert reached["full"] > 0.05 and reached["centre"] == 0.0


def test_full_frame_sampler_is_random_resized_crop_on_the_original_frame() -> None:
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(4000, 22, generator=gen)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    # a = canvas aspect: exactly the augmentation's own RandomResizedCrop from the same draws
    for h, w in ((32, 32), (32, 48)):
        ours = D.FullFrameCropSampler(torch.full((4000,), w / h))(u, h, w, scale, ratio, gen)
        assert torch.allclose(ours, _crop_boxes(u, h, w, scale, ratio), atol=1e-4)
    # a 2:1 photo on a square canvas equals RandomResizedCrop on a 2:1 image, x scaled by 1/2
    ours = D.FullFrameCropSampler(torch.full((4000,), 2.0))(u, 32, 32, scale, ratio, gen)
    ref = _crop_boxes(u, 32, 64, scale, ratio)
    assert torch.allclose(ours[:, [0, 2]], ref[:, [0, 2]], atol=1e-4)
    assert torch.allclose(ours[:, [1, 3]] * 2, ref[:, [1, 3]], atol=1e-4)
    # what the sampler corrects: without it, crops of squashed 2:1 canvases are 2x too wide
    plain = _crop_boxes(u, 32, 32, scale, ratio)
    log_aspect = torch.log(plain[:, 3] * 2 / plain[:, 2])
    assert abs(float(log_aspect.mean()) - math.log(2)) < 0.02
    corrected = torch.log(ours[:, 3] * 2 / ours[:, 2])
    assert float(corrected.max()) <= math.log(4 / 3) + 1e-4 and float(corrected.min()) >= math.log(3 / 4) - 1e-4
    with pytest.raises(ValueError):
        D.FullFrameCropSampler(torch.tensor([1.0, -2.0]))
    assert D.full_frame_sampler(D.make_synthetic(), torch.arange(4)) is None


def test_folder_dataset_records_aspects_and_needs_decoded_indices(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": 2}, size=(48, 24))
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0, frame="full")
    assert isinstance(ds, D.FolderDataset) and ds.info.image_size == 24 and ds.side == 24
    with pytest.raises(ValueError, match="decoded"):
        ds.crop_sampler(torch.arange(2))
    (batch,) = list(ds.batches(4))
    assert batch.images.shape == (4, 3, 24, 24)
    sampler = ds.crop_sampler(batch.indices)
    assert isinstance(sampler, D.FullFrameCropSampler) and torch.allclose(sampler.aspect, torch.full((4,), 2.0))
    assert "full frame" in repr(ds)


# ----------------------------------------------------------------------------------------------
# Image size inference


def test_infer_image_size_rules() -> None:
    assert D.infer_image_size([32] * 64) == (32, D.infer_image_size([32] * 64)[1])
    assert D.infer_image_size([375, 333, 500, 281])[0] == 224  # photos: the default
    assert D.infer_image_size([60, 64, 66, 64, 70])[0] == 64  # median 64, a multiple of 8
    assert D.infer_image_size([90, 95, 100])[0] == 96
    assert D.infer_image_size([])[0] == 224
    with pytest.raises(DatasetError, match="data.image_size"):
        D.infer_image_size([20] * 10 + [40] * 10 + [150] * 10)
    assert D.auto_load_size(224, [375, 400]) == 256
    assert D.auto_load_size(32, [32]) == 32  # small images are not upsampled
    assert D.auto_load_size(224, [240]) == 240 and D.auto_load_size(224, [100]) == 224
    assert D.auto_load_size(96, []) == 110


def test_cifar_sized_folder_trains_at_its_own_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path, {"train": 3, "val": 2})
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0)
    assert ds.info.image_size == 32
    assert "image_size 32 for split 'train' (the images' shorter side" in capsys.readouterr().err
    D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0, image_size=224)
    assert "upsamples images whose median shorter side is 32 px" in capsys.readouterr().err


def test_infer_folder_image_size_without_loading(tmp_path: Path) -> None:
    _tree(tmp_path / "small", {"train": 2, "val": 1}, size=(96, 96))
    assert D.infer_folder_image_size(tmp_path / "small")[0] == 96
    with pytest.raises(DatasetError, match="not found"):
        D.infer_folder_image_size(tmp_path / "nothing")


def test_photo_folder_gets_224_and_mixed_small_sizes_need_a_size(tmp_path: Path) -> None:
    _tree(tmp_path / "photos", {"train": 2}, size=(300, 250))
    assert D.load_dataset("imagefolder", "train", data_dir=str(tmp_path / "photos")).info.image_size == 224
    mixed = tmp_path / "mixed" / "train" / "a"
    mixed.mkdir(parents=True)
    for i, side in enumerate([20, 20, 20, 40, 80, 150, 150, 150]):
        _noise((side, side), i).save(mixed / f"{i}.jpg")
    with pytest.raises(DatasetError, match="vary widely"):
        D.load_dataset("imagefolder", "train", data_dir=str(tmp_path / "mixed"))
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path / "mixed"), image_size=64, num_workers=0)
    assert next(iter(ds.batches(8))).images.shape == (8, 3, 64, 64)


def test_load_size_smaller_than_the_image_size_is_an_error(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": 1})
    with pytest.raises(ConfigError, match="load_size"):
        D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), image_size=32, load_size=16, frame="full")
    with pytest.raises(ConfigError):
        D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), cache="sometimes")


# ----------------------------------------------------------------------------------------------
# Unlabelled folders and split discovery


def _flat(folder: Path, n: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _noise((32, 32), i).save(folder / f"{i}.jpg")


def test_unlabelled_folder_in_the_root_pretrains_with_labels_minus_one(tmp_path: Path) -> None:
    _flat(tmp_path)
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0)
    assert len(ds) == 5 and ds.labels.tolist() == [-1] * 5 and ds.classes == () and ds.info.num_classes == 0
    assert ds.info.source == str(tmp_path.resolve())
    (batch,) = list(ds.batches(8))
    assert batch.labels.tolist() == [-1] * 5
    with pytest.raises(DatasetError, match="test"):
        D.load_dataset("imagefolder", "test", data_dir=str(tmp_path))


def test_unlabelled_train_split_beside_a_labelled_val(tmp_path: Path) -> None:
    _flat(tmp_path / "train")
    _tree(tmp_path, {"val": 2})
    train = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0)
    test = D.load_dataset("imagefolder", "test", data_dir=str(tmp_path), num_workers=0)  # falls back to val
    assert train.labels.tolist() == [-1] * 5
    assert test.classes == ("class0", "class1") and test.labels.tolist() == [0, 0, 1, 1]


def test_protocols_refuse_unlabelled_folders(tmp_path: Path) -> None:
    """An unlabelled split is refused by the protocols with one clear error naming why."""
    from sslbench.protocols.run import evaluate
    from sslbench.protocols.spec import get_protocol

    _flat(tmp_path / "train")
    _tree(tmp_path, {"val": 2})
    train = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0)
    test = D.load_dataset("imagefolder", "test", data_dir=str(tmp_path), num_workers=0)
    encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(ConfigError, match="unlabelled") as err:
        evaluate(encoder, train, test, [get_protocol("knn-k20-t0.07")], progress=False)
    assert "-1" in str(err.value)


def test_split_discovery(tmp_path: Path) -> None:
    _tree(tmp_path / "tv", {"train": 1, "val": 1, "test": 2})
    root = tmp_path / "tv"
    sources = {s: D.load_dataset("imagefolder", s, data_dir=str(root)).info.source for s in D.dataset_splits("imagefolder")}
    assert sources == {s: str(root.resolve() / s) for s in ("train", "val", "test")}
    assert len(D.load_dataset("imagefolder", "test", data_dir=str(root))) == 4  # its own test/, not val/
    # an ImageFolder root (root/<class>/*.jpg, no split folders) is the training split
    _tree(tmp_path / "plain", {"x": 1})
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path / "plain" / "x"))
    assert ds.classes == ("class0", "class1") and ds.labels.tolist() == [0, 1]
    # val has no fallback
    _tree(tmp_path / "only", {"train": 1})
    with pytest.raises(DatasetError, match="val"):
        D.load_dataset("imagefolder", "val", data_dir=str(tmp_path / "only"))


def test_mixed_sizes_and_formats_batch_to_one_size(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    _noise((300, 200), 0).save(folder / "wide.jpg")
    _noise((120, 260), 1).save(folder / "tall.png")
    Image.new("L", (90, 90), 77).save(folder / "grey.bmp")
    Image.new("CMYK", (100, 80), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    _noise((900, 700), 2).save(folder / "large.jpg")  # decoded at a reduced DCT scale
    for frame in D.FRAMES:
        ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), image_size=64, num_workers=0,
                            frame=frame, load_size=72)
        (batch,) = list(ds.batches(8))
        side = 72 if frame == "full" else 64
        assert batch.images.shape == (5, 3, side, side) and not ds.unreadable
        names = [Path(p).name for p, _ in ds.samples]
        grey = batch.images[names.index("grey.bmp")]
        assert grey.min() == grey.max() == 77
        red = batch.images[names.index("cmyk.jpg"), :, side // 2, side // 2].tolist()
        assert red[0] > 200 and red[1] < 60 and red[2] < 60
        if frame == "full":
            assert ds.frame_aspect[names.index("large.jpg")] == pytest.approx(900 / 700)


# ----------------------------------------------------------------------------------------------
# Corrupt and non-image files


def test_corrupt_and_non_image_files_are_skipped_with_a_count(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path, {"train": 3})
    cls = tmp_path / "train" / "class0"
    (cls / "page.jpg").write_text("<html>not found</html>")
    (cls / "empty.png").write_bytes(b"")
    (cls / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "loose.jpg").write_bytes((cls / "0.jpg").read_bytes())  # beside class folders
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0)
    assert len(ds) == 6
    err = capsys.readouterr().err
    assert "skipped 2 corrupt or non-image file(s)" in err and "data.strict=true" in err
    assert "ignored 2 file(s)" in err and ("notes.txt" in err or "loose.jpg" in err)
    with pytest.raises(DatasetError, match="2 file") as e:
        D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), strict=True)
    assert "page.jpg" in str(e.value) or "empty.png" in str(e.value)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_file_that_fails_to_decode_is_replaced_never_a_crash(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], num_workers: int) -> None:
    _tree(tmp_path, {"train": 3})
    good = (tmp_path / "train" / "class1" / "0.jpg").read_bytes()
    bad = tmp_path / "train" / "class0" / "2.jpg"  # a JPEG header, then a cut
    bad.write_bytes(good[: len(good) // 3])
    (tmp_path / "train" / "class0" / "3.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=num_workers)
    assert len(ds) == 7  # both pass the header check
    for _ in range(2):
        batches = list(ds.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
        assert sorted(torch.cat([b.indices for b in batches]).tolist()) == list(range(7))
    assert {Path(ds.samples[i][0]).name for i in ds.unreadable} == {"2.jpg", "3.jpg"}
    err = capsys.readouterr().err
    assert err.count("failed to decode") == 1 and "2 image file(s)" in err  # once, not every epoch
    # the replacement is the next readable image, with its label
    (batch,) = list(ds.batches(8))
    i2, i3 = (ds.samples.index((str(p), 0)) for p in (bad.resolve(), bad.resolve().with_name("3.jpg")))
    assert torch.equal(batch.images[i2], batch.images[i3 + 1]) and batch.labels[i2] == batch.labels[i3 + 1] == 1
    strict = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=num_workers, strict=True)
    with pytest.raises(DatasetError, match="Cannot read image file") as e:
        list(strict.batches(8))
    assert "2.jpg" in str(e.value) or "3.jpg" in str(e.value)


# ----------------------------------------------------------------------------------------------
# The decoded cache


def test_cache_holds_the_same_pixels_in_memory(tmp_path: Path, _cache_in_tmp: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "data", {"train": 4})
    data = str(tmp_path / "data")
    plain = D.load_dataset("imagefolder", "train", data_dir=data, num_workers=0, frame="full")
    assert isinstance(plain, D.FolderDataset)
    (ref,) = list(plain.batches(8))
    cached = D.load_dataset("imagefolder", "train", data_dir=data, num_workers=0, frame="full", cache="on")
    assert isinstance(cached, D.FolderArrays) and isinstance(cached, D.ArrayDataset)
    assert torch.equal(cached.images, ref.images) and torch.equal(cached.labels, ref.labels)
    assert cached.classes == plain.classes and cached.info == plain.info and cached.frame == "full"
    (file,) = _cache_in_tmp.iterdir()
    assert file.suffix == ".npz" and cached.cache_file == str(file) and "decoding 8 images" in capsys.readouterr().err
    with np.load(file, allow_pickle=False) as z:  # plain data: loads without pickle
        assert set(z.files) == {"images", "labels", "aspect", "replaced"}
    again = D.load_dataset("imagefolder", "train", data_dir=data, num_workers=0, frame="full", cache="auto")
    assert torch.equal(again.images, cached.images) and "decoding" not in capsys.readouterr().err
    # the crop sampler, .to and .subset keep the aspects
    sampler = D.full_frame_sampler(again, torch.tensor([0, 3]))
    assert isinstance(sampler, D.FullFrameCropSampler) and sampler.aspect.tolist() == [1.0, 1.0]
    part = again.to("cpu").subset(torch.tensor([1, 2]))
    assert isinstance(part, D.FolderArrays) and part.frame_aspect is not None and len(part.frame_aspect) == 2
    # a touched file, another frame or another size is another cache file
    os.utime(plain.samples[0][0], ns=(1, 1))
    D.load_dataset("imagefolder", "train", data_dir=data, num_workers=0, frame="full", cache="on")
    D.load_dataset("imagefolder", "train", data_dir=data, num_workers=0, cache="on")
    D.load_dataset("imagefolder", "train", data_dir=data, num_workers=0, cache="on", image_size=16)
    assert len(list(_cache_in_tmp.iterdir())) == 4


def test_cache_auto_limit_unreadable_cache_and_unwritable_folder(
        tmp_path: Path, _cache_in_tmp: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "data", {"train": 2})
    data = str(tmp_path / "data")
    monkeypatch.setattr(D, "CACHE_LIMIT_BYTES", 3 * 32 * 32 * 3)  # three images
    assert isinstance(D.load_dataset("imagefolder", "train", data_dir=data, cache="auto"), D.FolderDataset)
    assert "exceeds the 0 GiB cache limit" in capsys.readouterr().err
    assert not _cache_in_tmp.exists()
    first = D.load_dataset("imagefolder", "train", data_dir=data, cache="on", num_workers=0)
    (file,) = _cache_in_tmp.iterdir()
    file.write_bytes(b"PK garbage")
    again = D.load_dataset("imagefolder", "train", data_dir=data, cache="on", num_workers=0)
    assert torch.equal(again.images, first.images) and "unreadable" in capsys.readouterr().err
    file.unlink()

    def refuse(path: object, write: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr("sslbench.benchmark.files.atomic_write", refuse)
    held = D.load_dataset("imagefolder", "train", data_dir=data, cache="on", num_workers=0)
    assert torch.equal(held.images, first.images) and "could not write" in capsys.readouterr().err
    assert not file.exists()


def test_cache_keeps_replacements_and_strict_refuses_them(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": 2})
    (tmp_path / "train" / "class0" / "bad.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    ds = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0)
    (ref,) = list(ds.batches(8))
    cached = D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0, cache="on")
    assert torch.equal(cached.images, ref.images) and torch.equal(cached.labels, ref.labels)
    with pytest.raises(DatasetError, match="bad.jpg"):
        D.load_dataset("imagefolder", "train", data_dir=str(tmp_path), num_workers=0, cache="on", strict=True)


# ----------------------------------------------------------------------------------------------
# data.* keys


def test_new_data_keys_keep_existing_config_hashes() -> None:
    from sslbench.benchmark.config import config_from_dict
    from sslbench.benchmark.recipes import resolve

    # computed before data.cache / data.strict / data.load_size existed
    assert resolve("simclr-quick", []).hash() == "65b90f57cc5e3fed"
    assert resolve("mocov2-imagenet", []).hash() == "1bb26cddcf7382ba"
    cfg = resolve("simclr-quick", [])
    assert set(cfg.to_dict()["data"]) == {"dataset", "data_dir", "download", "batch_size", "image_size", "num_workers"}
    speed = resolve("simclr-quick", ["data.cache=off", "data.strict=true"])
    assert speed.hash() == cfg.hash() and speed.to_dict()["data"]["cache"] == "off"
    assert config_from_dict(json.loads(json.dumps(speed.to_dict()))) == speed
    sized = resolve("simclr-quick", ["data.load_size=64"])
    assert sized.hash() != cfg.hash() and sized.data.load_size == 64


@pytest.mark.parametrize("override", ["data.cache=sometimes", "data.strict=maybe", "data.load_size=4",
                                      "data.image_size=64"])
def test_new_data_keys_are_validated(override: str) -> None:
    from sslbench.benchmark.recipes import resolve

    with pytest.raises(ConfigError):
        resolve("simclr-quick", [override, "data.load_size=32"] if override.startswith("data.image") else [override])


# ----------------------------------------------------------------------------------------------
# bench_decode


def test_bench_decode_small_prints_ratios_and_writes_json(tmp_path: Path) -> None:
    from sslbench.benchmark import bench_decode

    lines: list[str] = []
    out = tmp_path / "bench.json"
    report = bench_decode.main(["--small", "--json", str(out), "--work-dir", str(tmp_path / "w")], echo=lines.append)
    text = "\n".join(lines)
    assert "x in-memory" in text and "x torchvision" in text
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"in-memory", "folder cached", "folder uncached", "photo folder (ours)",
                         "torchvision ImageFolder", "photo loader only (ours)", "torchvision ImageFolder loader only"}
    assert all(r["images_per_s"] > 0 for r in rows.values())
    assert report["ratios"]["cached_vs_memory"] > 0 and report["same_pixels"] is True
    assert json.loads(out.read_text())["environment"]["device"] == "cpu"
