"""Recipes of SimSiam (Chen & He, CVPR 2021): quick, CIFAR-10, CIFAR-100, ImageNet-100 and
ImageNet."""

from __future__ import annotations

from sslbench.benchmark.config import Config, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET100_DATA,
    IMAGENET100_SOURCES,
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    SOLO_CIFAR100_TABLE,
    SOLO_IMAGENET100_TABLE,
    Recipe,
    register_recipe,
)

register_recipe(Recipe(
    "simsiam-quick",
    # Heads sized for the 2-core CPU and the 256-d small CNN (the paper's are 2048 wide): a
    # 2-layer projector as on CIFAR (App. D), 512 -> 128, and the paper's 4x predictor
    # bottleneck, 128 -> 32 -> 128 (2048 -> 512 -> 2048 in the paper).
    Config(method="simsiam", backbone="small-cnn", augment="fmnist-quick",
           method_args={"proj_hidden_dim": 512, "proj_dim": 128, "proj_layers": 2,
                        "pred_hidden_dim": 32, "fix_pred_lr": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "SimSiam on the embedded Fashion-MNIST subset, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "method.proj_layers": "SimSiam App. D: 2-layer projector on small images (CIFAR-10)",
     "method.pred_hidden_dim": "SimSiam §4: predictor bottleneck of 1/4 of the output width",
     "method.fix_pred_lr": "SimSiam §4 / facebookresearch/simsiam README (--fix-pred-lr)"},
))

register_recipe(Recipe(
    "simsiam-cifar10",
    Config(method="simsiam", backbone="resnet18-small", augment="mocov2-small",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 2048, "proj_layers": 2,
                        "pred_hidden_dim": 512, "fix_pred_lr": True},
           data=DataConfig(dataset="cifar10", batch_size=512),
           optim=OptimConfig(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=5e-4,
                             momentum=0.9),
           train=TrainConfig(epochs=800)),
    "SimSiam on CIFAR-10 with ResNet-18 (the paper's App. D setting; 91.8 linear).",
    {"all": "Chen & He 2021 App. D: CIFAR ResNet-18, 2-layer projector, "
            "2048-d output, SGD lr 0.03 x bs/256, momentum 0.9, cosine, wd 5e-4, bs 512, 800 "
            "epochs, 32 px, no blur -> 91.8 linear (SimCLR same setting 91.1)",
     "augment": "the repo's MoCo v2 augmentation (RandomResizedCrop 0.2-1, ColorJitter(0.4, 0.4, "
                "0.4, 0.1) p 0.8, grayscale 0.2, flip) without the blur, as App. D",
     "method.proj_hidden_dim, pred_hidden_dim": "builder.py defaults (2048-wide projector, "
                                                "512-wide predictor bottleneck)"},
))

register_recipe(Recipe(
    "simsiam-imagenet",
    Config(method="simsiam", backbone="resnet50", augment="mocov2",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 2048, "proj_layers": 3,
                        "pred_hidden_dim": 512, "fix_pred_lr": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 512}),
           optim=OptimConfig(name="sgd", base_lr=0.05, lr_scaling="linear", weight_decay=1e-4,
                             momentum=0.9),
           train=TrainConfig(epochs=100)),
    "SimSiam ResNet-50 ImageNet, 100 epochs at batch 512 (68.1 linear).",
    {"all": "Chen & He 2021 §4 and facebookresearch/simsiam README: SGD lr "
            "0.05 x bs/256, momentum 0.9, wd 1e-4 (also on BN and biases), cosine, no warm-up "
            "below bs 1024, bs 512, 100 epochs, --fix-pred-lr, 3-layer 2048 projector, "
            "2048 -> 512 -> 2048 predictor -> 68.1 (Table 2 / README)",
     "augment": "the repo's augmentation: MoCo v2 'aug+' (blur p 0.5)"},
))

# solo-learn's SimSiam (solo/methods/simsiam.py): a 3-layer projector ending in a non-affine BN, a
# 2-layer predictor, the predictor at a fixed lr (static_lr) = the paper's ImageNet heads.
_SOLO_HEADS = ("solo-learn solo/methods/simsiam.py: 3-layer projector (last BN non-affine), "
               "2-layer predictor trained at the base lr without decay (static_lr, = fix_pred_lr)")

register_recipe(Recipe(
    "simsiam-cifar100",
    Config(method="simsiam", backbone="resnet18-small", augment="simclr-small",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 2048, "proj_layers": 3,
                        "pred_hidden_dim": 512, "fix_pred_lr": True},
           data=DataConfig(dataset="cifar100", batch_size=256),
           optim=OptimConfig(name="sgd", base_lr=0.5, lr_scaling="linear", weight_decay=1e-5,
                             momentum=0.9, warmup_epochs=10),
           train=TrainConfig(epochs=1000)),
    "SimSiam on CIFAR-100 with ResNet-18 (solo-learn's recipe; 66.04 online linear).",
    {"all": "vturrisi/solo-learn scripts/pretrain/cifar/simsiam.yaml (one file for CIFAR-10 and "
            "-100): projector 2048 -> 2048, predictor 512, SGD lr 0.5 at bs 256, wd 1e-5, "
            "warmup_cosine (10 warm-up epochs), 1000 epochs",
     "method.proj_layers, fix_pred_lr": _SOLO_HEADS,
     "augment": "closest registered recipe to solo-learn's cifar/augmentations/symmetric_weak.yaml "
                "(crop 0.08-1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, flip, blur p "
                "0.5): 'simclr-small' has all of it but the blur (deviation)",
     "description": SOLO_CIFAR100_TABLE + ": 66.04 top-1"},
))

register_recipe(Recipe(
    "simsiam-imagenet100",
    Config(method="simsiam", backbone="resnet18", augment="byol",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 2048, "proj_layers": 3,
                        "pred_hidden_dim": 512, "fix_pred_lr": True},
           data=IMAGENET100_DATA,
           optim=OptimConfig(name="sgd", base_lr=0.5, lr_scaling="linear", weight_decay=1e-5,
                             momentum=0.9, warmup_epochs=10),
           train=TrainConfig(epochs=400)),
    "SimSiam on ImageNet-100 with ResNet-18 (solo-learn's recipe; 78.72 linear, 74.54 online).",
    {**IMAGENET100_SOURCES,
     "method, optim": "vturrisi/solo-learn scripts/pretrain/imagenet-100/simsiam.yaml (as read at "
                      "commit d418d09): projector 2048 -> 2048, predictor 512, SGD lr 0.5 at bs "
                      "256, wd 1e-5, warmup_cosine (10 warm-up epochs)",
     "method.proj_layers, fix_pred_lr": _SOLO_HEADS,
     "augment": "that file's augmentations: asymmetric.yaml (crop 0.08-1, ColorJitter(0.4, 0.4, "
                "0.2, 0.1) p 0.8, grayscale 0.2, blur 1.0 / 0.1, solarize 0.0 / 0.2, flip) = "
                "sslbench 'byol'",
     "description": SOLO_IMAGENET100_TABLE + ": 78.72 offline linear / 74.54 online top-1"},
))
