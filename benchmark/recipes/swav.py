"""Recipes of SwAV (Caron et al., NeurIPS 2020): quick (CPU), CIFAR-10, CIFAR-100,
ImageNet-100 and ImageNet (ResNet-50)."""

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

# The official distributed_sinkhorn all-reduces its sums over the batch: the codes are those of
# the global batch, so the run does not depend on how many GPUs the batch is split over.
SINKHORN_ALL_REDUCE = ("facebookresearch/swav main_swav.py distributed_sinkhorn: dist.all_reduce "
                       "of sum(Q) and of the per-prototype sums in every iteration")

# ---------------------------------------------------------------------------------------------
# Quick recipe: the embedded dataset on a CPU (sslbench's own settings, measured on the 2-core CPU).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "swav-quick",
    Config(method="swav", backbone="small-cnn", augment="fmnist-quick",
           # Two 20 px views, no multi-crop (the paper's 2x224 + 6x96): local crops of 5-14 % of
           # a 28 px image (6-10 px patches) left SwAV no better than a random encoder here. kNN
           # (k=200) on a held-out fifth of the *train* split after 6 of the 22 epochs: 69.8 with
           # fmnist-quick+4x12, 73.0 with two views, 69.9 at random init. `augment=
           # fmnist-quick+4x12` restores multi-crop.
           # Projector sized like simclr/byol-quick (512 hidden, 128 out) for a 388k-parameter
           # encoder instead of 2048 -> 128. K = 200 instead of 3000: the official recipes keep
           # about 1.37 Sinkhorn rows per prototype (4096 / 3000 at batch 4096; (256 + 3840) / 3000
           # with the batch-256 queue); 256 / 200 keeps that ratio at batch 256 with no queue,
           # which a 10-class, 10k-image set does not need (K = 3000 would leave < 0.1 rows per
           # prototype, or need a queue of 15 stale batches out of an epoch of 39).
           method_args={"proj_hidden_dim": 512, "proj_dim": 128, "num_prototypes": 200,
                        "queue_length": 0, "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "SwAV on the embedded Fashion-MNIST subset, two 20 px views, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "augment": "sslbench: two views, no multi-crop; measured (benchmark/recipes/swav.py comment): "
                "SwAV's 0.05-0.14 local crops of 28 px images hurt in short runs",
     "method.num_prototypes, queue_length": "sslbench: rows per prototype kept at the official "
                                            "~1.37 (see the comment in benchmark/recipes/swav.py)",
     "method.temperature, epsilon, sinkhorn_iterations, freeze_prototypes_epochs":
         "facebookresearch/swav scripts/swav_800ep_pretrain.sh: 0.1, 0.05, 3, one epoch",
     "method.gather_distributed": SINKHORN_ALL_REDUCE},
))

# ---------------------------------------------------------------------------------------------
# CIFAR-10 (small-stem ResNet-18, 32 px).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "swav-cifar10",
    Config(method="swav", backbone="resnet18-small", augment="simclr",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 128, "num_prototypes": 3000,
                        "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iterations": 3,
                        "queue_length": 3840, "epoch_queue_starts": 50,
                        "freeze_prototypes_epochs": 2, "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=256),
           optim=OptimConfig(name="lars", base_lr=0.6, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=1000)),
    "SwAV on CIFAR-10 with ResNet-18 (solo-learn's recipe; 89.2 linear; the paper has no CIFAR "
    "pretraining).",
    {"all": "vturrisi/solo-learn scripts/pretrain/cifar/swav.yaml: ResNet-18, projector 2048 -> "
            "128, 3000 prototypes, queue 3840 from epoch 50, prototypes frozen 2 epochs, tau 0.1, "
            "LARS lr 0.6 at bs 256 (eta 0.02, biases and norms excluded), wd 1e-6, 1000 epochs, "
            "warmup_cosine (10 warm-up epochs, solo-learn's default); eps 0.05 and 3 Sinkhorn "
            "iterations are solo-learn's SwAV defaults. solo-learn also clips the LARS lr "
            "(clip_lr); sslbench's LARS does not (deviation)",
     "augment": "solo-learn scripts/pretrain/cifar/augmentations/symmetric.yaml (as read at commit "
                "38ad477): two 32 px crops 0.08-1, ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, gray "
                "0.2, blur p 0.5, flip; no multi-crop = sslbench 'simclr'. Deviation: the blur "
                "kernel is 10 % of 32 px (3 px) where solo-learn's PIL blur has radius = sigma",
     "method.gather_distributed": SINKHORN_ALL_REDUCE},
))

