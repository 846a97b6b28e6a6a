"""Recipes of DeepCluster-v2 (Caron et al., NeurIPS 2020, in the SwAV paper): quick (CPU),
CIFAR-10, CIFAR-100, ImageNet-100 (solo-learn) and ImageNet (ResNet-50, the official 800-epoch script)."""

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

OFFICIAL_METHOD = ("facebookresearch/swav scripts/deepclusterv2_800ep_pretrain.sh and "
                   "main_deepclusterv2.py: --nmb_prototypes 3000 3000 3000, --feat_dim 128, "
                   "hidden_mlp 2048, --temperature 0.1, --crops_for_assign 0 1, 10 k-means "
                   "iterations (cluster_memory), init_memory over the training loader (64 per GPU)")

# ---------------------------------------------------------------------------------------------
# Quick recipe: the embedded dataset on a CPU (sslbench's own settings, measured on the 2-core CPU).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "deepclusterv2-quick",
    Config(method="deepclusterv2", backbone="small-cnn", augment="fmnist-quick",
           # Measured (10 epochs, seed 0; kNN k=200 on a held-out fifth of the *train* split;
           # random init 69.9): K = 3 x 100, two views 74.2; 3 x 300 73.8; 3 x 100 with
           # multi-crop (fmnist-quick+4x12) 74.1 at 1.8x the CPU time. So two 20 px views, no
           # multi-crop (as swav-quick); `augment=fmnist-quick+4x12` restores it. K = 3 x 100:
           # ~100 images per cluster on 10k images (the official 3 x 3000 on 1.28M: ~427; 3000
           # here would leave ~3), cheaper than 300 at equal accuracy. Projector as swav-quick.
           method_args={"proj_hidden_dim": 512, "proj_dim": 128, "num_prototypes": (100, 100, 100),
                        "memory_batch_size": 256},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=10)),
    "DeepCluster-v2 on the embedded Fashion-MNIST subset, two 20 px views, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "augment": "sslbench: two views; multi-crop measured no better at 1.8x the cost (the comment in "
                "benchmark/recipes/deepclusterv2.py)",
     "method.num_prototypes": "sslbench: 3 x 100, ~100 images per cluster on 10k images; 3 x 300 "
                              "measured no better (the comment)",
     "method.memory_batch_size": "sslbench: the training batch (256)",
     "method.temperature, kmeans_iters, num_assign_crops": OFFICIAL_METHOD},
))

# ---------------------------------------------------------------------------------------------
# CIFAR-10 (small-stem ResNet-18, 32 px).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "deepclusterv2-cifar10",
    Config(method="deepclusterv2", backbone="resnet18-small", augment="simclr",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 128, "num_prototypes": (3000, 3000, 3000),
                        "temperature": 0.1, "kmeans_iters": 10, "num_assign_crops": 2},
           data=DataConfig(dataset="cifar10", batch_size=256),
           optim=OptimConfig(name="lars", base_lr=0.6, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=11, final_lr_ratio=0.001, lars_eta=0.02),
           train=TrainConfig(epochs=1000)),
    "DeepCluster-v2 on CIFAR-10 with ResNet-18 (solo-learn's recipe; 88.85 linear; the paper has "
    "no CIFAR pretraining).",
    {"all": "vturrisi/solo-learn scripts/pretrain/cifar/deepclusterv2.yaml (88.85 "
            "linear on CIFAR-10 in its README): ResNet-18, projector 2048 -> 128, prototypes [3000, 3000, 3000], "
            "LARS lr 0.6 at bs 256 (eta 0.02, biases and norms excluded), wd 1e-6, 1000 epochs, "
            "warmup_cosine with 11 warm-up epochs from 0 and min_lr 0.0006 (ratio 0.001); tau 0.1 "
            "and 10 k-means iterations are solo-learn's DeepClusterV2 defaults. solo-learn also "
            "clips the LARS lr (clip_lr); sslbench's LARS does not (deviation). solo-learn skips "
            "the loss in epoch 0 (no bank yet); sslbench fills the bank first, as the official "
            "init_memory",
     "augment": "solo-learn scripts/pretrain/cifar/augmentations/symmetric.yaml: two 32 px crops "
                "0.08-1, ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, gray 0.2, blur p 0.5, flip; no "
                "multi-crop = sslbench 'simclr' (blur-kernel deviation as in swav-cifar10)",
     "method.memory_batch_size": OFFICIAL_METHOD},
))

