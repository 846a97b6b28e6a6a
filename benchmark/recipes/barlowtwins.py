"""Recipes of Barlow Twins (Zbontar et al., ICML 2021): quick, CIFAR-10, CIFAR-100, ImageNet-100
and ImageNet."""

from __future__ import annotations

from sslbench.benchmark.config import Config, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET100_DATA,
    IMAGENET100_SOURCES,
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    SOLO_IMAGENET100_TABLE,
    SOLO_LARS_CLIP,
    Recipe,
    register_recipe,
    solo_cifar100,
)

# data.batch_size is the global batch; the repo standardises with SyncBN and sums C over GPUs,
# i.e. C is the global batch's. gather_distributed reproduces that (with correct gradients).
GLOBAL_C = ("Zbontar et al. 2021 §2 / facebookresearch/barlowtwins main.py: SyncBatchNorm and "
            "all_reduce of C, so C is computed over the global batch")

register_recipe(Recipe(
    "barlowtwins-quick",
    # Projector 1024-1024-1024 instead of 8192-8192-8192: on the 2-core CPU a step costs ~1.5x
    # a 512-wide one and ~0.4x a 2048-wide one (the paper's projector-width ablation:
    # accuracy keeps rising with the width).
    # bias_lr_scale 1: the paper's 0.024 pairs with LARS (which rescales the weights' updates);
    # under Adam, whose steps scale with the lr alone, it would slow biases and BN 40-fold.
    Config(method="barlowtwins", backbone="small-cnn", augment="fmnist-quick",
           method_args={"proj_hidden_dim": 1024, "proj_dim": 1024, "proj_layers": 3,
                        "lambd": 0.0051, "bias_lr_scale": 1.0, "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "Barlow Twins on the embedded Fashion-MNIST subset, CPU-sized (quick start).",
    {**QUICK_SOURCES, "method.lambd": "facebookresearch/barlowtwins main.py default (--lambd 0.0051)",
     "method.gather_distributed": GLOBAL_C},
))

register_recipe(Recipe(
    "barlowtwins-cifar10",
    Config(method="barlowtwins", backbone="resnet18-small", augment="byol-small",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 2048, "proj_layers": 3,
                        "lambd": 0.0051, "scale_loss": 0.1, "bias_lr_scale": 1.0,
                        "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=256),
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-4,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=1000)),
    "Barlow Twins on CIFAR-10 with ResNet-18 (solo-learn's recipe, 92.1 online linear; the "
    "paper has no CIFAR recipe).",
    {"all": "vturrisi/solo-learn scripts/pretrain/cifar/barlow.yaml: LARS lr 0.3 at bs 256 (eta "
            "0.02, biases and BN excluded from LARS and wd), wd 1e-4, projector 2048-2048-2048, "
            "lambda 0.0051 (solo default), scale_loss 0.1, one learning rate for all parameters, "
            "1000 epochs, warmup_cosine (10 warm-up epochs, its default). solo-learn also clips "
            "the LARS lr (clip_lr); sslbench's LARS does not (deviation)",
     "augment": "solo-learn cifar/augmentations/asymmetric.yaml: crop 0.08-1, ColorJitter(0.4, "
                "0.4, 0.2, 0.1) p 0.8, grayscale 0.2, flip 0.5, no blur, solarize 0.0/0.2 "
                "(= byol-small)",
     "method.gather_distributed": GLOBAL_C},
))

register_recipe(Recipe(
    "barlowtwins-imagenet",
    Config(method="barlowtwins", backbone="resnet50", augment="byol",
           method_args={"proj_hidden_dim": 8192, "proj_dim": 8192, "proj_layers": 3,
                        "lambd": 0.0051, "scale_loss": 1.0, "bias_lr_scale": 0.0048 / 0.2,
                        "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 2048}),
           optim=OptimConfig(name="lars", base_lr=0.2, lr_scaling="linear", weight_decay=1.5e-6,
                             warmup_epochs=10, final_lr_ratio=0.001),
           train=TrainConfig(epochs=1000)),
    "Barlow Twins ResNet-50 ImageNet, 1000 epochs at batch 2048 (73.2 linear).",
    {"all": "Zbontar et al. 2021 §3 'Implementation details': LARS, 1000 "
            "epochs, bs 2048, lr 0.2 (weights) and 0.0048 (biases, BN) x bs/256, 10 warm-up "
            "epochs, cosine decay by a factor 1000, wd 1.5e-6, biases and BN excluded from LARS "
            "and wd, projector 8192-8192-8192, BYOL augmentations -> 73.2 linear",
     "method.lambd": "facebookresearch/barlowtwins main.py --lambd 0.0051 (paper: 5e-3)",
     "method.scale_loss, bias_lr_scale": "current repo main.py: separate bias lr, no loss scale "
                                         "(the released model's README command used "
                                         "--scale-loss 0.024 and wd 1e-6 instead)",
     "method.gather_distributed": GLOBAL_C},
))

register_recipe(solo_cifar100("barlowtwins-cifar10", "barlow.yaml", "Barlow Twins", 70.90))

register_recipe(Recipe(
    "barlowtwins-imagenet100",
    Config(method="barlowtwins", backbone="resnet18", augment="byol",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 2048, "proj_layers": 3,
                        "lambd": 0.0051, "scale_loss": 0.1, "bias_lr_scale": 1.0,
                        "gather_distributed": True},
           data=IMAGENET100_DATA,
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-4,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=400)),
    "Barlow Twins on ImageNet-100 with ResNet-18 (solo-learn's recipe; 80.16 linear, 80.38 online).",
    {**IMAGENET100_SOURCES,
     "method, optim": "vturrisi/solo-learn scripts/pretrain/imagenet-100/barlow.yaml: projector "
                      "2048-2048-2048, scale_loss 0.1, lambda 0.0051 (solo default), one lr for all "
                      "parameters, LARS lr 0.3 at bs 256 (eta 0.02, biases and BN excluded), wd "
                      "1e-4, warmup_cosine (10 warm-up epochs). " + SOLO_LARS_CLIP,
     "augment": "solo-learn imagenet-100/augmentations/asymmetric.yaml = sslbench 'byol'",
     "description": SOLO_IMAGENET100_TABLE + ": 80.16 offline linear / 80.38 online top-1",
     "method.gather_distributed": GLOBAL_C},
))
