"""Recipes of MoCo v1 (He et al., CVPR 2020): quick, CIFAR-10 and ImageNet."""

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

_DEMO = "facebookresearch/moco colab/moco_cifar10_demo.ipynb"

register_recipe(Recipe(
    "mocov1-quick",
    # The paper's linear 128-d head on the 256-d small CNN (no hidden layer to size). Queue,
    # momentum, temperature and split BN from the official CIFAR-10 demo, whose 4096-key queue
    # and m 0.99 suit a 10k-image split (K 65,536 is 6.5x the split: most keys would be stale); the
    # symmetric loss as in mocov2-quick (the demo: ~2x the epochs' worth of signal on a CPU budget).
    Config(method="mocov1", backbone="small-cnn", augment="fmnist-quick",
           method_args={"temperature": 0.1, "queue_size": 4096, "momentum": 0.99, "proj_dim": 128,
                        "shuffle_bn": "auto", "bn_splits": 8, "symmetric": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "MoCo v1 on the embedded Fashion-MNIST subset, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "method.temperature, queue_size, momentum, bn_splits, symmetric": f"{_DEMO}: tau 0.1, K 4096, "
     "m 0.99, --bn-splits 8 (SplitBatchNorm for shuffling BN in one process), --symmetric",
     "method.proj_dim": "He et al. 2020 §3.3: a linear fc head with 128-d output"},
))

register_recipe(Recipe(
    "mocov1-cifar10",
    Config(method="mocov1", backbone="resnet18-small", augment="simclr-small",
           method_args={"temperature": 0.1, "queue_size": 4096, "momentum": 0.99, "proj_dim": 128,
                        "shuffle_bn": "auto", "bn_splits": 8, "symmetric": False},
           data=DataConfig(dataset="cifar10", batch_size=512),
           optim=OptimConfig(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=5e-4,
                             momentum=0.9),
           train=TrainConfig(epochs=200)),
    "MoCo v1 on CIFAR-10 with ResNet-18: the official CIFAR-10 demo (linear head; 82.6 kNN at 200 ep).",
    {"all": f"{_DEMO}: ResNet-18 with the CIFAR stem, resnet18(num_classes=128) i.e. MoCo v1's "
            "linear 128-d fc head, SGD lr 0.06 at bs 512 (= 0.03 x 512/256), momentum 0.9, wd "
            "5e-4, cosine, 200 epochs, K 4096, m 0.99, tau 0.1, SplitBatchNorm with 8 splits, "
            "asymmetric loss -> kNN monitor (k 200, t 0.1) 82.6 at 200 ep (85.3 symmetric). The "
            "demo's cosine steps per epoch, sslbench's per step (no warm-up in either)",
     "augment": f"{_DEMO}: RandomResizedCrop(32) (scale 0.08-1), flip, ColorJitter(0.4, 0.4, 0.4, "
                "0.1) p 0.8, grayscale 0.2, no blur = 'simclr-small'"},
))

register_recipe(Recipe(
    "mocov1-imagenet",
    Config(method="mocov1", backbone="resnet50", augment="mocov2-small",
           method_args={"temperature": 0.07, "queue_size": 65536, "momentum": 0.999, "proj_dim": 128,
                        "shuffle_bn": "auto", "bn_splits": 8, "symmetric": False},
           data=IMAGENET_DATA,
           optim=OptimConfig(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=1e-4,
                             momentum=0.9),
           train=TrainConfig(epochs=200)),
    "MoCo v1 ResNet-50 ImageNet, 200 epochs (60.6 linear; repo 60.8 +- 0.2).",
    {"all": "He et al. 2020 §3.3 and facebookresearch/moco README: SGD lr 0.03, "
            "bs 256 (8 GPUs), momentum 0.9, wd 1e-4, 200 epochs, K 65536, m 0.999, tau 0.07, "
            "linear 128-d head, shuffling BN across the 8 GPUs ('auto': the DDP shuffle under "
            "data parallelism, SplitBatchNorm with 8 splits in one process). Deviation: the paper "
            "multiplies the lr by 0.1 at epochs 120 and 160 (step schedule); sslbench's schedule "
            "is warm-up + cosine only, so this recipe decays on a cosine (as MoCo v2's --cos)",
     "augment": "Deviation: MoCo v1 uses InstDisc's augmentation (RandomResizedCrop 0.2-1, "
                "ColorJitter(0.4, 0.4, 0.4, 0.4) always applied, grayscale 0.2, flip; repo "
                "main_moco.py without --aug-plus), which sslbench has no recipe for; "
                "'mocov2-small' is the nearest (same crop, grayscale and flip, no blur) but jitters "
                "hue by 0.1 instead of 0.4 and with p 0.8 instead of 1"},
))