# ---------------------------------------------------------------------------------------------
# ImageNet (ResNet-50, 224 px, an ImageFolder).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "deepclusterv2-imagenet",
    Config(method="deepclusterv2", backbone="resnet50", augment="simclr+6x96",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 128, "num_prototypes": (3000, 3000, 3000),
                        "temperature": 0.1, "kmeans_iters": 10, "num_assign_crops": 2,
                        "memory_batch_size": 64},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 4096}),
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, final_lr_ratio=0.001, lars_eta=0.001),
           train=TrainConfig(epochs=800)),
    "DeepCluster-v2 ResNet-50 ImageNet, 800 epochs, batch 4096, 2x224 + 6x96 multi-crop (75.2 linear).",
    {"all": "facebookresearch/swav scripts/deepclusterv2_800ep_pretrain.sh and README "
            "(DeepCluster-v2 800 ep 75.2): bs 4096 (64 GPUs x 64), LARC (trust 0.001, no "
            "clip) on SGD momentum 0.9, base_lr 4.8 (= 0.3 x 4096 / 256) -> final_lr 0.0048 (ratio "
            "0.001), 10 warm-up epochs, wd 1e-6, 800 epochs, --nmb_prototypes 3000 3000 3000, "
            "feat_dim 128, hidden 2048, tau 0.1, crops_for_assign 0 1, prototypes never trained "
            "(--freeze_prototypes_niters 300000 > 250,400 iterations), SyncBN. Deviations: the "
            "warm-up starts at 0 (official start_warmup 0.3); biases and norms get no weight decay "
            "and no LARS (official: all parameters); bf16 autocast instead of fp16",
     "method": OFFICIAL_METHOD,
     "augment": "swav src/multicropdataset.py with --size_crops 224 96 --nmb_crops 2 6 "
                "--min_scale_crops 0.14 0.05 --max_scale_crops 1 0.14: flip, ColorJitter(0.8, 0.8, "
                "0.8, 0.2) p 0.8, gray 0.2, Gaussian blur p 0.5 sigma 0.1-2 on every crop = "
                "'simclr' + 6 local 96 px views. Deviations (as swav-imagenet): global crop scale "
                "0.08-1 (official 0.14-1); blur kernel 10 % of the side (official fixed 23 px)"},
))

register_recipe(solo_cifar100("deepclusterv2-cifar10", "deepclusterv2.yaml", "DeepCluster-v2", 63.61))

register_recipe(Recipe(
    "deepclusterv2-imagenet100",
    Config(method="deepclusterv2", backbone="resnet18", augment="simclr",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 128, "num_prototypes": (3000, 3000, 3000),
                        "temperature": 0.1, "kmeans_iters": 10, "num_assign_crops": 2},
           data=IMAGENET100_DATA,
           optim=OptimConfig(name="lars", base_lr=0.6, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=11, final_lr_ratio=0.001, lars_eta=0.02),
           train=TrainConfig(epochs=400)),
    "DeepCluster-v2 on ImageNet-100 with ResNet-18 (solo-learn's recipe; 75.40 linear, 75.36 online).",
    {**IMAGENET100_SOURCES,
     "method, optim": "vturrisi/solo-learn scripts/pretrain/imagenet-100/deepclusterv2.yaml: "
                      "projector 2048 -> 128, prototypes [3000, 3000, 3000], LARS lr 0.6 at bs 256 "
                      "(eta 0.02, biases and norms excluded), wd 1e-6, warmup_cosine with 11 "
                      "warm-up epochs from 0 and min_lr 0.0006 (ratio 0.001); tau 0.1 and 10 "
                      "k-means iterations are solo-learn's defaults. " + SOLO_LARS_CLIP,
     "augment": "solo-learn imagenet-100/augmentations/symmetric.yaml: two 224 px crops 0.08-1, "
                "ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5, flip; no "
                "multi-crop = sslbench 'simclr'",
     "description": SOLO_IMAGENET100_TABLE + ": 75.40 offline linear / 75.36 online top-1",
     "method.memory_batch_size": OFFICIAL_METHOD},
))
