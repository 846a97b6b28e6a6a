"""Self-supervised methods: the registry, the method protocol, heads, losses, one module each.

Importing this package registers every method.
"""

from sslbench.methods import (  # noqa: F401  (registration side effect)
    barlowtwins,
    byol,
    cmc,
    colorization,
    context,
    counting,
    cpc,
    deepclusterv2,
    dino,
    exemplar,
    instdisc,
    invaspread,
    jigsaw,
    jigsawcluster,
    mocov1,
    mocov2,
    mocov3,
    nnclr,
    pixpro,
    rotation,
    simclr,
    simclrv2,
    simsiam,
    swav,
    vicreg,
)
from sslbench.methods.base import Method, StepContext, StepOutput, forward_views
from sslbench.methods.registry import MethodEntry, get_method, list_methods, register_method

__all__ = ["Method", "MethodEntry", "StepContext", "StepOutput", "forward_views", "get_method", "list_methods",
           "register_method"]
