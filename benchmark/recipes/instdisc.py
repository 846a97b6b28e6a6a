"""Recipes of InstDisc (Wu et al., CVPR 2018): quick, CIFAR-10, ImageNet.

The official code is zhirongw/lemniscate.pytorch (``main.py`` for ImageNet, ``cifar.py``). Its
learning rate is a step schedule (x0.1 at epochs 120 and 160 on ImageNet; every 40 epochs after
80 on CIFAR); sslbench has one schedule, a cosine, so every recipe here uses a cosine from the
same peak (a documented deviation). No sslbench augmentation recipe is exactly the repo's
(RandomResizedCrop 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.4) always applied, grayscale 0.2, flip):
the closest is MoCo v2's without blur, which jitters hue by 0.1 (not 0.4) with probability 0.8.
"""

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

_AUG_DEVIATION = ("closest sslbench augmentation to lemniscate's RandomResizedCrop(0.2-1) + "
                  "ColorJitter(0.4, 0.4, 0.4, 0.4) + RandomGrayscale(0.2) (+ flip on ImageNet): "
                  "MoCo v2 'aug+' without blur, whose jitter has hue 0.1 and p 0.8 (deviation)")

register_recipe(Recipe(
    "instdisc-quick",
    Config(method="instdisc", backbone="small-cnn", augment="fmnist-quick",
           # The repo's small-dataset command (CIFAR: --nce-k 0 --nce-t 0.1): the full softmax
           # over the bank, here the embedded 10,000 training images (cheap at this size), rather
           # than the paper's ImageNet NCE (instdisc-imagenet). InstDisc uses the first view only.
           method_args={"embed_dim": 128, "num_negatives": 0, "temperature": 0.1,
                        "memory_momentum": 0.5, "loss": "softmax"},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "InstDisc (memory bank, full non-parametric softmax) on the embedded Fashion-MNIST subset, "
    "CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "method.num_negatives, loss, temperature": "zhirongw/lemniscate.pytorch README CIFAR command "
         "'--nce-k 0 --nce-t 0.1' (the official small-dataset setting: full softmax, §3.1). NCE with "
         "a fixed Z and 1,024 noise samples was measured to learn instance discrimination far more "
         "slowly here (training set, 3 epochs: median rank of the own memory among 10,000 rows "
         "4,498 vs 1,138 for the full softmax)",
     "method.memory_momentum": "lemniscate --nce-m 0.5 (the repo's memory update)"},
))

register_recipe(Recipe(
    "instdisc-cifar10",
    Config(method="instdisc", backbone="resnet18-small", augment="mocov2-small-no-flip",
           method_args={"embed_dim": 128, "num_negatives": 0, "temperature": 0.1,
                        "memory_momentum": 0.5, "loss": "softmax"},
           data=DataConfig(dataset="cifar10", batch_size=128),
           # lr 0.03 at batch 128 = base_lr 0.06 x 128 / 256.
           optim=OptimConfig(name="sgd", base_lr=0.06, lr_scaling="linear", weight_decay=5e-4),
           train=TrainConfig(epochs=200)),
    "InstDisc on CIFAR-10 with ResNet-18 (the repo's CIFAR command: full softmax over the bank; "
    "80.8 kNN as re-tabulated by InvaSpread).",
    {"all": "zhirongw/lemniscate.pytorch README 'python cifar.py --nce-k 0 --nce-t 0.1 --lr 0.03' "
            "and cifar.py: ResNet-18 (CIFAR stem), 128-d, batch 128, SGD momentum 0.9, wd 5e-4, "
            "--nce-m 0.5, 200 epochs; lr x0.1 every 40 epochs after epoch 80 -> cosine here "
            "(deviation)",
     "augment": _AUG_DEVIATION + "; cifar.py has the flip commented out, hence -no-flip"},
))

register_recipe(Recipe(
    "instdisc-imagenet",
    Config(method="instdisc", backbone="resnet50", augment="mocov2-no-blur",
           method_args={"embed_dim": 128, "num_negatives": 4096, "temperature": 0.07,
                        "memory_momentum": 0.5, "loss": "nce"},
           data=IMAGENET_DATA,
           optim=OptimConfig(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=1e-4),
           train=TrainConfig(epochs=200)),
    "InstDisc ResNet-50 ImageNet, NCE with 4,096 negatives (54.0 linear, MoCo Table 1; released "
    "model 46.8 kNN).",
    {"all": "zhirongw/lemniscate.pytorch main.py and README: --nce-k 4096 --nce-t 0.07 --nce-m 0.5 "
            "--low-dim 128 --lr 0.03 -b 256, SGD momentum 0.9, wd 1e-4, 200 epochs, lr x0.1 at "
            "epochs 120 and 160 -> cosine here (deviation). The README command trains ResNet-18; "
            "the paper reports ResNet-18 and ResNet-50",
     "augment": _AUG_DEVIATION},
))
