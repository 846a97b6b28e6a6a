"""Recipes of Jigsaw Clustering (Chen et al., CVPR 2021, https://arxiv.org/abs/2104.00323): quick
(CPU) and ImageNet (ResNet-50, the official README command). The paper has no CIFAR pretraining
(its CIFAR numbers fine-tune the ImageNet model), so there is no ``-cifar10`` recipe.

The ``jigsawcluster-*`` augmentation recipes (four views, one per tile position) are registered
with the method in ``methods/jigsawcluster.py``.
"""

from __future__ import annotations

from sslbench.benchmark.config import Config, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    Recipe,
    register_recipe,
)

_OFFICIAL = "dvlab-research/JigsawClustering"

# ---------------------------------------------------------------------------------------------
# Quick recipe: the embedded dataset on a CPU.
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "jigsawcluster-quick",
    Config(method="jigsawcluster", backbone="small-cnn", augment="jigsawcluster-fmnist",
           # Four 20 px views -> 16 px tiles (cross_ratio 0.3, as official) -> 32 px montages, whose
           # small-cnn map is 4 x 4: exact 2 x 2 cells. One montage per image: 1024 px per image
           # and step, about simclr-quick's two 20 px views (800 px).
           # Projector hidden width = the backbone's 256 features (the official rule, dim_mlp).
           # tau 0.2 instead of the official 0.3: kNN (k=200) on a held-out fifth of the *train*
           # split after 10 epochs: 71.8 at tau 0.2, 71.2 at 0.3, 69.9 at random init.
           method_args={"grid": 2, "cross_ratio": 0.3, "temperature": 0.2, "base_temperature": 0.07,
                        "proj_hidden_dim": 0, "proj_dim": 128},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=10)),
    "Jigsaw Clustering on the embedded Fashion-MNIST subset, 2 x 2 montages of 16 px tiles, "
    "CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "augment": "sslbench 'jigsawcluster-fmnist': the 'fmnist' view at 20 px, once per tile (official "
                "JigCluTransform augments each of the 4 patches independently)",
     "method.grid, cross_ratio, base_temperature": f"{_OFFICIAL} README pretraining command "
                "(--cross-ratio 0.3), 2 x 2 tiles (JigClu/jigclu.py), SupCluLoss base_temperature 0.07",
     "method.temperature": "sslbench: 0.2 measured above the official 0.3 (--loss-t) in 10-epoch "
                           "runs (comment in benchmark/recipes/jigsawcluster.py)",
     "method.proj_hidden_dim": "0 = the backbone's feature dimension, as the official dim_mlp"},
))

# ---------------------------------------------------------------------------------------------
# ImageNet (ResNet-50, 224 px montages, an ImageFolder).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "jigsawcluster-imagenet",
    Config(method="jigsawcluster", backbone="resnet50", augment="jigsawcluster-imagenet",
           method_args={"grid": 2, "cross_ratio": 0.3, "temperature": 0.3, "base_temperature": 0.07,
                        "proj_hidden_dim": 2048, "proj_dim": 128, "cluster_weight": 1.0,
                        "location_weight": 1.0},
           data=IMAGENET_DATA,
           optim=OptimConfig(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=1e-4,
                             momentum=0.9, warmup_epochs=0, final_lr_ratio=0.0),
           train=TrainConfig(epochs=200)),
    "Jigsaw Clustering ResNet-50 ImageNet, 200 epochs, batch 256, 112 px tiles in 224 px montages "
    "(66.4 linear, official README).",
    {"all": f"{_OFFICIAL} README pretraining command and main.py: ResNet-50, --lr 0.03 --batch-size "
            "256 --epoch 200, SGD momentum 0.9, weight decay 1e-4, cosine decay to 0 (min-lr 0), no "
            "warm-up, --loss-t 0.3, --cross-ratio 0.3, --proj-dim 128, --loss_clu 1 --loss_loc 1, "
            "--crop-size 112 (tiles), apex SyncBN; projector Linear(2048, 2048)-ReLU-Linear(2048, 128) "
            "(JigClu/jigclu.py), location head Linear(2048, 4) (resnet_jigclu.py). Deviations: the "
            "cosine steps per iteration (official: per epoch); weight decay skips biases and norms "
            "(official: all parameters); bf16 autocast",
     "augment": "sslbench 'jigsawcluster-imagenet': four MoCo v2 aug+ views at 140 px, whose 0.8 "
                "region is the official 112 px tile (its source lists the deviations)",
     "results": f"{_OFFICIAL} README: 66.4 ImageNet linear top-1 (200 epochs)"},
))
