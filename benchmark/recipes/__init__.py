"""Named reference recipes, each value with its source: the registry (``base``) and one module
of recipes per method family. Importing this package registers every recipe."""

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

__all__ = ["Recipe", "get_recipe", "list_recipes", "register_recipe", "resolve"]
