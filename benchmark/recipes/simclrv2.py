"""Recipes of SimCLR v2 (Chen et al., NeurIPS 2020: quick, CIFAR-10, ImageNet) and of SimCLR with
the other losses of the InfoNCE family (``simclr-<loss>-quick``, for sweeps over the loss)."""

from __future__ import annotations

from typing import Any

from sslbench.benchmark.config import Config, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    SIMCLR_GLOBAL_NEGATIVES,
    Recipe,
    register_recipe,
)

_TF2 = "google-research/simclr tf2 (model.py ProjectionHead, run.py flags)"
_MEMORY = ("SimCLR v2 paper, settings paragraph, as transcribed by 'Papers Explained 201: SimCLRv2' "
           "(ritvik19, Medium; secondary: not found in a primary source): 800 epochs, 3-layer "
           "projector, memory buffer 64K, EMA decay 0.999, LARS momentum 0.9")

# ---------------------------------------------------------------------------------------------
# SimCLR v2.
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "simclrv2-quick",
    # The paper's hidden width equals the backbone's (2048 for ResNet-50); here 512 like the other
    # quick heads (the small CNN gives 256-d features). The memory follows the MoCo CIFAR-10 demo
    # sizes used by mocov2-quick (K 4096, m 0.99) instead of 65,536 / 0.999: 20 epochs of 10k
    # images push 200k keys, and a 0.999 EMA would lag by ~40 % of the whole run.
    Config(method="simclrv2", backbone="small-cnn", augment="fmnist-quick",
           method_args={"temperature": 0.2, "proj_hidden_dim": 512, "proj_dim": 128,
                        "proj_layers": 3, "memory_size": 4096, "memory_momentum": 0.99,
                        "finetune_from_layer": 1, "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "SimCLR v2 (3-layer projector, momentum memory) on the embedded Fashion-MNIST subset, CPU-sized.",
    {**QUICK_SOURCES,
     "method.temperature": "as simclr-quick (sslbench measured on the 2-core CPU: tau 0.2 beat 0.5 in 90 s runs)",
     "method.proj_layers, finetune_from_layer": f"{_TF2}: num_proj_layers 3; paper: fine-tune "
                                                "from the first projector layer",
     "method.memory_size, memory_momentum": "facebookresearch/moco colab/moco_cifar10_demo.ipynb "
                                            "(K 4096, m 0.99), as mocov2-quick",
     "method.gather_distributed": SIMCLR_GLOBAL_NEGATIVES},
))

