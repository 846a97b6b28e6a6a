"""Which recipe ``--method M --dataset D`` runs, and why: :func:`recipe_for`.

A method's recipes are named ``<method>-<suffix>``: ``-quick`` (CPU-sized, for the embedded data),
``-cifar10`` / ``-cifar100`` / ``-stl10`` (small images), ``-imagenet100`` (the anchors' ResNet-18
recipe for a 224 px folder) and ``-imagenet`` (the paper's ImageNet-1k recipe). The rule, in order:

1. **The dataset's own recipe**, ``M-<D>``, when it exists. An ``imagefolder`` is ImageNet-1k when
   it has 1000 classes (``M-imagenet``, then ``M-imagenet100``), anything else (ImageNet-100,
   Imagenette, your own classes, or a count not known) is looked up as ``M-imagenet100`` first.
2. **CPU-sized data** (the embedded Fashion-MNIST subsets and the generated ``synthetic`` test
   set): the method's default ``-quick`` recipe, with a note when it was made for other data.
3. **The closest image size**: no recipe of its own, so the method's recipe for the nearest kind
   of data, with the dataset swapped: small images (up to 64 px) take ``-cifar10``, then
   ``-cifar100``, ``-stl10``, ``-imagenet100``, ``-imagenet``; medium ones (65-159 px, STL-10's
   96) take ``-stl10``, then ``-imagenet100``, ``-imagenet``, ``-cifar10``, ``-cifar100``; large
   ones (160 px and more, a folder's 224) ``-imagenet``, ``-imagenet100``, ``-stl10``,
   ``-cifar10``, ``-cifar100``. A recipe made for a 224 px folder trains an in-memory dataset at
   the dataset's own size (``data.image_size=none``); a recipe made for an in-memory dataset
   decodes a folder at that dataset's size (``-cifar10`` on a folder: 32 px); a method-specific
   input size (context prediction's 448 px, jigsaw's 255 px) is kept.
4. Otherwise the method's default recipe, with a note.

A ``*-quick`` recipe is never applied to data it was not made for without a note
(:func:`quick_recipe_note`, also for an explicit ``--recipe``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sslbench.benchmark.config import Config
from sslbench.benchmark.recipes.base import IMAGENET_DATA, get_recipe, list_recipes

__all__ = ["QUICK_DATASETS", "RecipeChoice", "quick_recipe_note", "recipe_for"]

#: Data the ``-quick`` recipes are sized for: the embedded subsets and the generated test set.
QUICK_DATASETS = ("fashion-mnist-mini", "fashion-mnist-color-mini", "synthetic")
#: Datasets decoded from image files at ``data.image_size`` (the others have a fixed native size).
FOLDER_DATASETS = ("imagefolder",)
#: Classes of ImageNet-1k: a folder with this many is taken for it.
IMAGENET_CLASSES = 1000
#: Side up to which images are small (CIFAR-like), and from which they are large (ImageNet-like).
SMALL_MAX, LARGE_MIN = 64, 160

_BY_SIZE = {
    "small": ("cifar10", "cifar100", "stl10", "imagenet100", "imagenet"),
    "medium": ("stl10", "imagenet100", "imagenet", "cifar10", "cifar100"),
    "large": ("imagenet", "imagenet100", "stl10", "cifar10", "cifar100"),
}


@dataclass(frozen=True)
class RecipeChoice:
    """The recipe ``--method M --dataset D`` resolves to.

    Attributes:
        recipe: a registered recipe name.
        reason: why, in words (the CLI prints ``recipe: <recipe> (<reason>)``).
        overrides: ``key=value`` overrides that adapt the recipe to the dataset, applied before
            the user's own (``data.dataset``, and ``data.image_size`` where the size changes).
        note: a caveat worth a line of its own (a CPU-sized recipe on other data, a colour method
            on grayscale data), or None.
    """

    recipe: str
    reason: str
    overrides: tuple[str, ...] = ()
    note: str | None = None


def _size_class(side: int) -> str:
    return "small" if side <= SMALL_MAX else "medium" if side < LARGE_MIN else "large"


def _native_size(recipe: str) -> int:
    """The image side a recipe trains at: its ``data.image_size``, else its dataset's own."""
    from sslbench.benchmark.datasets import dataset_info

    data = get_recipe(recipe).config.data
    return data.image_size or dataset_info(data.dataset).image_size


def _adapt(recipe: str, dataset: str) -> tuple[tuple[str, ...], str]:
    """The overrides that move ``recipe`` onto ``dataset``, and what they do in words."""
    from sslbench.benchmark.datasets import dataset_info

    data = get_recipe(recipe).config.data
    if data.dataset == dataset:
        return (), ""
    swap = (f"data.dataset={dataset}",)
    own = dataset_info(dataset).image_size
    if dataset in FOLDER_DATASETS:
        if data.image_size is None:  # made for in-memory images: decode the folder at their size
            size = dataset_info(data.dataset).image_size
            return swap + (f"data.image_size={size}",), f"decoded at {size} px"
        return swap, f"decoded at {data.image_size} px"
    if data.image_size == IMAGENET_DATA.image_size:  # a folder's decode size, not the method's choice
        return swap + ("data.image_size=none",), f"trained at {dataset}'s own {own} px"
    if data.image_size is not None:
        return swap, f"views at {data.image_size} px, the input {recipe}'s method needs"
    return swap, f"trained at {dataset}'s own {own} px"


