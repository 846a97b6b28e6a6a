"""Recipes of the jigsaw puzzle pretext task (Noroozi & Favaro, ECCV 2016): quick and ImageNet
(ResNet-50 where the paper used its AlexNet-based Context-Free Network)."""

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

register_recipe(Recipe(
    "jigsaw-quick",
    # 7 px tiles at random places in the 9 px cells of the 28 px view (first view of
    # 'fmnist-no-color': crop 0.2-1 + flip), fed to the small CNN as they are (7 -> 4 -> 2 -> 1
    # -> 1 px maps: it runs on any input >= 1 px). Measured after 10 epochs, kNN (k=200) / linear
    # probe on a held-out fifth of the *train* split: 68.9 / 79.3 (puzzles solved: 71 % of 100
    # classes); tiles not normalised 67.1 / 78.4; tiles upsampled to 14 px 65.3 / 78.5; random
    # init 69.9 / 81.6. No setting beat random init: the encoder learns on 7 px tiles and is
    # evaluated on whole 28 px images (re-estimating its batch-norm statistics on whole images
    # gives 71.1 kNN, so part of the loss is the statistics' mismatch).
    Config(method="jigsaw", backbone="small-cnn", augment="fmnist-no-color",
           method_args={"num_permutations": 100, "tile_size": 7, "input_size": 0,
                        "tile_fc_dim": 128, "hidden_dim": 512},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=10)),
    "Jigsaw puzzles (3 x 3 tiles, 100 permutations) on the embedded Fashion-MNIST subset, "
    "CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "method.num_permutations": "sslbench: 100 of the paper's 1000 for a 10k-image set (the paper "
                                "varies the set's size in its Table 1)",
     "method.tile_size": "the paper's tile / cell ratio (64 px tiles in 85 px cells, about 0.75) "
                         "at 28 px: 7 px tiles in 9 px cells",
     "method.tile_fc_dim, hidden_dim": "sslbench: the CFN's fc6 (512 per tile) / fc7 (4096) scaled "
                                       "down for the 256-d small CNN",
     "augment": "sslbench: one mild 28 px view (crop 0.2-1 + flip, the first of 'fmnist-no-color'); "
                "the positions of the pieces are the task's own randomness"},
))

register_recipe(Recipe(
    "jigsaw-imagenet",
    Config(method="jigsaw", backbone="resnet50", augment="linear-eval-no-crop",
           method_args={"num_permutations": 1000, "permutation_criterion": "max-min",
                        "tile_size": 64, "input_size": 0, "normalize_tiles": True,
                        "tile_fc_dim": 512, "hidden_dim": 4096},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "image_size": 255}),
           optim=OptimConfig(name="sgd", base_lr=0.01, lr_scaling="linear", weight_decay=1e-4,
                             momentum=0.9),
           train=TrainConfig(epochs=70)),
    "Jigsaw puzzles on ImageNet with a ResNet-50 as the tile encoder (the paper's CFN is "
    "AlexNet-based): 1000 permutations, 64 px tiles from 85 px cells of 255 px images.",
    {"backbone": "sslbench: ResNet-50 where the paper used AlexNet conv1-5 (stride 2 first layer); "
                 "ResNet-50 w2x jigsaw reaches 44.6 linear in Kolesnikov et al. 2019 (as "
                 "quoted in MoCo's Table 1)",
     "method.num_permutations, tile_size, normalize_tiles": "Noroozi & Favaro 2016 §3 (and "
         "a secondary summary of the paper): 1000 permutations, 64 px tiles at a random place "
         "in each 85 px cell of a 255 px image, every tile normalised on its own; "
         "bbrattoli/JigsawPuzzlePytorch: Resize 256 + CenterCrop 255, RandomCrop 64 per tile",
     "method.permutation_criterion": "the issue's promise of a minimal Hamming distance (max-min: "
                                     "5 for these 1000, seed 0); the paper's Algorithm 1 maximises "
                                     "the average distance instead (criterion 'mean', minimum 2)",
     "method.tile_fc_dim, hidden_dim": "the CFN: fc6 512 per tile, fc7 4096 on the concatenation; "
                                       "BN instead of dropout (exact resume)",
     "data.image_size": "bbrattoli/JigsawPuzzlePytorch: 255 px images (sslbench decodes with a "
                        "shorter-side resize to 255 and a centre crop)",
     "augment": "flip only: the tile positions are the randomness. Deviation: the paper's "
                "chromatic-aberration counter-measures (30 % grayscale, colour channels jittered "
                "by up to 2 px per tile) are not implemented",
     "optim": "Noroozi & Favaro 2016 (a secondary summary): SGD, batch 256, lr 0.01, "
              "350k iterations (= 70 epochs of 1.28M images). Not reported there: momentum, weight "
              "decay and the lr decay; sslbench uses momentum 0.9, wd 1e-4 (ResNet-50's usual) and "
              "a cosine"},
))
