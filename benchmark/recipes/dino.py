"""Recipes of DINO (Caron et al., ICCV 2021): quick (CPU), CIFAR-10, CIFAR-100,
ImageNet-100 and ImageNet (ViT-S/16, ResNet-50)."""

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

# The official DINOLoss all-reduces the teacher's batch mean before the centre update; with it on,
# the centre (and so the run) does not depend on the number of GPUs the global batch is split over.
CENTER_ALL_REDUCE = ("facebookresearch/dino main_dino.py DINOLoss.update_center: "
                     "dist.all_reduce of the teacher outputs' batch sum")

# ---------------------------------------------------------------------------------------------
# Quick recipe: the embedded dataset on a CPU (sslbench's own settings, measured on the 2-core CPU).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "dino-quick",
    # No multi-crop and a BN head, as the published small-image DINO recipes (lightly's CIFAR-10
    # benchmark: n_local_views=0, BN head; solo-learn's CIFAR recipe: 2 crops). Measured
    # on a held-out part of the train split (kNN k=200 after 6 epochs; random init 71.4): with
    # 4 local 12 px views (fmnist-quick+4x12, crop scale 0.05-0.14 of a 28 px image) and no BN in
    # the head 67.6, without local views and with the BN head 73.5 (the two changes were tried
    # together, not separately).
    Config(method="dino", backbone="small-cnn", augment="fmnist-quick",
           # Heads sized like simclr/byol-quick (512 hidden, 128 bottleneck) for a 388k-parameter
           # encoder instead of 2048/256; K = 4096 as solo-learn's CIFAR recipe (65,536 is sized
           # for ImageNet's 1.28M images, not 10k). EMA 0.99 as byol-quick and lightly's CIFAR
           # DINO: with 0.996 the teacher would barely move in the few hundred steps of a quick
           # run. Teacher temperature: the repo default (0.04, no warm-up), since a 30-epoch
           # warm-up outlasts the run.
           method_args={"hidden_dim": 512, "bottleneck_dim": 128, "out_dim": 4096, "use_bn_in_head": True,
                        "base_momentum": 0.99, "teacher_temp": 0.04, "warmup_teacher_temp": 0.04,
                        "warmup_teacher_temp_epochs": 0, "gather_distributed": True},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=22)),
    "DINO on the embedded Fashion-MNIST subset (2 views, BN head), CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "augment, method.use_bn_in_head": "lightly-ai/lightly docs/source/getting_started/benchmarks/"
                                       "cifar10_benchmark.py DINOModel (DINOCollateFunction "
                                       "n_local_views=0; DINOProjectionHead batch_norm=True); "
                                       "measured on held-out train images (comment above)",
     "method.out_dim": "vturrisi/solo-learn scripts/pretrain/cifar/dino.yaml: num_prototypes 4096",
     "method.teacher_temp, warmup_*": "facebookresearch/dino main_dino.py defaults (vanilla "
                                      "recipe): teacher_temp 0.04, no warm-up",
     "method.base_momentum": "byol-quick (BYOL §5 ablation setting 0.99); lightly's CIFAR-10 DINO "
                             "uses m = 0.99",
     "method.student_temp, center_momentum, freeze_last_layer, clip_grad": "DINO paper / "
     "main_dino.py defaults (0.1, 0.9, 1 epoch, 3.0)",
     "method.gather_distributed": CENTER_ALL_REDUCE},
))

