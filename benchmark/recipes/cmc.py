"""Recipes of CMC (Tian et al., ECCV 2020): quick (the embedded images in colour, CPU) and ImageNet.

The official code is HobbitLong/CMC ``train_CMC.py``. Its learning rate is a
step schedule (x0.1 at epochs 120, 160 and 200 of 240); sslbench has one schedule, a cosine, so
the ImageNet recipe uses a cosine from the same peak (a documented deviation). Its augmentation is
RandomResizedCrop + flip only, then the colour conversion: sslbench's ``crop-only`` (0.08-1, the
scale the code forces for ResNets on ImageNet). CMC's views are the colour channel groups of that
one crop (the method uses the recipe's first view).

No ``cmc-stl10``: the README gives only ``--nce_t 0.1`` for STL-10; the paper's STL-10 network
(an AlexNet-like half per view, patch-based variant) and optimiser settings are not in the code
or in the references sslbench holds. No ``cmc-cifar10``: the paper and the code have no CIFAR-10 recipe.
"""

from __future__ import annotations

import dataclasses

from sslbench.benchmark.config import Config, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    Recipe,
    register_recipe,
)

_REPO = "HobbitLong/CMC train_CMC.py (final version) and README"

register_recipe(Recipe(
    "cmc-quick",
    Config(method="cmc", backbone="small-cnn", augment="fmnist-quick",
           # L | ab of Lab, one small CNN each. Measured, 10 epochs, kNN (k=200) on a held-out
           # fifth of the *train* split: random init 64.9; in-batch negatives, tau 0.1: 69.9; the
           # paper's memory bank (softmax, K = 4096, tau 0.07): 67.1 (each row moves only 10 times
           # in 10 epochs); in-batch without the brightness/contrast jitter (the repo's crop +
           # flip only, augment=fmnist-quick-no-color): 68.9.
           method_args={"space": "lab", "groups": "0|1,2", "embed_dim": 128, "head": "linear",
                        "graph": "core", "negatives": "batch", "temperature": 0.1, "loss": "softmax"},
           data=dataclasses.replace(QUICK_DATA, dataset="fashion-mnist-color-mini"),
           optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "CMC (L | ab views, one small CNN each) on the embedded Fashion-MNIST subset generated in colour, "
    "CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "data.dataset": "sslbench: the embedded images generated in colour (CMC needs RGB)",
     "method.space, groups, embed_dim, head": _REPO + ": --view Lab (L | ab), --feat_dim 128, a "
                                             "linear layer after each encoder's pooling, L2-normalised",
     "method.negatives, temperature, loss": "sslbench, measured (comment in benchmark/recipes/cmc.py): "
                                            "in-batch softmax at tau 0.1 (the README's STL-10 "
                                            "--nce_t) beat the memory bank in 10-epoch runs",
     "augment": "sslbench quick augmentation; measured 1 point better than the repo's crop + flip "
                "only (fmnist-quick-no-color) in 10-epoch runs"},
))

register_recipe(Recipe(
    "cmc-imagenet",
    Config(method="cmc", backbone="resnet50", augment="crop-only",
           method_args={"space": "lab", "groups": "0|1,2", "embed_dim": 128, "head": "linear",
                        "graph": "core", "negatives": "memory", "num_negatives": 16384,
                        "temperature": 0.07, "memory_momentum": 0.5, "loss": "nce"},
           data=dataclasses.replace(IMAGENET_DATA, batch_size=128),
           # lr 0.03 at batch 128 = base_lr 0.06 x 128 / 256.
           optim=OptimConfig(name="sgd", base_lr=0.06, lr_scaling="linear", weight_decay=1e-4),
           train=TrainConfig(epochs=240)),
    "CMC ImageNet, L | ab with one ResNet-50 per view (the repo's resnet50v2, 47M parameters: 64.1 "
    "linear in MoCo's Table 1), NCE with 16,384 memory negatives.",
    {"all": _REPO + ": --batch_size 128, --learning_rate 0.03 (SGD momentum 0.9), --weight_decay "
            "1e-4, --epochs 240, --lr_decay_epochs 120,160,200 -> cosine here (deviation), "
            "--nce_k 16384, --nce_t 0.07, --nce_m 0.5, --feat_dim 128, --view Lab, NCE loss "
            "(--softmax off)",
     "backbone": "one full-width ResNet-50 per view = the repo's resnet50v2 (MoCo Table 1: 'CMC "
                 "R50 (L+ab)', 47M, 64.1). The README's 2xResNet50half (resnet50v1, width 0.5) "
                 "has no sslbench/timm backbone name (deviation from the smallest variant)",
     "augment": "train_CMC.py: RandomResizedCrop(224, scale=(crop_low, 1)) + RandomHorizontalFlip, "
                "crop_low forced to 0.08 for ResNets on ImageNet = sslbench 'crop-only'; one crop "
                "per image, split into L and ab (the method uses the first view)"},
))
