"""Recipes of RotNet (Gidaris et al., ICLR 2018): quick, CIFAR-10 and ImageNet (ResNet-50).

The official code (gidariss/FeatureLearningRotNet) decays its learning rate in steps; sslbench has
one schedule, a cosine from the same peak (a documented deviation in every recipe here).
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

ALL_ROTATIONS = ("Gidaris et al. 2018 §2: the 4 rotations 0/90/180/270 by flips "
                 "and transposes, all 4 copies of each image in the same mini-batch")

register_recipe(Recipe(
    "rotation-quick",
    # One 20 px view (the first of 'fmnist-quick-no-color': crop 0.2-1 + flip; the second view
    # is not used) keeps the 4 x 256 rotated images per step at the cost of SimCLR's 2 x 256.
    # kNN (k=200) on a held-out fifth of the *train* split after 10 epochs: 74.1 with the
    # paper's linear head, 76.3 with a 512-wide MLP head, 69.9 at random init (linear probe on
    # the same split: 84.3, 83.8, 81.6). The MLP takes up the rotation-specific last layer that
    # the paper finds in its deepest features (its best CIFAR-10 features are the 2nd block's).
    Config(method="rotation", backbone="small-cnn", augment="fmnist-quick-no-color",
           method_args={"head_hidden_dim": 512},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=10)),
    "RotNet (4 rotations, MLP head) on the embedded Fashion-MNIST subset, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "method.angles": ALL_ROTATIONS,
     "method.head_hidden_dim": "sslbench: an MLP head (measured, see the comment in "
                               "benchmark/recipes/rotation.py); the paper's is linear "
                               "(FeatureLearningRotNet NetworkInNetwork.py)",
     "augment": "sslbench: one mild 20 px view, crop 0.2-1 + flip, no colour (no augmentation "
                "for RotNet was found in the paper)"},
))

register_recipe(Recipe(
    "rotation-cifar10",
    Config(method="rotation", backbone="resnet18-small", augment="linear-eval-no-crop",
           method_args={"head_hidden_dim": 0},
           data=DataConfig(dataset="cifar10", batch_size=128),
           optim=OptimConfig(name="sgd", base_lr=0.2, lr_scaling="linear", weight_decay=5e-4,
                             momentum=0.9),
           train=TrainConfig(epochs=200)),
    "RotNet on CIFAR-10, the official CIFAR-10 schedule on a small-stem ResNet-18 (the paper's "
    "NIN 4-block network reaches 89.06 from its 2nd block).",
    {"all": "gidariss/FeatureLearningRotNet CIFAR-10 config: batch 128, SGD lr "
            "0.1 (= base_lr 0.2 x 128 / 256), momentum 0.9, wd 5e-4, 200 epochs. Deviations: "
            "Nesterov momentum (sslbench's SGD has none); a cosine instead of lr x 0.2 at epochs "
            "60/120/160; a small-stem ResNet-18 instead of the NIN (sslbench has no NIN backbone), "
            "evaluated on its pooled output, not on the 2nd block",
     "method.angles": ALL_ROTATIONS,
     "augment": "not in the paper as read; flip only ('linear-eval-no-crop'): sslbench's augmentation "
                "has no pad-and-crop translation, and RandomResizedCrop is far stronger"},
))

register_recipe(Recipe(
    "rotation-imagenet",
    Config(method="rotation", backbone="resnet50", augment="linear-eval",
           method_args={"head_hidden_dim": 0},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 128}),
           optim=OptimConfig(name="sgd", base_lr=0.4, lr_scaling="linear", weight_decay=1e-4,
                             momentum=0.9, warmup_epochs=5),
           train=TrainConfig(epochs=70)),
    "RotNet with a ResNet-50 on ImageNet (the paper used AlexNet), mmselfsup's recipe: 70 epochs, "
    "128 images x 4 rotations per batch (47.0 linear in mmselfsup's model zoo).",
    {"all": "open-mmlab/mmselfsup configs/selfsup/rotation_pred/rotation-pred_resnet50_8xb16-"
            "steplr-70e_in1k.py and r50.py: ResNet-50 (the paper's ImageNet network is AlexNet: "
            "conv4 50.0 / conv5 43.8 non-linear), 16 images x 8 GPUs = 128 per "
            "batch (512 rotated), SGD lr 0.2 (= base_lr 0.4 x 128 / 256), momentum 0.9, wd 1e-4, "
            "70 epochs, linear warm-up 5 epochs, linear head on the pooled features (ClsHead); "
            "47.0 linear (mmselfsup docs/en/model_zoo.md). Deviations: a cosine instead of lr "
            "x 0.1 at epochs 30 and 50; the warm-up starts at 0 (mmselfsup: 0.1 x lr)",
     "method.angles": ALL_ROTATIONS,
     "augment": "mmselfsup r50.py train_pipeline: RandomResizedCrop 224 + flip = 'linear-eval'"},
))