# ---------------------------------------------------------------------------------------------
# CIFAR-10 (small-stem ResNet-18, 32 px).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "dino-cifar10",
    Config(method="dino", backbone="resnet18-small", augment="byol-small",
           method_args={"hidden_dim": 2048, "bottleneck_dim": 256, "out_dim": 4096,
                        "base_momentum": 0.9995, "teacher_temp": 0.07, "warmup_teacher_temp": 0.04,
                        "warmup_teacher_temp_epochs": 0, "clip_grad": 0.0, "freeze_last_layer": 1,
                        "norm_last_layer": True, "use_bn_in_head": False, "student_temp": 0.1,
                        "gather_distributed": True},
           data=DataConfig(dataset="cifar10", batch_size=256),
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=1000)),
    "DINO on CIFAR-10 with ResNet-18 (solo-learn's recipe; the paper has no CIFAR pretraining).",
    {"all": "vturrisi/solo-learn scripts/pretrain/cifar/dino.yaml: ResNet-18, 2048/256 head, 4096 "
            "prototypes, tau 0.9995 -> 1, LARS lr 0.3 at bs 256 (eta 0.02, biases and norms "
            "excluded), wd 1e-6, 1000 epochs, asymmetric augmentations (two 32 px crops, no "
            "multi-crop); warm-up 10 epochs is solo-learn's warmup_cosine default. solo-learn "
            "also clips the LARS lr (clip_lr); sslbench's LARS does not (deviation)",
     "method.*temp*, clip_grad, freeze_last_layer, norm_last_layer, use_bn_in_head":
         "solo-learn solo/methods/dino.py add_and_assert_specific_cfg defaults: student 0.1, "
         "teacher 0.07, warm-up 0.04 over 0 epochs (i.e. none), clip_grad 0, freeze 1 epoch, "
         "norm_last_layer true, no BN in head",
     "method.gather_distributed": CENTER_ALL_REDUCE},
))

# ---------------------------------------------------------------------------------------------
# ImageNet (224 px, an ImageFolder).
# ---------------------------------------------------------------------------------------------

# Both ImageNet recipes: 2 global 224 px views + 8 local 96 px views (main_dino.py default
# local_crops_number 8; the paper's best ViT-S runs use 10, §5.4). Deviations of the augmentation:
# sslbench's 'byol' views crop 0.08-1 (DINO: 0.4-1 for ViT, 0.14-1 for ResNet-50), local views
# crop 0.05-0.14 (DINO ViT: 0.05-0.4) with the first view's blur p 1.0 (DINO: 0.5).
DINO_IMAGENET_AUG = "byol+8x96"

