"""Recipes of InvaSpread (Ye et al., CVPR 2019): quick and CIFAR-10.

The paper pretrains on CIFAR-10 and STL-10 only (ResNet-18; no ImageNet-1k pretraining), so there
is no ``invaspread-imagenet``. Its STL-10 setting (train + unlabeled, 105k images, 96 px) would
need the engine to pretrain on the ``train+unlabeled`` split; the engine pretrains on ``train``.

The official code is mangye16/Unsupervised_Embedding_Learning ``demo_seen.py``. Its learning rate
is 0.03, then x0.1 from epoch 120 (the x0.05 / x0.01 branches of its ``elif`` chain are never
reached); sslbench has one schedule, a cosine, so the recipe uses a cosine from 0.03 (deviation).
"""

from __future__ import annotations

from sslbench.benchmark.config import Config, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    SIMCLR_GLOBAL_NEGATIVES,
    Recipe,
    register_recipe,
)

_GLOBAL = ("data.batch_size is the global batch, so every anchor is classified against the whole "
           "global batch on any number of GPUs (the official code runs one process, DataParallel); "
           "as SimCLR: " + SIMCLR_GLOBAL_NEGATIVES)

register_recipe(Recipe(
    "invaspread-quick",
    Config(method="invaspread", backbone="small-cnn", augment="fmnist-quick",
           method_args={"temperature": 0.1, "embed_dim": 128, "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "InvaSpread (in-batch invariance + spreading) on the embedded Fashion-MNIST subset, CPU-sized.",
    {**QUICK_SOURCES,
     "method.temperature, embed_dim": "Ye et al. 2019 / demo_seen.py: --batch-t 0.1, --low-dim 128",
     "method.gather_distributed": _GLOBAL},
))

register_recipe(Recipe(
    "invaspread-cifar10",
    Config(method="invaspread", backbone="resnet18-small", augment="mocov2-small",
           method_args={"temperature": 0.1, "embed_dim": 128, "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=128),
           # lr 0.03 at batch 128 = base_lr 0.06 x 128 / 256.
           optim=OptimConfig(name="sgd", base_lr=0.06, lr_scaling="linear", weight_decay=5e-4),
           train=TrainConfig(epochs=300)),
    "InvaSpread on CIFAR-10 with ResNet-18 (83.6 weighted kNN, K = 200, in the paper).",
    {"all": "mangye16/Unsupervised_Embedding_Learning demo_seen.py: ResNet-18 (CIFAR stem), 128-d "
            "L2-normalised, batch 128, --batch-t 0.1, --batch-m 1, SGD lr 0.03 momentum 0.9 wd "
            "5e-4; its loop runs 301 epochs (the repo's fig/Performance.png reads ~84 % kNN at "
            "epoch 200); step schedule -> cosine here (deviation)",
     "augment": "closest sslbench augmentation to demo_seen.py's RandomResizedCrop(0.2-1) + "
                "ColorJitter(0.4, 0.4, 0.4, 0.4) + RandomGrayscale(0.2) + flip: MoCo v2 'aug+' "
                "without blur, whose jitter has hue 0.1 and p 0.8 (deviation)",
     "method.gather_distributed": _GLOBAL},
))
