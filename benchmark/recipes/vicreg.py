"""Recipes of VICReg (Bardes, Ponce, LeCun, ICLR 2022): quick, CIFAR-10, CIFAR-100, ImageNet-100
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

# data.batch_size is the global batch; the repo gathers the embeddings of all GPUs
# (FullGatherLayer) before the variance and covariance terms.
GLOBAL_STATS = ("facebookresearch/vicreg main_vicreg.py: FullGatherLayer gathers every GPU's "
                "embeddings (with gradients) for the variance and covariance terms")

register_recipe(Recipe(
    "vicreg-quick",
    # Expander 1024-1024-1024 instead of 8192-8192-8192, to fit the 2-core CPU (a step costs
    # ~1.5x a 512-wide one, ~0.4x a 2048-wide one); the paper's ablation finds accuracy rising
    # with the expander's width.
    Config(method="vicreg", backbone="small-cnn", augment="fmnist-quick",
           method_args={"proj_hidden_dim": 1024, "proj_dim": 1024, "proj_layers": 3,
                        "sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0,
                        "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "VICReg on the embedded Fashion-MNIST subset, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "method.sim_weight, var_weight, cov_weight": "Bardes et al. 2022 §4.1: lambda = mu = 25, nu = 1",
     "method.gather_distributed": GLOBAL_STATS},
))

register_recipe(Recipe(
    "vicreg-cifar10",
    # var_weight 50: solo-learn sums the two views' variance terms (the paper's Eq. 6) where
    # sslbench averages them (the official code), so 2 x its 25 gives the same loss.
    Config(method="vicreg", backbone="resnet18-small", augment="byol-small",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 2048, "proj_layers": 3,
                        "sim_weight": 25.0, "var_weight": 50.0, "cov_weight": 1.0,
                        "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=256),
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-4,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=1000)),
    "VICReg on CIFAR-10 with ResNet-18 (solo-learn's recipe, 92.07 online linear; the paper has "
    "no CIFAR recipe).",
    {"all": "vturrisi/solo-learn scripts/pretrain/cifar/vicreg.yaml: LARS lr 0.3 at bs 256 (eta "
            "0.02, biases and BN excluded from LARS and wd), wd 1e-4, expander 2048-2048-2048, "
            "weights 25/25/1 (its variance term is the sum over views: var_weight 50 here), 1000 "
            "epochs, warmup_cosine (10 warm-up epochs, its default). solo-learn also clips the "
            "LARS lr (clip_lr); sslbench's LARS does not (deviation)",
     "augment": "closest registered recipe to solo-learn's: its vicreg.yaml uses crop 0.2-1 and "
                "solarize p 0.1 on both views (byol-small: crop 0.08-1, solarize 0.0/0.2); "
                "ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, flip, no blur agree",
     "method.gather_distributed": GLOBAL_STATS},
))

register_recipe(Recipe(
    "vicreg-imagenet",
    Config(method="vicreg", backbone="resnet50", augment="byol",
           method_args={"proj_hidden_dim": 8192, "proj_dim": 8192, "proj_layers": 3,
                        "sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0,
                        "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 2048}),
           optim=OptimConfig(name="lars", base_lr=0.2, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, final_lr_ratio=0.001),
           train=TrainConfig(epochs=1000)),
    "VICReg ResNet-50 ImageNet, 1000 epochs at batch 2048 (73.2 linear).",
    {"all": "Bardes et al. 2022 §4.1 / App. and facebookresearch/vicreg main_vicreg.py: "
            "LARS (eta 0.001, biases and norms excluded from LARS and wd), "
            "base lr 0.2 x bs/256, 10 warm-up epochs, cosine to 0.001 x the peak, wd 1e-6, bs "
            "2048, 1000 epochs, expander 8192-8192-8192, lambda = mu = 25, nu = 1",
     "augment": "the repo's augmentations.py: BYOL's (blur 1.0/0.1, solarize 0.0/0.2)",
     "method.gather_distributed": GLOBAL_STATS},
))

register_recipe(solo_cifar100("vicreg-cifar10", "vicreg.yaml", "VICReg", 68.54))

register_recipe(Recipe(
    "vicreg-imagenet100",
    # var_weight 50 for solo-learn's 25, as vicreg-cifar10 (its variance term sums the views).
    Config(method="vicreg", backbone="resnet18", augment="byol",
           method_args={"proj_hidden_dim": 2048, "proj_dim": 2048, "proj_layers": 3,
                        "sim_weight": 25.0, "var_weight": 50.0, "cov_weight": 1.0,
                        "gather_distributed": True},
           data=IMAGENET100_DATA,
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-4,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=400)),
    "VICReg on ImageNet-100 with ResNet-18 (solo-learn's recipe; 79.40 linear, 79.22 online).",
    {**IMAGENET100_SOURCES,
     "method, optim": "vturrisi/solo-learn scripts/pretrain/imagenet-100/vicreg.yaml: expander "
                      "2048-2048-2048, weights 25/25/1 (var_weight 50 here, as vicreg-cifar10), "
                      "LARS lr 0.3 at bs 256 (eta 0.02, biases and BN excluded), wd 1e-4, "
                      "warmup_cosine (10 warm-up epochs). " + SOLO_LARS_CLIP,
     "augment": "closest registered recipe to the file's own augmentations (crop 0.2-1, "
                "ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur 0.5 and solarize 0.1 "
                "on both views, flip): 'byol' crops 0.08-1 with blur 1.0 / 0.1 and solarize 0.0 / "
                "0.2 (deviation)",
     "description": SOLO_IMAGENET100_TABLE + ": 79.40 offline linear / 79.22 online top-1",
     "method.gather_distributed": GLOBAL_STATS},
))