register_recipe(Recipe(
    "simclrv2-cifar10",
    # No memory: the official code has none and the paper gives no CIFAR-10 setting.
    Config(method="simclrv2", backbone="resnet18-small", augment="simclr-small",
           method_args={"temperature": 0.5, "proj_hidden_dim": 0, "proj_dim": 128,
                        "proj_layers": 3, "memory_size": 0, "finetune_from_layer": 1,
                        "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=512),
           optim=OptimConfig(name="lars", base_lr=1.0, lr_scaling="linear", weight_decay=1e-4,
                             warmup_epochs=10),
           train=TrainConfig(epochs=1000)),
    "SimCLR v2 on CIFAR-10 with ResNet-18 (the tf2 code's CIFAR command with v2's projector).",
    {"all": "google-research/simclr tf2/README.md CIFAR-10 command: ResNet-18, bs 512, 1000 "
            "epochs, LARS lr 1.0 (linear scaling), wd 1e-4, tau 0.5, no blur, colour strength "
            f"0.5; warm-up 10 epochs is run.py's default. Projector: {_TF2} defaults (3 layers, "
            "hidden = feature width, 128 out, BN on every layer)",
     "method.gather_distributed": SIMCLR_GLOBAL_NEGATIVES},
))

register_recipe(Recipe(
    "simclrv2-imagenet",
    Config(method="simclrv2", backbone="resnet50", augment="simclr",
           method_args={"temperature": 0.1, "proj_hidden_dim": 0, "proj_dim": 128,
                        "proj_layers": 3, "memory_size": 65536, "memory_momentum": 0.999,
                        "finetune_from_layer": 1, "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 4096}),
           optim=OptimConfig(name="lars", base_lr=1.2, lr_scaling="sqrt", weight_decay=1e-4,
                             warmup_epochs=10),
           train=TrainConfig(epochs=800)),
    "SimCLR v2 ResNet-50 (1x) ImageNet, 800 epochs with the MoCo memory (71.7 linear, Table 1).",
    {"method.memory_size, memory_momentum, epochs": _MEMORY,
     "method.temperature, proj_*": f"{_TF2} defaults: tau 0.1, 3 layers, 128 out",
     "optim": "google-research/simclr tf2/README.md ImageNet command: LARS lr 0.075 x sqrt(bs) "
              "(= base_lr 1.2 with sslbench's sqrt(bs / 256)), wd 1e-4, bs 4096; warm-up 10 "
              "epochs is run.py's default (the paper's own schedule was not retrieved)",
     "augment": "paper: the same augmentations as SimCLR (crop, colour distortion, blur)",
     "method.gather_distributed": SIMCLR_GLOBAL_NEGATIVES},
))

# ---------------------------------------------------------------------------------------------
# SimCLR with the loss variants, on the quick setting (only method.loss and its keys differ from
# simclr-quick, so a sweep over these recipes isolates the loss).
# ---------------------------------------------------------------------------------------------


def _simclr_quick(**loss_args: Any) -> Config:
    # simclr-quick's settings (tau 0.2, 512 / 128 head) with another loss. The DCL/HCL repos use
    # t 0.5 on STL-10; tau stays at simclr-quick's 0.2 so the loss is the only change.
    return Config(method="simclr", backbone="small-cnn", augment="fmnist-quick",
                  method_args={"temperature": 0.2, "proj_hidden_dim": 512, "proj_dim": 128,
                               "gather_distributed": True, **loss_args},
                  data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22))


_VARIANTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "nce": ({"loss": "nce"}, "binary NCE (InstDisc's NCE, noise ratio = number of negatives)",
            "Wu et al. 2018 §3.2; zhirongw/lemniscate.pytorch lib/NCECriterion.py"),
    "dcl": ({"loss": "dcl", "tau_plus": 0.1}, "the debiased contrastive loss (tau+ 0.1)",
            "chingyaoc/DCL README / main.py: tau+ 0.1 (STL-10: 80.15 biased -> 84.26)"),
    "hcl": ({"loss": "hcl", "tau_plus": 0.1, "beta": 1.0},
            "hard-negative weighting (beta 1.0, tau+ 0.1)",
            "joshr17/HCL image/README.md: beta 1.0, tau+ 0.1, the best STL-10 row (87.44)"),
    "flatnce": ({"loss": "flatnce"}, "FlatNCE",
                "Chen et al. 2021 (arXiv 2107.01152); Junya-Chen/FlatCLR flatclr.py"),
    "alignuniform": ({"loss": "align_uniform", "align_alpha": 2.0, "unif_t": 2.0,
                      "unif_weight": 1.0}, "alignment + uniformity (alpha 2, t 2, lambda 1)",
                     "Wang & Isola 2020; SsnL/align_uniform defaults (align_alpha 2, unif_t 2, "
                     "align_w = unif_w = 1)"),
}
for _name, (_args, _what, _source) in _VARIANTS.items():
    register_recipe(Recipe(
        f"simclr-{_name}-quick", _simclr_quick(**_args),
        f"SimCLR with {_what} on the embedded Fashion-MNIST subset (simclr-quick otherwise).",
        {**QUICK_SOURCES, "method.temperature": "as simclr-quick (sslbench measured on the 2-core CPU: tau 0.2)",
         "method.loss and its keys": _source, "method.gather_distributed": SIMCLR_GLOBAL_NEGATIVES},
    ))