register_recipe(Recipe(
    "dino-imagenet",
    Config(method="dino", backbone="vit_small_patch16_224", augment=DINO_IMAGENET_AUG,
           method_args={"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256,
                        "norm_last_layer": False, "base_momentum": 0.996, "teacher_temp": 0.07,
                        "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 30,
                        "student_temp": 0.1, "center_momentum": 0.9, "freeze_last_layer": 1,
                        "clip_grad": 3.0, "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 1024}),
           # final_lr_ratio: min_lr 1e-6 / peak 0.0005 x 1024/256 = 2e-3 -> 5e-4. Weight decay:
           # DINO raises it 0.04 -> 0.4 on a cosine; sslbench's is fixed, so 0.04 (deviation).
           optim=OptimConfig(name="adamw", base_lr=0.0005, lr_scaling="linear", weight_decay=0.04,
                             warmup_epochs=10, final_lr_ratio=5e-4),
           train=TrainConfig(epochs=300)),
    "DINO ViT-S/16 ImageNet, the README's 300-epoch 'boosted' recipe (73.3 kNN / 76.1 linear).",
    {"all": "facebookresearch/dino README 'Boosting DINO performance' full command: vit_small "
            "(deit_small), --epochs 300 --teacher_temp 0.07 --warmup_teacher_temp_epochs 30 "
            "--norm_last_layer false, on 2 nodes x 8 GPUs x 64 = batch 1024; main_dino.py "
            "defaults: AdamW lr 0.0005 x bs/256 after 10 warm-up epochs, cosine to min_lr 1e-6, "
            "wd 0.04 -> 0.4 (cosine; fixed 0.04 here), clip_grad 3.0, freeze_last_layer 1, "
            "out_dim 65536, momentum_teacher 0.996, student temp 0.1, centre momentum 0.9, "
            "drop_path 0.1 (sslbench's backbones have no drop path: deviation)",
     "augment": "2x224 + 8x96 multi-crop (main_dino.py defaults); crop scales and local blur "
                "differ from DINO's (see the comment above DINO_IMAGENET_AUG)",
     "method.gather_distributed": CENTER_ALL_REDUCE},
))
register_recipe(Recipe(
    "dino-resnet50-imagenet",
    Config(method="dino", backbone="resnet50", augment=DINO_IMAGENET_AUG,
           method_args={"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256,
                        "norm_last_layer": True, "base_momentum": 0.996, "teacher_temp": 0.04,
                        "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
                        "freeze_last_layer": 1, "clip_grad": 3.0, "gather_distributed": True},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 512}),
           # min_lr 1e-6 / peak 0.03 x 512/256 = 0.06 -> final_lr_ratio 1/60000.
           optim=OptimConfig(name="sgd", base_lr=0.03, lr_scaling="linear", weight_decay=1e-4,
                             warmup_epochs=10, final_lr_ratio=1e-6 / 0.06),
           train=TrainConfig(epochs=100)),
    "DINO ResNet-50 ImageNet, the README's 100-epoch ResNet-50 command (8 GPUs x 64).",
    {"all": "facebookresearch/dino README 'ResNet-50 and other convnets trainings': --arch "
            "resnet50 --optimizer sgd --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4 "
            "--global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14, 8 GPUs x 64 = batch 512, "
            "100 epochs; main_dino.py defaults otherwise (10 warm-up epochs, min_lr 1e-6, "
            "teacher temp 0.04 without warm-up, momentum 0.996, out_dim 65536, clip_grad 3.0, "
            "freeze_last_layer 1, no BN in head, 8 local crops)",
     "augment": "2x224 + 8x96 multi-crop; local crops 0.05-0.14 as DINO-RN50, global 0.08-1 "
                "instead of 0.14-1 (deviation)",
     "method.gather_distributed": CENTER_ALL_REDUCE},
))

register_recipe(solo_cifar100("dino-cifar10", "dino.yaml", "DINO", 66.76))

register_recipe(Recipe(
    "dino-imagenet100",
    Config(method="dino", backbone="resnet18", augment="byol",
           method_args={"hidden_dim": 2048, "bottleneck_dim": 256, "out_dim": 4096,
                        "base_momentum": 0.9995, "teacher_temp": 0.07, "warmup_teacher_temp": 0.04,
                        "warmup_teacher_temp_epochs": 50, "clip_grad": 0.0, "freeze_last_layer": 1,
                        "norm_last_layer": True, "use_bn_in_head": False, "student_temp": 0.1,
                        "gather_distributed": True},
           data=IMAGENET100_DATA,
           optim=OptimConfig(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
                             warmup_epochs=10, lars_eta=0.02),
           train=TrainConfig(epochs=400)),
    "DINO on ImageNet-100 with ResNet-18 (solo-learn's recipe; 74.92 linear, 74.84 online).",
    {**IMAGENET100_SOURCES,
     "method, optim": "vturrisi/solo-learn scripts/pretrain/imagenet-100/dino.yaml: 2048/256 head, "
                      "4096 prototypes, teacher temperature warmed up over 50 epochs, tau 0.9995 -> "
                      "1, LARS lr 0.3 at bs 256 (eta 0.02, biases and norms excluded), wd 1e-6, "
                      "warmup_cosine (10 warm-up epochs), two crops (no multi-crop). " + SOLO_LARS_CLIP,
     "method.*temp*, clip_grad, freeze_last_layer, norm_last_layer, use_bn_in_head":
         "solo-learn solo/methods/dino.py defaults, as dino-cifar10",
     "augment": "solo-learn imagenet-100/augmentations/asymmetric.yaml = sslbench 'byol'",
     "description": SOLO_IMAGENET100_TABLE + ": 74.92 offline linear / 74.84 online top-1",
     "method.gather_distributed": CENTER_ALL_REDUCE},
))
