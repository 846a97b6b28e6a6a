"""Recipes of PixPro / PixContrast (Xie et al., CVPR 2021): quick (CPU) and ImageNet (ResNet-50)."""

from __future__ import annotations

from sslbench.benchmark.config import Config, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    Recipe,
    register_recipe,
)

# zdaxie/PixPro tools/pixpro_base_r50_100ep.sh (and _400ep.sh) and the paper's implementation details.
OFFICIAL = "zdaxie/PixPro tools/pixpro_base_r50_100ep.sh"
PAPER = "Xie et al. 2021, implementation details (https://arxiv.org/abs/2011.10043)"

# ---------------------------------------------------------------------------------------------
# Quick recipes: the embedded dataset on a CPU (sslbench's own settings, measured on the 2-core CPU).
# ---------------------------------------------------------------------------------------------

# small-cnn's last map is 4 x 4 at 28 px and 3 x 3 at 20 px (strides 2-2-2-1): PixPro's positives
# are pairs of these cells (about 40 positive pairs per image at 28 px, 21 at 20 px). Projector
# sized like byol-quick (512 hidden, 128 out) for a 388k-parameter encoder instead of 4096 -> 256.
# Measured: kNN (k=200) on a held-out fifth of the *train* split, 3-epoch runs (seed 0, CPU shared
# by other jobs): 28 px views ('fmnist') 68.1, 20 px views ('fmnist-quick') 67.2, random init
# 69.9; with the instance branch (method.instance_weight=1, 20 px) 61.3. 28 px wins, at about 1.7x
# the time per epoch. No run beat the random encoder on this pooled-feature kNN: PixPro trains the
# feature map cell by cell (the paper judges it by detection and segmentation transfer).
_QUICK_ARGS = {"proj_hidden_dim": 512, "proj_dim": 128, "pred_hidden_dim": 512}

register_recipe(Recipe(
    "pixpro-quick",
    Config(method="pixpro", backbone="small-cnn", augment="fmnist",
           method_args={**_QUICK_ARGS, "loss": "pixpro"},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=10)),
    "PixPro on the embedded Fashion-MNIST subset, two 28 px views (4 x 4 maps), CPU-sized.",
    {**QUICK_SOURCES,
     "augment": "sslbench: 28 px views ('fmnist', 4 x 4 maps) beat 20 px ('fmnist-quick', 3 x 3) "
                "on held-out train kNN (comment in benchmark/recipes/pixpro.py)",
     "method.threshold, gamma, transform_layers, base_momentum": f"{PAPER}; {OFFICIAL}: T 0.7, "
                                                                 "gamma 2, one 1x1 conv in g, m 0.99",
     "method.proj_hidden_dim, proj_dim": "sslbench: sized like byol-quick for the small CNN"},
))

register_recipe(Recipe(
    "pixcontrast-quick",
    Config(method="pixpro", backbone="small-cnn", augment="fmnist",
           method_args={**_QUICK_ARGS, "loss": "pixcontrast"},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=10)),
    "PixContrast (pixel InfoNCE, tau 0.3) on the embedded Fashion-MNIST subset, CPU-sized.",
    {**QUICK_SOURCES,
     "augment": "as pixpro-quick (not measured separately)",
     "method.temperature, threshold, base_momentum": f"{PAPER}: tau 0.3, T 0.7, m 0.99"},
))

# ---------------------------------------------------------------------------------------------
# ImageNet (ResNet-50, 224 px, an ImageFolder): the paper's setting.
# ---------------------------------------------------------------------------------------------

_IMAGENET_SOURCES = {
    "all": f"{PAPER} and {OFFICIAL}: ResNet-50 (C5, 7 x 7 at 224 px), projector 1x1 conv 2048 -> "
           "4096 -> 256 (BN, ReLU), LARS (trust 0.001, biases and BN excluded) on SGD momentum 0.9, "
           "base lr 1.0 x bs / 256 with bs 1024 (8 GPUs x 128), wd 1e-5, cosine schedule with 5 "
           "warm-up epochs, 100 epochs (400 in the _400ep script and the paper's longer run), "
           "T 0.7, gamma 2, g = one 1x1 conv, momentum 0.99 -> 1 on a cosine, no instance "
           "branch (--pixpro-ins-loss-weight 0.), SyncBN, apex O1 mixed precision. Deviations: "
           "the official warm-up starts at lr / 100 (--warmup-multiplier 100), sslbench's at 0; "
           "bf16 autocast instead of apex O1; the official loss is 2x the paper's (see "
           "methods/pixpro.py pixpro_loss), which only changes the balance against weight decay",
    "augment": "BYOL augmentation (--aug BYOL, crop 0.08-1, 224 px) = sslbench 'byol' (BYOL Table 6)",
}

register_recipe(Recipe(
    "pixpro-imagenet",
    Config(method="pixpro", backbone="resnet50", augment="byol",
           method_args={"loss": "pixpro", "proj_hidden_dim": 4096, "proj_dim": 256, "threshold": 0.7,
                        "gamma": 2.0, "transform_layers": 1, "base_momentum": 0.99, "instance_weight": 0.0},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 1024}),
           optim=OptimConfig(name="lars", base_lr=1.0, lr_scaling="linear", weight_decay=1e-5,
                             warmup_epochs=5, lars_eta=0.001),
           train=TrainConfig(epochs=100)),
    "PixPro ResNet-50 ImageNet, 100 epochs, bs 1024 (train.epochs=400: the paper's 400-epoch run, "
    "60.2 VOC AP (C4), 41.4 COCO mAP (FPN), abstract).",
    _IMAGENET_SOURCES,
))

register_recipe(Recipe(
    "pixcontrast-imagenet",
    Config(method="pixpro", backbone="resnet50", augment="byol",
           method_args={"loss": "pixcontrast", "proj_hidden_dim": 4096, "proj_dim": 256, "threshold": 0.7,
                        "temperature": 0.3, "base_momentum": 0.99},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 1024}),
           optim=OptimConfig(name="lars", base_lr=1.0, lr_scaling="linear", weight_decay=1e-5,
                             warmup_epochs=5, lars_eta=0.001),
           train=TrainConfig(epochs=100)),
    "PixContrast ResNet-50 ImageNet, 100 epochs, bs 1024 (the paper's first pixel-level task).",
    {**_IMAGENET_SOURCES,
     "method.temperature": f"{PAPER}: tau 0.3 for PixContrast; the official repo ships no "
                           "PixContrast script, so the optimiser is the PixPro one (the paper "
                           "gives one training setting for both)"},
))
