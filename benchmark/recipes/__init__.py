"""Named reference recipes, each value with its source: the registry (``base``), one module of
recipes per method family, and which recipe a method runs on a dataset (``resolution``:
:func:`recipe_for`). Importing this package registers every recipe."""

from sslbench.benchmark.recipes import (  # noqa: F401  (registration side effect)
    background,
    barlowtwins,
    ccrop,
    cmc,
    colorization,
    context,
    counting,
    cpc,
    deepclusterv2,
    dino,
    exemplar,
    foundation,
    instdisc,
    invaspread,
    jigsaw,
    jigsawcluster,
    mocov1,
    mocov3,
    nnclr,
    pixpro,
    rotation,
    simclrv2,
    simsiam,
    swav,
    vicreg,
)
from sslbench.benchmark.recipes.base import (
    Recipe,
    get_recipe,
    list_recipes,
    register_recipe,
    resolve,
)
from sslbench.benchmark.recipes.resolution import RecipeChoice, quick_recipe_note, recipe_for

__all__ = ["Recipe", "RecipeChoice", "get_recipe", "list_recipes", "quick_recipe_note", "recipe_for",
           "register_recipe", "resolve"]
