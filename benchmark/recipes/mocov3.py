"""Recipes of MoCo v3 (Chen, Xie, He, ICCV 2021): quick, CIFAR-10, CIFAR-100, ImageNet-100
(ResNet-18), ImageNet ResNet-50 and ViT."""

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

# Keys are contrasted against the whole global batch, as the repo's concat_all_gather does: the
# same config hash then means the same negatives on 1 GPU or 8 (data.batch_size is global).
_GLOBAL_KEYS = ("facebookresearch/moco-v3 moco/builder.py: keys of all GPUs gathered "
                "(concat_all_gather, no gradient), labels offset by rank x N")
_REPO = "facebookresearch/moco-v3 CONFIG.md / main_moco.py"

register_recipe(Recipe(
    "mocov3-quick",
    # Heads sized like the other quick recipes (512 hidden, 128 out; the paper's are 4096 / 256)
    # for the 256-d small CNN; ResNet-style heads (2-layer projector, predictor without output
    # BN) since the small CNN is a convnet. tau 0.2: the small-image value (solo-learn CIFAR),
    # at batch 256 rather than the paper's 4096 (tau 1.0 for ResNet-50).
    Config(method="mocov3", backbone="small-cnn", augment="fmnist-quick",
           method_args={"temperature": 0.2, "proj_hidden_dim": 512, "proj_dim": 128,
                        "pred_hidden_dim": 512, "proj_layers": 2, "pred_last_bn": False,
                        "base_momentum": 0.99, "momentum_cosine": True, "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "MoCo v3 on the embedded Fashion-MNIST subset, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "method.temperature": "vturrisi/solo-learn scripts/pretrain/cifar/mocov3.yaml (tau 0.2 on "
                           "32 px images)",
     "method.base_momentum, momentum_cosine, proj_layers, pred_last_bn": f"{_REPO}: m 0.99 -> 1 "
     "(--moco-m-cos), MoCo_ResNet heads",
     "method.gather_distributed": _GLOBAL_KEYS},
))

register_recipe(Recipe(
    "mocov3-cifar10",
    Config(method="mocov3", backbone="resnet18-small", augment="byol-small",
           method_args={"temperature": 0.2, "proj_hidden_dim": 4096, "proj_dim": 256,
                        "pred_hidden_dim": 4096, "proj_layers": 2, "pred_last_bn": False,
                        "base_momentum": 0.99, "momentum_cosine": True, "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=256),
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=1000)),
    "MoCo v3 on CIFAR-10 with ResNet-18 (solo-learn's recipe; the paper has no CIFAR recipe).",
    {"all": "vturrisi/solo-learn scripts/pretrain/cifar/mocov3.yaml: ResNet-18, heads 4096 / 256 / "
            "4096 (2-layer projector and predictor for ResNets, solo/methods/mocov3.py), tau 0.2, "
            "momentum 0.99 -> 1 (cosine), LARS lr 0.3 at bs 256 (eta 0.02, biases and norms "
            "excluded), wd 1e-6, warmup_cosine (10 warm-up epochs, solo-learn's default), 1000 "
            "epochs, SyncBN. Deviation: solo-learn clips the LARS lr (clip_lr); sslbench's LARS "
            "does not",
     "augment": "solo-learn scripts/pretrain/cifar/augmentations/asymmetric.yaml: crop 0.08-1, "
                "ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, no blur, solarize 0 / 0.2, "
                "flip = 'byol-small'",
     "method.gather_distributed": _GLOBAL_KEYS},
))

register_recipe(Recipe(
    "mocov3-imagenet",
    Config(method="mocov3", backbone="resnet50", augment="byol",
           method_args={"temperature": 1.0, "proj_hidden_dim": 4096, "proj_dim": 256,
                        "pred_hidden_dim": 4096, "proj_layers": 2, "pred_last_bn": False,
                        "base_momentum": 0.99, "momentum_cosine": True, "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 4096}),
           optim=OptimConfig(name="lars", base_lr=0.6, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10),
           train=TrainConfig(epochs=100)),
    "MoCo v3 ResNet-50 ImageNet, 100 epochs (68.9 linear; CONFIG.md).",
    {"all": f"{_REPO}: ResNet-50, bs 4096, LARS (eta 0.001, biases and BN "
            "excluded) base lr 0.6 x bs/256, momentum 0.9, wd 1e-6, 10 warm-up epochs then "
            "half-cycle cosine to 0, 100 epochs, tau 1.0, m 0.99 -> 1 (--moco-m-cos), heads "
            "4096 / 256 (MoCo_ResNet: 2-layer projector, predictor without output BN), SyncBN. "
            "300 epochs: base lr 0.3 (72.8); 1000 epochs: lr 0.3, wd 1.5e-6, m 0.996 (74.6). The "
            "repo's ResNet-50 zero-initialises the last BN of each residual block "
            "(zero_init_residual); timm's default does not (deviation)",
     "augment": "main_moco.py follows BYOL's augmentation (view 1 blur p 1.0; view 2 blur p 0.1 "
                "+ solarize p 0.2; ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8; grayscale 0.2) = "
                "'byol'. Deviation: the ResNet-50 commands use --crop-min=.2; 'byol' crops 0.08-1",
     "method.gather_distributed": _GLOBAL_KEYS},
))

register_recipe(Recipe(
    "mocov3-vit-imagenet",
    Config(method="mocov3", backbone="vit_small_patch16_224", augment="byol",
           method_args={"temperature": 0.2, "proj_hidden_dim": 4096, "proj_dim": 256,
                        "pred_hidden_dim": 4096, "proj_layers": 3, "pred_last_bn": True,
                        "base_momentum": 0.99, "momentum_cosine": True, "freeze_patch_embed": True,
                        "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 4096}),
           optim=OptimConfig(name="adamw", base_lr=1.5e-4, lr_scaling="linear", weight_decay=0.1,
                             warmup_epochs=40),
           train=TrainConfig(epochs=300)),
    "MoCo v3 ViT-S/16 ImageNet, 300 epochs (73.2 linear at batch 4096; CONFIG.md).",
    {"all": f"{_REPO} ViT-Small commands: AdamW (betas 0.9, 0.999) lr 1.5e-4 x "
            "bs/256, wd 0.1, bs 4096, 300 epochs, 40 warm-up epochs then cosine, tau 0.2, m 0.99 "
            "-> 1 (--moco-m-cos), frozen random patch projection (--stop-grad-conv1), heads "
            "4096 / 256 (MoCo_ViT: 3-layer projector, predictor with output BN). Deviations: the "
            "repo's AdamW decays every parameter, sslbench exempts biases and norms; the repo's "
            "ViT-S has 12 heads and a fixed 2-D sin-cos position embedding, timm's "
            "vit_small_patch16_224 has 6 heads and a learned one",
     "augment": "main_moco.py: BYOL's augmentation with the default --crop-min 0.08 = 'byol'",
     "method.gather_distributed": _GLOBAL_KEYS},
))

register_recipe(solo_cifar100("mocov3-cifar10", "mocov3.yaml", "MoCo v3", 68.83))

register_recipe(Recipe(
    "mocov3-imagenet100",
    Config(method="mocov3", backbone="resnet18", augment="byol",
           method_args={"temperature": 0.2, "proj_hidden_dim": 4096, "proj_dim": 256,
                        "pred_hidden_dim": 4096, "proj_layers": 2, "pred_last_bn": False,
                        "base_momentum": 0.99, "momentum_cosine": True, "gather_distributed": True},
           data=IMAGENET100_DATA,
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=400)),
    "MoCo v3 on ImageNet-100 with ResNet-18 (solo-learn's recipe; 80.36 linear and online).",
    {**IMAGENET100_SOURCES,
     "method, optim": "vturrisi/solo-learn scripts/pretrain/imagenet-100/mocov3.yaml: heads 4096 / "
                      "256 / 4096 (2-layer projector and predictor for ResNets), tau 0.2, momentum "
                      "0.99 -> 1 (cosine), LARS lr 0.3 at bs 256 (eta 0.02, biases and norms "
                      "excluded), wd 1e-6, warmup_cosine (10 warm-up epochs). " + SOLO_LARS_CLIP,
     "augment": "solo-learn imagenet-100/augmentations/asymmetric.yaml = sslbench 'byol'",
     "description": SOLO_IMAGENET100_TABLE + ": 80.36 offline linear / 80.36 online top-1",
     "method.gather_distributed": _GLOBAL_KEYS},
))
