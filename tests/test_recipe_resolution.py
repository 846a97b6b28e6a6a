"""Which recipe `--method M --dataset D` runs (`recipe_for`), the CIFAR-100 / ImageNet-100 recipes
against the anchors' published numbers, and the CLI line that says which recipe runs and why."""

import pickle
import re

import numpy as np
import pytest

from sslbench.benchmark.cli import main
from sslbench.benchmark.errors import UnknownNameError
from sslbench.benchmark.recipes import get_recipe, list_recipes, quick_recipe_note, recipe_for, resolve
from sslbench.benchmark.recipes.resolution import QUICK_DATASETS
from sslbench.methods import get_method, list_methods
from sslbench.results.reference import load_reference

DATASETS = ("fashion-mnist-mini", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic")

#: The foundation's methods, where the README's one-GPU section sends users.
FOUNDATION = {
    ("simclr", "fashion-mnist-mini"): "simclr-quick", ("simclr", "cifar10"): "simclr-cifar10",
    ("simclr", "cifar100"): "simclr-cifar100", ("simclr", "stl10"): "simclr-imagenet100",
    ("simclr", "imagefolder"): "simclr-imagenet100", ("simclr", "synthetic"): "simclr-quick",
    ("mocov2", "fashion-mnist-mini"): "mocov2-quick", ("mocov2", "cifar10"): "mocov2-cifar10",
    ("mocov2", "cifar100"): "mocov2-cifar100", ("mocov2", "stl10"): "mocov2-imagenet100",
    ("mocov2", "imagefolder"): "mocov2-imagenet100", ("mocov2", "synthetic"): "mocov2-quick",
    ("byol", "fashion-mnist-mini"): "byol-quick", ("byol", "cifar10"): "byol-cifar10",
    ("byol", "cifar100"): "byol-cifar100", ("byol", "stl10"): "byol-imagenet100",
    ("byol", "imagefolder"): "byol-imagenet100", ("byol", "synthetic"): "byol-quick",
}


@pytest.mark.parametrize("method", list_methods())
def test_every_method_on_every_dataset_resolves_to_a_recipe_that_loads(method):
    for dataset in DATASETS:
        choice = recipe_for(method, dataset)
        assert choice.recipe in list_recipes(), (method, dataset)
        assert choice.reason.startswith(f"--method {method} --dataset {dataset}"), choice.reason
        cfg = resolve(choice.recipe, list(choice.overrides))
        assert (cfg.method, cfg.data.dataset, cfg.recipe) == (method, dataset, choice.recipe)
        made_for = get_recipe(choice.recipe).config.data.dataset
        if choice.recipe.endswith("-quick"):  # only on CPU-sized data, and said when not its own
            assert dataset in QUICK_DATASETS, (method, dataset, choice)
            assert (made_for == dataset) == (choice.note is None or "sized for" not in choice.note), choice
        else:
            assert choice.recipe.removeprefix(f"{method}-") in {"cifar10", "cifar100", "stl10", "imagenet",
                                                                "imagenet100"}, choice
        if get_method(method).needs_color and dataset in ("fashion-mnist-mini", "synthetic"):
            assert choice.note and "grayscale" in choice.note


def test_the_foundation_methods_resolution_table():
    got = {(m, d): recipe_for(m, d).recipe for m, d in FOUNDATION}
    assert got == FOUNDATION
    assert recipe_for("simclr", "cifar100").reason == "--method simclr --dataset cifar100"


def test_an_image_folder_is_imagenet_1k_only_with_1000_classes():
    assert recipe_for("simclr", "imagefolder", num_classes=1000).recipe == "simclr-imagenet"
    choice = recipe_for("simclr", "imagefolder", num_classes=100)
    assert choice.recipe == "simclr-imagenet100" and "--recipe simclr-imagenet" in choice.reason
    assert choice.overrides == ()
    # no ImageNet-100 recipe: the ImageNet-1k one, said so
    choice = recipe_for("cmc", "imagefolder", num_classes=100)
    assert choice.recipe == "cmc-imagenet" and "no cmc-imagenet100 recipe" in choice.reason


def test_without_a_recipe_of_its_own_the_closest_image_size_is_adapted():
    # STL-10 (96 px): the 224 px folder recipe, trained at STL-10's own size
    choice = recipe_for("simclr", "stl10")
    assert choice.recipe == "simclr-imagenet100" and "data.image_size=none" in choice.overrides
    assert resolve(choice.recipe, list(choice.overrides)).data.image_size is None
    # small images: the method's CIFAR-10 recipe on CIFAR-100
    assert recipe_for("mocov1", "cifar100").recipe == "mocov1-cifar10"
    # a folder with a recipe made for in-memory images: decoded at that recipe's size
    for method, recipe, size in (("exemplar", "exemplar-stl10", 96), ("invaspread", "invaspread-cifar10", 32)):
        choice = recipe_for(method, "imagefolder")
        assert choice.recipe == recipe and f"data.image_size={size}" in choice.overrides, choice
    # a method-specific input size is kept (context prediction's 448 px pairs of patches)
    choice = recipe_for("context", "cifar10")
    assert choice.recipe == "context-imagenet" and resolve(choice.recipe, list(choice.overrides)).data.image_size == 448


def test_no_dataset_is_the_default_recipe_and_unknown_names_are_errors():
    choice = recipe_for("byol")
    assert choice.recipe == "byol-quick" and "default recipe" in choice.reason
    with pytest.raises(UnknownNameError, match="Unknown dataset 'imagenet21k'"):
        recipe_for("simclr", "imagenet21k")
    with pytest.raises(UnknownNameError, match="Unknown method"):
        recipe_for("simclrr", "cifar10")


def test_quick_recipe_note():
    note = quick_recipe_note("simclr-quick", "cifar10", instead="simclr-cifar10")
    assert note and "fashion-mnist-mini" in note and "simclr-cifar10" in note
    assert quick_recipe_note("simclr-quick", "fashion-mnist-mini") is None
    assert quick_recipe_note("simclr-cifar10", "cifar100") is None


NEW = [n for n in list_recipes() if n.endswith(("-cifar100", "-imagenet100"))]


@pytest.mark.parametrize("name", NEW)
def test_cifar100_and_imagenet100_recipes_quote_the_anchors_numbers(name):
    """Every number a new recipe's description quotes is a solo-learn row of results/reference for
    that method and dataset, and its sources name solo-learn's config file."""
    recipe = get_recipe(name)
    dataset = name.rsplit("-", 1)[1]
    reference = load_reference()
    rows = reference[(reference.reported_by == "solo-learn") & (reference.method == recipe.config.method)
                     & (reference.dataset == dataset) & (reference.metric == "top1")]
    numbers = [float(x) for x in re.findall(r"\d+\.\d\d", recipe.description)]
    assert numbers, recipe.description
    for value in numbers:
        assert np.isclose(rows.value, value).any(), (name, value, rows.value.tolist())
    folder = "cifar" if dataset == "cifar100" else "imagenet-100"
    assert any(f"solo-learn scripts/pretrain/{folder}/" in s for s in recipe.sources.values()), recipe.sources
    assert recipe.config.train.epochs == (1000 if dataset == "cifar100" else 400)
    assert recipe.config.data.batch_size == 256


def test_cli_says_which_recipe_runs_and_why(capsys):
    assert main(["config", "--method", "simclr", "--dataset", "cifar100"]) == 0
    err = capsys.readouterr().err
    assert err == "recipe: simclr-cifar100 (--method simclr --dataset cifar100)\n"
    assert main(["config", "--recipe", "simclr-quick", "--dataset", "cifar10"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "recipe: simclr-quick (--recipe)"
    assert err[1].startswith("note: simclr-quick is sized for fashion-mnist-mini") and "simclr-cifar10" in err[1]


def test_cli_counts_the_classes_of_an_image_folder(tmp_path, capsys):
    for c in range(3):
        (tmp_path / "train" / f"c{c}").mkdir(parents=True)
    assert main(["config", "--method", "byol", "--dataset", "imagefolder", "--data-dir", str(tmp_path)]) == 0
    assert "recipe: byol-imagenet100 (--method byol --dataset imagefolder: a folder of 3 classes" in capsys.readouterr().err


def _fake_cifar10(root, per_batch=24):
    """CIFAR-10 in torchvision's on-disk format (cifar-10-batches-py), from generated images: class c
    is brighter in channel c % 3, so a few steps can tell classes apart."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [i % 10 for i in range(per_batch)]
        images = rng.integers(0, 120, (per_batch, 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, label % 3] += 100
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(per_batch, 3072), "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)


def test_pretrain_method_on_cifar10_runs_the_cifar10_recipe(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.cifar as tv_cifar

    from sslbench.benchmark.checkpoint import read_tensor_file

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    _fake_cifar10(tmp_path / "data")
    argv = ["pretrain", "--method", "simclr", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
            "--epochs", "1", "--batch-size", "32", "--backbone", "small-cnn", "--set", "method.proj_hidden_dim=64",
            "--set", "method.proj_dim=32", "--eval", "knn-k20-t0.07", "--no-progress", "--no-mlflow",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "recipe: simclr-cifar10 (--method simclr --dataset cifar10)" in out.err
    assert "note:" not in out.err
    assert "Pretraining simclr (simclr-cifar10) on cifar10" in out.out and "knn-k20-t0.07 on cifar10: top1" in out.out
    state = read_tensor_file(tmp_path / "run" / "checkpoints" / "last.pt", "cpu")
    config = state["config"]
    assert config["recipe"] == "simclr-cifar10" and config["optim"]["name"] == "lars"
    assert config["method_args"]["temperature"] == 0.5 and config["augment"] == "simclr-small"


def test_readme_resolution_table_is_what_recipe_for_says():
    """The README's table of `--method M --dataset D` for SimCLR, MoCo v2 and BYOL."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Which recipe runs"):readme.index("## SimCLR, MoCo v2 and BYOL on CIFAR-10")]
    rows = [line for line in section.splitlines() if line.startswith("| `") and "`simclr-" in line]
    assert len(rows) == 7
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        dataset = cells[0].split("`")[1]
        classes = 1000 if "1000 classes" in cells[0] else None
        for method, cell in zip(("simclr", "mocov2", "byol"), cells[1:]):
            assert cell.split("`")[1] == recipe_for(method, dataset, num_classes=classes).recipe, (dataset, method)


def test_a_cifar_sized_folder_takes_the_small_image_recipe_at_its_size(tmp_path):
    import argparse

    from PIL import Image

    from sslbench.benchmark.cli import _folder_image_size
    from sslbench.benchmark.recipes import recipe_for, resolve

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 90, 10)).save(tmp_path / "train" / c / f"{i}.jpg")
    args = argparse.Namespace(dataset="imagefolder", data_dir=str(tmp_path))
    assert _folder_image_size(args) == 32
    choice = recipe_for("simclr", "imagefolder", num_classes=2, image_size=32)
    assert choice.recipe == "simclr-cifar10" and "32 px" in choice.reason
    cfg = resolve(choice.recipe, list(choice.overrides))
    assert cfg.data.dataset == "imagefolder" and cfg.data.image_size == 32
    assert recipe_for("simclr", "imagefolder", num_classes=2, image_size=224).recipe == "simclr-imagenet100"
    assert recipe_for("context", "imagefolder", num_classes=2, image_size=32).recipe == "context-imagenet"