def _color_note(method: str, dataset: str) -> str | None:
    from sslbench.benchmark.datasets import dataset_info
    from sslbench.methods import get_method

    if get_method(method).needs_color and dataset_info(dataset).channels == 1:
        return (f"{method} learns across colour channels and {dataset} is grayscale: pretraining will "
                "stop with that error (fashion-mnist-color-mini is the embedded data in colour).")
    return None


def _join(*notes: str | None) -> str | None:
    text = " ".join(n for n in notes if n)
    return text or None


def recipe_for(method: str, dataset: str | None = None, *, num_classes: int | None = None,
               image_size: int | None = None) -> RecipeChoice:
    """The recipe a method runs on a dataset (the module docstring gives the rule).

    Args:
        method: a registered method.
        dataset: a registered dataset; None: the method's default recipe on its own data.
        num_classes: for a folder dataset, its number of classes when known (1000: ImageNet-1k).
        image_size: for a folder dataset, the side its images infer when known: small images
            (under 160 px, e.g. a CIFAR-sized JPEG folder) take the recipe of their size class,
            decoded at that size, instead of an ImageNet recipe at 224 px.

    Raises:
        UnknownNameError: unknown method or dataset.
    """
    from sslbench.benchmark.datasets import dataset_info
    from sslbench.methods import get_method

    default = get_method(method).default_recipe
    asked = f"--method {method}" + (f" --dataset {dataset}" if dataset else "")
    if dataset is None:
        own = get_recipe(default).config.data.dataset
        return RecipeChoice(default, f"{asked}: its default recipe, made for {own}")
    side = dataset_info(dataset).image_size
    registered = set(list_recipes())
    color = _color_note(method, dataset)

    named: tuple[str, ...] = (dataset,)
    if dataset in FOLDER_DATASETS and image_size is not None and image_size < 160:
        for suffix in _BY_SIZE[_size_class(image_size)]:
            name = f"{method}-{suffix}"
            if name in registered and _native_size(name) < 160:  # else: the folder logic below
                why = (f"{asked}: the folder's images are {image_size} px, {_size_class(image_size)}: {name}, "
                       f"made for {_native_size(name)} px images, decoded at {image_size} px")
                return RecipeChoice(name, why, (f"data.dataset={dataset}", f"data.image_size={image_size}"), color)
    if dataset in FOLDER_DATASETS:
        imagenet1k = num_classes == IMAGENET_CLASSES
        named = ("imagenet", "imagenet100") if imagenet1k else ("imagenet100", "imagenet")
    for rank, suffix in enumerate(named):
        name = f"{method}-{suffix}"
        if name not in registered:
            continue
        overrides, how = _adapt(name, dataset)
        why = asked
        if dataset in FOLDER_DATASETS:
            count = f"a folder of {num_classes} classes" if num_classes else "a folder (class count not known)"
            kind = "ImageNet-1k" if imagenet1k else f"not ImageNet-1k's {IMAGENET_CLASSES}"
            why += f": {count}, {kind}"
            if rank:
                why += f"; no {method}-{named[0]} recipe, so {name}"
            elif suffix == "imagenet100" and f"{method}-imagenet" in registered:
                why += f" (--recipe {method}-imagenet for ImageNet-1k)"
            why += f"; {how}" if how else ""
        return RecipeChoice(name, why, overrides, color)

    if dataset in QUICK_DATASETS:
        made_for = get_recipe(default).config.data.dataset
        overrides, _ = _adapt(default, dataset)
        if made_for == dataset:
            return RecipeChoice(default, f"{asked}: the method's CPU-sized recipe, made for {dataset}", (), color)
        return RecipeChoice(default, f"{asked}: CPU-sized data, the method's CPU-sized recipe", overrides,
                            _join(quick_recipe_note(default, dataset), color))

    size_class = _size_class(side)
    for suffix in _BY_SIZE[size_class]:
        name = f"{method}-{suffix}"
        if name in registered:
            overrides, how = _adapt(name, dataset)
            why = (f"{asked}: no {method}-{named[0]} recipe; {dataset}'s {side} px images are {size_class}: "
                   f"{name}, made for {_native_size(name)} px images, on {dataset}")
            return RecipeChoice(name, why + (f", {how}" if how else ""), overrides, color)

    overrides, _ = _adapt(default, dataset)
    return RecipeChoice(default, f"{asked}: {method} has no recipe for real data", overrides,
                        _join(quick_recipe_note(default, dataset), color))


def quick_recipe_note(recipe: str, dataset: str, *, instead: str | None = None) -> str | None:
    """The note for a ``*-quick`` recipe run on data it was not made for, else None.

    Args:
        recipe: the recipe that runs.
        dataset: the data it runs on.
        instead: the recipe made for ``dataset``, to name in the note (None: name none).

    Raises:
        UnknownNameError: unknown recipe.
    """
    cfg: Config = get_recipe(recipe).config
    if not recipe.endswith("-quick") or cfg.data.dataset == dataset:
        return None
    hint = f"; {instead} is the recipe for it (--method {cfg.method} --dataset {dataset})" if instead else ""
    return (f"{recipe} is sized for {cfg.data.dataset} on a CPU ({cfg.backbone}, {cfg.train.epochs} "
            f"epochs), not for {dataset}{hint}.")
