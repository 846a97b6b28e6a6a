"""Recipes with ContrastiveCrop (Peng et al., CVPR 2022, https://arxiv.org/abs/2202.03278).

ContrastiveCrop is a crop strategy, not a method: these recipes run registered methods (SimCLR,
BYOL, MoCo v2) with a ``crop`` section (:class:`~sslbench.benchmark.config.CropConfig`,
``benchmark/contrastive_crop.py``). Official code: github.com/xyupeng/ContrastiveCrop.
"""

from __future__ import annotations

from sslbench.benchmark.config import Config, CropConfig, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    SIMCLR_GLOBAL_NEGATIVES,
    Recipe,
    register_recipe,
)

_OFFICIAL = "xyupeng/ContrastiveCrop"

# Quick recipes: the official small-data box settings (alpha 0.1, k 0.1) with the schedule scaled
# to 22 epochs. Official CIFAR: warm-up 100 and re-localisation every 100 of 500 epochs, i.e. boxes
# after 20, 40, 60, 80 % of training; here after epochs 5, 10, 15, 20 of 22 (every 23 %), the same
# four localisations (warm-up 4 / every 4 would give five).
QUICK_CROP = CropConfig(mode="ccrop", alpha=0.1, threshold=0.1, warmup_epochs=5, update_every=5)
QUICK_CROP_SOURCE = (
    f"{_OFFICIAL} configs/small/cifar10/simclr_ccrop.py (alpha 0.1, box_thresh 0.1, warmup_epochs "
    "100 / loc_interval 100 of 500 epochs); the schedule scaled to 22 epochs: 4 localisations, as "
    "the official 500-epoch schedule has"
)

register_recipe(Recipe(
    "simclr-ccrop-quick",
    Config(method="simclr", backbone="small-cnn", augment="fmnist-quick",
           method_args={"temperature": 0.2, "proj_hidden_dim": 512, "proj_dim": 128,
                        "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22), crop=QUICK_CROP),
    "simclr-quick with ContrastiveCrop (embedded Fashion-MNIST subset, CPU-sized).",
    {**QUICK_SOURCES, "method.temperature": "as simclr-quick (sslbench measured on the 2-core CPU: tau 0.2 beat 0.5)",
     "method.gather_distributed": SIMCLR_GLOBAL_NEGATIVES, "crop": QUICK_CROP_SOURCE},
))
register_recipe(Recipe(
    "byol-ccrop-quick",
    Config(method="byol", backbone="small-cnn", augment="fmnist-quick",
           method_args={"proj_hidden_dim": 512, "proj_dim": 128, "pred_hidden_dim": 512,
                        "base_momentum": 0.99},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22), crop=QUICK_CROP),
    "byol-quick with ContrastiveCrop (embedded Fashion-MNIST subset, CPU-sized).",
    {**QUICK_SOURCES, "method.base_momentum": "as byol-quick (BYOL §5 ablation setting, tau_base 0.99)",
     "crop": QUICK_CROP_SOURCE.replace("simclr_ccrop", "byol_ccrop")},
))

# The official CIFAR-10 SimCLR run. Its loss (losses/NT_Xent_dist.py, from SupContrast) is NT-Xent
# x tau / base_tau = x 0.5 / 0.07; sslbench's NT-Xent is unscaled, so the same SGD updates (the
# update is linear in gradient + L2 term) take lr x 0.5/0.07 and weight decay x 0.07/0.5.
_LOSS_SCALE = 0.5 / 0.07
register_recipe(Recipe(
    "simclr-ccrop-cifar10",
    Config(method="simclr", backbone="resnet18-small", augment="mocov2-small",
           method_args={"temperature": 0.5, "proj_hidden_dim": 512, "proj_dim": 128,
                        "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=512),
           optim=OptimConfig(name="sgd", base_lr=0.5 * _LOSS_SCALE * 256 / 512, lr_scaling="linear",
                             weight_decay=1e-4 / _LOSS_SCALE, final_lr_ratio=0.1),
           train=TrainConfig(epochs=500),
           crop=CropConfig(mode="ccrop", alpha=0.1, threshold=0.1, warmup_epochs=100, update_every=100)),
    "SimCLR + ContrastiveCrop on CIFAR-10 with ResNet-18, the official config (paper: 89.63 -> "
    "90.08 linear over random crops).",
    {"all": f"{_OFFICIAL} configs/small/cifar10/simclr_ccrop.py + DDP_simclr_ccrop.py: ResNet-18 "
            "without max-pool, bs 512, 500 epochs, SGD lr 0.5 momentum 0.9 wd 1e-4, cosine to 0.1 x "
            "lr (decay_rate 0.1), no warm-up, tau 0.5, projector Linear(512, 512)-ReLU-Linear(512, "
            "128); alpha 0.1, box_thresh 0.1, warmup_epochs 100, loc_interval 100",
     "optim.base_lr, optim.weight_decay": "lr 0.5 at bs 512 = 0.25 per 256, x 0.5/0.07 and wd "
            "1e-4 x 0.07/0.5: the official loss is scaled by tau / base_tau = 0.5/0.07, sslbench's "
            "is not (equivalent SGD updates)",
     "augment": f"{_OFFICIAL} datasets/transforms/small.py cifar_train_ccrop: crop scale 0.2-1, "
                "flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, no blur = 'mocov2-small'",
     "crop.alpha": "the official CIFAR configs (and the README's simclr_alpha0.1_th0.1.py) use "
                   "alpha 0.1; 0.6 is the ImageNet config's and the transform's default",
     "deviations": "sslbench's SimCLR projector has BN in its hidden layer (official: none); weight "
                   "decay skips biases and norms (official: all parameters); the cosine steps per "
                   "iteration (official: per epoch); dataset std (official: 0.2023, 0.1994, 0.2010)",
     "method.gather_distributed": SIMCLR_GLOBAL_NEGATIVES + "; the official NT_Xent_dist gathers "
                                  "with diffdist"},
))
register_recipe(Recipe(
    "mocov2-ccrop-imagenet",
    Config(method="mocov2", backbone="resnet50", augment="mocov2",
           method_args={"temperature": 0.2, "queue_size": 65536, "momentum": 0.999},
           data=IMAGENET_DATA,
           optim=OptimConfig(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=1e-4),
           train=TrainConfig(epochs=100),
           crop=CropConfig(mode="ccrop", alpha=0.6, threshold=0.1, warmup_epochs=20, update_every=20)),
    "MoCo v2 + ContrastiveCrop, ResNet-50 ImageNet-1k, 100 epochs (the official IN-1k config).",
    {"all": f"{_OFFICIAL} configs/IN1K/mocov2_ccrop.py: ResNet-50, bs 256, 100 epochs, SGD lr 0.03 "
            "momentum 0.9 wd 1e-4, cosine to 0, K 65536, m 0.999, tau 0.2, MLP head; alpha 0.6, "
            "box_thresh 0.1, warmup_epochs 20, loc_interval 20; augmentation "
            "imagenet_pretrain_ccrop (MoCo v2 aug+, crop scale 0.2-1) = 'mocov2'. The paper's "
            "IN-1k linear numbers are not in the references sslbench holds"},
))
