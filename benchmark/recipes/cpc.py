"""Recipes of CPC v2 (Hénaff et al., ICML 2020): quick (CPU) and ImageNet, plus the one-view
image-level augmentation the patch grid is cut from."""

from __future__ import annotations

from dataclasses import replace

from sslbench.benchmark.augment import AugmentRecipe, get_augment_recipe, register_augment_recipe
from sslbench.benchmark.config import Config, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET_DATA,
    QUICK_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    Recipe,
    register_recipe,
)

PSEUDOCODE = ("Hénaff et al. 2020 App. A pseudocode (pixelCNN, CPC): 5 residual blocks of 256 channels "
              "(1x1, 1x3, top-padded 2x1 conv), target_dim 64, emb_scale 0.1, steps_to_ignore 2, "
              "steps_to_predict 3 (only the row 3 below is predicted)")

# CPC takes one view per image: the grid is cut from it and each patch is augmented on its own
# inside the method (random crop, flip, jitter / colour dropping, with ctx.generator).
register_augment_recipe(AugmentRecipe(
    "cpc-fmnist", (replace(get_augment_recipe("fmnist").views[0], size=None),),
    "One view of 'fmnist' at the dataset size (the patch grid needs the whole 28 px image): "
    "RandomResizedCrop 0.2-1, flip 0.5, brightness and contrast +-0.4 p 0.8. CPC v2's image-level "
    "augmentation is NR; its patch-level one is done by the method.",
))  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Quick recipe: the embedded dataset on a CPU (sslbench's own settings).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "cpc-quick",
    # Measured on the 2-core CPU (val kNN k=200 on a held-out fifth of the train split; random init
    # of the same grid in brackets): a 5x5 grid of 8 px patches 5 px apart (random init 60.6) gives
    # 66.1 after 1 epoch and 70.0 after 5; 12 px patches 4 px apart (random init 66.0) cost 3x the
    # encoder time per step and were not trained. The InfoNCE over all 6,400 patches of a batch
    # of 256 dominates a step (0.4 s per direction of 1.5 s CPU), so: k = 2 only (the first row
    # that does not overlap the context's patches, as the pseudocode's k = 3 for 64 px patches
    # 32 px apart), 2 directions (each adds a context network and a loss), a 64-wide PixelCNN
    # (256 in the paper: about 5x its time). About 1 CPU-minute per epoch with one thread.
    Config(method="cpc", backbone="small-cnn", augment="cpc-fmnist",
           method_args={"patch_size": 8, "patch_stride": 5, "norm": "layer", "context_hidden": 64,
                        "context_blocks": 5, "min_rows_ahead": 2, "max_rows_ahead": 2, "directions": 2,
                        "patch_crop_scale": 0.75, "patch_flip_p": 0.5, "patch_jitter": 0.2},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=10)),
    "CPC v2 on the embedded Fashion-MNIST subset: a 5x5 grid of 8 px patches, CPU-sized.",
    {**QUICK_SOURCES,
     "method.context_blocks, target_dim, emb_scale": PSEUDOCODE,
     "method.patch_size, patch_stride, rows_ahead, directions, context_hidden":
         "sslbench: measured on the 2-core CPU (comment in benchmark/recipes/cpc.py)",
     "method.norm, patch_flip_p": "CPC v2 §4.1: layer norm in the encoder; random horizontal flips of patches",
     "method.patch_crop_scale, patch_jitter": "sslbench: per-patch crop 0.75-1 of the side and brightness/"
                                              "contrast +-0.2 stand in for colour dropping on grayscale data "
                                              "(not tuned)"},
))

# ---------------------------------------------------------------------------------------------
# ImageNet (ResNet-50 on 64 px patches).
# ---------------------------------------------------------------------------------------------

register_recipe(Recipe(
    "cpc-imagenet",
    Config(method="cpc", backbone="resnet50", augment="linear-eval",
           method_args={"patch_size": 64, "patch_stride": 32, "norm": "layer", "context_hidden": 256,
                        "context_blocks": 5, "target_dim": 64, "emb_scale": 0.1, "min_rows_ahead": 3,
                        "max_rows_ahead": 3, "directions": 4, "patch_crop_scale": 1.0,
                        "patch_flip_p": 0.5, "color_drop_p": 1.0, "patch_jitter": 0.0},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 512, "image_size": 256}),
           optim=OptimConfig(name="adamw", base_lr=4e-4, lr_scaling="none", weight_decay=0.0,
                             warmup_epochs=0, final_lr_ratio=1.0),
           train=TrainConfig(epochs=200)),
    "CPC v2 with ResNet-50 on ImageNet: 7x7 grid of 64 px patches, batch 512 (63.8 linear).",
    {"all": "Hénaff et al. 2020 and SimCLR Table C.1: ResNet-161 in the paper's "
            "headline (71.5 linear), ResNet-50 63.8; PixelCNN-style context network, InfoNCE, batch "
            "512 (patches enlarge the effective batch), ~200 epochs. Optimiser, learning rate and "
            "schedule: NR (Adam 4e-4, constant, is sslbench's unverified guess, not the paper's)",
     "method.context_*, target_dim, emb_scale, rows_ahead": PSEUDOCODE,
     "method.patch_size, patch_stride, data.image_size": "CPC v1 (van den Oord et al. 2018 §3.2): a 7x7 "
                                                         "grid of 64 px patches overlapping by 32 px on "
                                                         "256 px images; CPC v2's larger patches ('LP') "
                                                         "and crop size: NR (unverified)",
     "method.norm": "CPC v2 §4.1 'LN': layer normalisation instead of batch norm in the encoder",
     "method.directions": "CPC v2 Fig. 3: bottom-up ('BU') and horizontal ('HP') predictions added to "
                          "top-down, as recalled (unverified); secondary summaries of §4.1 say 'contexts "
                          "from both directions'",
     "method.patch_flip_p, color_drop_p": "CPC v2 §4.1: random horizontal flips and colour dropping "
                                          "(two of three channels dropped in each patch); "
                                          "probabilities NR. Further patch augmentations ('PA'): NR",
     "augment": "image level: one RandomResizedCrop 0.08-1 + flip view ('linear-eval'); CPC v2's "
                "image-level augmentation is NR"},
))
