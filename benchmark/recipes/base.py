"""The recipe registry: named configurations, each value with its source.

A recipe is a complete :class:`~sslbench.benchmark.config.Config` plus a ``sources`` map that
says, for each value that does not come from the method's own defaults, where it comes from (a
paper table, an official config). ``*-quick`` recipes are sslbench's own: sized for the
embedded Fashion-MNIST subset on a 2-core CPU (measured there), not paper settings.

Resolve a recipe plus overrides with :func:`resolve`. The recipes themselves live one module per
method family beside this one; ``QUICK_*`` and ``IMAGENET_DATA`` are the settings they share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sslbench.benchmark.config import (
    Config,
    DataConfig,
    OptimConfig,
    apply_overrides,
    parse_override,
)
from sslbench.benchmark.errors import unknown_name


@dataclass(frozen=True)
class Recipe:
    """A named configuration and the source of its values.

    Attributes:
        name: the recipe name (``sslbench recipes`` lists them).
        config: the configuration (method hyperparameters may be partial; defaults fill in).
        sources: config key (or group of keys) -> where the value comes from.
        description: one line.
    """

    name: str
    config: Config
    description: str
    sources: Mapping[str, str] = field(default_factory=dict)


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Adds a recipe; duplicate names are an error."""
    if recipe.name in _RECIPES:
        raise ValueError(f"recipe '{recipe.name}' is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def list_recipes() -> list[str]:
    """Registered recipe names."""
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """Looks a recipe up.

    Raises:
        UnknownNameError: no such recipe.
    """
    if name not in _RECIPES:
        raise unknown_name("recipe", name, _RECIPES, "`sslbench recipes` lists them.")
    return _RECIPES[name]


def resolve(recipe: str, overrides: Iterable[str] | Mapping[str, object] = ()) -> Config:
    """A recipe with strict ``key=value`` overrides applied and method hyperparameters validated.

    Raises:
        UnknownNameError: unknown recipe, method or augmentation recipe.
        ConfigError: unknown key, wrongly typed value, or a bad derived augmentation name.
    """
    from sslbench.benchmark.augment import get_augment_recipe
    from sslbench.methods import get_method

    base = dataclasses.replace(get_recipe(recipe).config, recipe=recipe)
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else [
        parse_override(o) for o in overrides]
    # method.* keys are validated against the final method (which may itself be overridden).
    method = next((str(v) for k, v in pairs if k == "method"), base.method)
    cfg = apply_overrides(base, dict(pairs), get_method(method).config)
    get_augment_recipe(cfg.augment)  # a typo fails here (and in `sweep plan`), not at training
    return cfg


# ---------------------------------------------------------------------------------------------
# Settings shared by the recipes of every method.
# ---------------------------------------------------------------------------------------------

# data.batch_size is the global batch on any number of GPUs (the config hash ignores the GPU
# count), so SimCLR recipes contrast against the whole global batch: the same hash then means the
# same 2B - 2 negatives per anchor whether the cell runs on 1 GPU or 8.
SIMCLR_GLOBAL_NEGATIVES = ("Chen et al. 2020 §2.2: the 2(N - 1) other views of the (global) "
                            "batch are the negatives; the official TPU code gathers them from all "
                            "cores (tpu_cross_replica_concat)")

QUICK_DATA = DataConfig(dataset="fashion-mnist-mini", batch_size=256)
QUICK_OPTIM = OptimConfig(name="adamw", base_lr=1e-3, lr_scaling="linear", weight_decay=1e-6,
                           warmup_epochs=1, final_lr_ratio=0.1)
QUICK_SOURCES = {
    "backbone, optim, data": "sslbench: measured on the 2-core CPU; "
                             "Adam 1e-3 at batch 256, small CNN, Fashion-MNIST 28 px",
}

IMAGENET_DATA = DataConfig(dataset="imagefolder", batch_size=256, image_size=224, num_workers=8)

# ImageNet-100 (solo-learn's tables): a 224 px ImageFolder at a global batch of 256.
IMAGENET100_DATA = DataConfig(dataset="imagefolder", batch_size=256, image_size=224, num_workers=8)
IMAGENET100_SOURCES = {
    "backbone, data, train.epochs": "vturrisi/solo-learn scripts/pretrain/imagenet-100/*.yaml: "
                                    "torchvision ResNet-18 (ImageNet stem), batch_size 128 per GPU on "
                                    "devices [0, 1] = 256 global (solo-learn scales the lr by the "
                                    "global batch / 256, as lr_scaling=linear does), 224 px crops, "
                                    "max_epochs 400. ImageNet-100 is the CMC class list "
                                    "(solo/data/dataset_subset/imagenet100_classes.txt)",
}
SOLO_CIFAR100_TABLE = ("vturrisi/solo-learn README.md, CIFAR-100 table (ResNet-18, 1000 epochs, "
                       "online linear: a head trained on the augmented crops during pretraining)")
SOLO_IMAGENET100_TABLE = "vturrisi/solo-learn README.md, ImageNet-100 table (ResNet-18, 400 epochs)"
#: solo-learn's LARS clips the per-layer lr (clip_lr: True in every LARS config); sslbench's does not.
SOLO_LARS_CLIP = ("solo-learn also clips the LARS lr (clip_lr); sslbench's LARS does not "
                  "(deviation)")


def on_dataset(base: Recipe, name: str, dataset: str, description: str,
               sources: Mapping[str, str]) -> Recipe:
    """``base`` with only its dataset changed: for anchors that run one config file on several
    datasets (solo-learn's ``scripts/pretrain/cifar/*.yaml`` serve CIFAR-10 and CIFAR-100).

    Args:
        base: the recipe whose every other value (and source) is kept.
        name: the new recipe's name.
        dataset: the registered dataset it trains on.
        description: one line.
        sources: added to (or replacing entries of) ``base.sources``: at least where the dataset
            swap comes from.
    """
    config = dataclasses.replace(base.config, data=dataclasses.replace(base.config.data, dataset=dataset))
    return Recipe(name, config, description, {**base.sources, **sources})


def solo_cifar100(cifar10: str, yaml: str, title: str, top1: float) -> Recipe:
    """The CIFAR-100 twin of a ``<method>-cifar10`` recipe taken from solo-learn, whose CIFAR
    configs serve both datasets (``dataset: cifar10 # change here for cifar100``).

    Args:
        cifar10: the registered ``<method>-cifar10`` recipe (its values all from ``yaml``).
        yaml: the solo-learn file, ``scripts/pretrain/cifar/<yaml>``.
        title: the method's display name, for the description.
        top1: solo-learn's CIFAR-100 top-1 for it (README table).
    """
    return on_dataset(
        get_recipe(cifar10), cifar10.removesuffix("-cifar10") + "-cifar100", "cifar100",
        f"{title} on CIFAR-100 with ResNet-18 (solo-learn's recipe; {top1:.2f} online linear).",
        {"data.dataset": f"vturrisi/solo-learn scripts/pretrain/cifar/{yaml} serves both CIFARs "
                         "('dataset: cifar10 # change here for cifar100')",
         "description": f"{SOLO_CIFAR100_TABLE}: {top1:.2f} top-1"})