# ---------------------------------------------------------------------------------------------
# ImageNet (ResNet-50, 224 px, an ImageFolder).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "swav-imagenet",
    Config(method="swav", backbone="resnet50", augment="simclr+6x96",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 128, "num_prototypes": 3000,
                        "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iterations": 3,
                        "queue_length": 0, "freeze_prototypes_epochs": 1, "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 4096}),
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, final_lr_ratio=0.001, lars_eta=0.001),
           train=TrainConfig(epochs=800)),
    "SwAV ResNet-50 ImageNet, 800 epochs, batch 4096, 2x224 + 6x96 multi-crop (75.3 linear).",
    {"all": "facebookresearch/swav scripts/swav_800ep_pretrain.sh and README: "
            "bs 4096 (64 GPUs x 64), LARC (trust 0.001, no clip) on SGD momentum 0.9, base_lr 4.8 "
            "(= 0.3 x 4096 / 256) -> final_lr 0.0048 (ratio 0.001), 10 warm-up epochs, wd 1e-6, "
            "800 epochs, 3000 prototypes, feat_dim 128, hidden 2048, tau 0.1, eps 0.05, 3 "
            "Sinkhorn iterations, no queue, prototypes frozen 313 iterations (= 1 epoch at bs "
            "4096), SyncBN. Deviations: the warm-up starts at 0 (official start_warmup 0.3); "
            "biases and norms get no weight decay and no LARS (official: all parameters); bf16 "
            "autocast instead of apex fp16",
     "augment": "swav src/multicropdataset.py: RandomResizedCrop 2x224 + 6x96 (local scale "
                "0.05-0.14), flip, ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, gray 0.2, Gaussian blur "
                "p 0.5 sigma 0.1-2 on every crop = 'simclr' + 6 local 96 px views. Deviations: "
                "global crop scale 0.08-1 (official 0.14-1); blur kernel 10 % of the side (official "
                "fixed 23 px)",
     "method.gather_distributed": SINKHORN_ALL_REDUCE},
))

register_recipe(solo_cifar100("swav-cifar10", "swav.yaml", "SwAV", 64.88))

register_recipe(Recipe(
    "swav-imagenet100",
    Config(method="swav", backbone="resnet18", augment="simclr",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 128, "num_prototypes": 3000,
                        "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iterations": 3,
                        "queue_length": 3840, "epoch_queue_starts": 50,
                        "freeze_prototypes_epochs": 2, "gather_distributed": True},
           data=IMAGENET100_DATA,
           optim=OptimConfig(name="lars", base_lr=0.6, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=400)),
    "SwAV on ImageNet-100 with ResNet-18 (solo-learn's recipe; 74.28 linear, 74.04 online).",
    {**IMAGENET100_SOURCES,
     "method, optim": "vturrisi/solo-learn scripts/pretrain/imagenet-100/swav.yaml: projector 2048 "
                      "-> 128, 3000 prototypes, queue 3840 from epoch 50, prototypes frozen 2 "
                      "epochs, tau 0.1, LARS lr 0.6 at bs 256 (eta 0.02, biases and norms "
                      "excluded), wd 1e-6, warmup_cosine (10 warm-up epochs); eps 0.05 and 3 "
                      "Sinkhorn iterations are solo-learn's defaults. " + SOLO_LARS_CLIP,
     "augment": "solo-learn imagenet-100/augmentations/symmetric.yaml: two 224 px crops 0.08-1, "
                "ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5, flip; no "
                "multi-crop = sslbench 'simclr'",
     "description": SOLO_IMAGENET100_TABLE + ": 74.28 offline linear / 74.04 online top-1",
     "method.gather_distributed": SINKHORN_ALL_REDUCE},
))
