"""Recipes of NNCLR (Dwibedi et al., ICCV 2021): quick, CIFAR-10, CIFAR-100, ImageNet-100, ImageNet.

No official code was released; the CIFAR-10 recipe is solo-learn's. The paper's own text was not
reachable in the reference index (its training hyper-parameters were not found): the
ImageNet recipe's head sizes are the paper's as quoted by lightly's heads, the support-set size
is the best of the paper's support-set ablation, and the optimiser values marked UNVERIFIED below
must be checked against arXiv 2104.14548 before a reproduction is claimed.
"""

from __future__ import annotations

from sslbench.benchmark.config import Config, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET100_DATA,
    IMAGENET100_SOURCES,
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    SIMCLR_GLOBAL_NEGATIVES,
    SOLO_IMAGENET100_TABLE,
    SOLO_LARS_CLIP,
    Recipe,
    register_recipe,
    solo_cifar100,
)

_GLOBAL = ("data.batch_size is the global batch: the predictions and neighbours of the whole "
           "global batch are the negatives on any number of GPUs (solo-learn gathers p, VISSL "
           "gathers both); as SimCLR: " + SIMCLR_GLOBAL_NEGATIVES)

register_recipe(Recipe(
    "nnclr-quick",
    Config(method="nnclr", backbone="small-cnn", augment="fmnist-quick",
           # Heads sized like byol-quick (512 hidden, 128 out) for the 256-d small CNN; a support
           # set of 4,096 (0.4 of an epoch of the 10,000 images; the paper's is 98,304 of 1.28 M);
           # tau 0.2 as solo-learn's small-image recipe.
           method_args={"temperature": 0.2, "support_set_size": 4096, "proj_hidden_dim": 512,
                        "proj_dim": 128, "pred_hidden_dim": 512, "symmetric": True,
                        "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "NNCLR (nearest-neighbour positives) on the embedded Fashion-MNIST subset, CPU-sized.",
    {**QUICK_SOURCES,
     "method.support_set_size": "sslbench: 4,096 entries (MoCo's CIFAR-10 demo queue size; the paper's "
                                "smallest ablated set is 8,192 for ImageNet)",
     "method.temperature": "vturrisi/solo-learn scripts/pretrain/cifar/nnclr.yaml (tau 0.2 on CIFAR)",
     "method.symmetric": "Dwibedi et al. 2021 §3.2 symmetrised loss (VISSL nnclr_loss, Keras example)",
     "method.gather_distributed": _GLOBAL},
))

register_recipe(Recipe(
    "nnclr-cifar10",
    Config(method="nnclr", backbone="resnet18-small", augment="byol-small",
           method_args={"temperature": 0.2, "support_set_size": 65536, "proj_hidden_dim": 2048,
                        "proj_dim": 256, "pred_hidden_dim": 4096, "symmetric": False,
                        "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=256),
           optim=OptimConfig(name="lars", base_lr=0.4, lr_scaling="linear", weight_decay=1e-5,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=1000)),
    "NNCLR on CIFAR-10 with ResNet-18 (solo-learn's recipe; no paper recipe exists for CIFAR).",
    {"all": "vturrisi/solo-learn scripts/pretrain/cifar/nnclr.yaml: LARS lr 0.4 at bs 256, eta 0.02, "
            "wd 1e-5, tau 0.2, projector 2048 -> 256, predictor 4096, queue 65,536, 1000 epochs, "
            "asymmetric (BYOL) augmentations without blur, warmup_cosine (10 warm-up epochs); its "
            "loss has no transposed term (symmetric=false). solo-learn also clips the LARS lr "
            "(clip_lr) and uses an affine BN on the projector's output; sslbench does neither "
            "(deviations)",
     "method.gather_distributed": _GLOBAL},
))

register_recipe(Recipe(
    "nnclr-imagenet",
    Config(method="nnclr", backbone="resnet50", augment="byol",
           method_args={"temperature": 0.1, "support_set_size": 98304, "proj_hidden_dim": 2048,
                        "proj_dim": 256, "pred_hidden_dim": 4096, "symmetric": True,
                        "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 4096}),
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10),
           train=TrainConfig(epochs=1000)),
    "NNCLR ResNet-50 ImageNet, 1000 epochs, support set 98,304 (75.4-75.6 linear).",
    {"method.support_set_size": "Dwibedi et al. 2021 support-set ablation: 98,304 -> 75.4 linear",
     "method.proj_*, pred_hidden_dim": "the paper's head description as quoted in lightly "
                                       "NNCLRProjectionHead ([2048, 2048, d], BN after every layer, "
                                       "d = 256) and NNCLRPredictionHead ([4096, d])",
     "method.temperature, symmetric": "tau 0.1 (Keras NNCLR example, solo-learn loss default); the "
                                      "§3.2 symmetrised loss as in VISSL's nnclr_loss",
     "augment": "BYOL's augmentations (the paper follows BYOL's recipe)",
     "optim, data.batch_size, train.epochs": "UNVERIFIED (paper text not in the index): LARS, "
                                             "batch 4096, 1000 epochs, 10 warm-up epochs + cosine, "
                                             "base lr 0.3 x bs/256 and wd 1e-6 as in BYOL/SimCLR",
     "method.gather_distributed": _GLOBAL},
))

register_recipe(solo_cifar100("nnclr-cifar10", "nnclr.yaml", "NNCLR", 69.62))

register_recipe(Recipe(
    "nnclr-imagenet100",
    Config(method="nnclr", backbone="resnet18", augment="byol",
           method_args={"temperature": 0.2, "support_set_size": 65536, "proj_hidden_dim": 2048,
                        "proj_dim": 256, "pred_hidden_dim": 4096, "symmetric": False,
                        "gather_distributed": True},
           data=IMAGENET100_DATA,
           optim=OptimConfig(name="lars", base_lr=0.4, lr_scaling="linear", weight_decay=1e-5,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=400)),
    "NNCLR on ImageNet-100 with ResNet-18 (solo-learn's recipe; 80.16 linear, 79.80 online).",
    {**IMAGENET100_SOURCES,
     "method, optim": "vturrisi/solo-learn scripts/pretrain/imagenet-100/nnclr.yaml: tau 0.2, "
                      "projector 2048 -> 256, predictor 4096, queue 65,536, LARS lr 0.4 at bs 256 "
                      "(eta 0.02), wd 1e-5, warmup_cosine (10 warm-up epochs); its loss has no "
                      "transposed term (symmetric=false). As in nnclr-cifar10, solo-learn's affine "
                      "BN on the projector's output is not reproduced (deviation). " + SOLO_LARS_CLIP,
     "augment": "solo-learn imagenet-100/augmentations/asymmetric.yaml = sslbench 'byol'",
     "description": SOLO_IMAGENET100_TABLE + ": 80.16 offline linear / 79.80 online top-1",
     "method.gather_distributed": _GLOBAL},
))
