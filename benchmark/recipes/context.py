"""Recipes of context prediction (Doersch et al., ICCV 2015): quick and ImageNet (ResNet-50 where
the paper used an AlexNet-style pair network)."""

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
    "context-quick",
    # The paper's geometry scaled to 28 px (first view of 'fmnist-no-color': crop 0.2-1 +
    # flip), the 6 px patches fed to the small CNN as they are. Measured after 10 epochs, kNN
    # (k=200) / linear probe on a held-out fifth of the *train* split: 67.9 / 78.9 (8-way
    # accuracy 36 %); patches upsampled to 14 px 62.5 / 77.9; all 8 pairs per image 66.6 / 75.9;
    # random init 69.9 / 81.6. No setting beat random init: the encoder learns on 6 px patches
    # and is evaluated on whole 28 px images (with batch-norm statistics re-estimated on whole
    # images: 69.4 kNN).
    Config(method="context", backbone="small-cnn", augment="fmnist-no-color",
           method_args={"patch_size": 6, "gap": 3, "jitter": 1, "all_pairs": False,
                        "input_size": 0, "patch_fc_dim": 0, "hidden_dim": 512},
           data=QUICK_DATA, optim=QUICK_OPTIM, train=TrainConfig(epochs=10)),
    "Context prediction (8-way relative position of two patches) on the embedded Fashion-MNIST "
    "subset, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "method.patch_size, gap, jitter": "the paper's geometry (96 px patches, 48 px gap, 7 px "
                                       "jitter) scaled to fit the 3 x 3 layout in 28 px: 6 px "
                                       "patches, 3 px gaps, 1 px jitter (3 x 6 + 2 x 3 + 2 x 1 = 26)",
     "method.hidden_dim": "sslbench: mmselfsup's 4096-wide fusion layer scaled down for the "
                          "256-d small CNN",
     "augment": "sslbench: one mild 28 px view (crop 0.2-1 + flip, the first of 'fmnist-no-color'); "
                "the positions of the pieces are the task's own randomness"},
))

register_recipe(Recipe(
    "context-imagenet",
    Config(method="context", backbone="resnet50", augment="linear-eval-no-crop",
           method_args={"patch_size": 96, "gap": 48, "jitter": 7, "colour_dropping": True,
                        "all_pairs": True, "input_size": 0, "patch_fc_dim": 0, "hidden_dim": 4096},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 512, "image_size": 448}),
           optim=OptimConfig(name="sgd", base_lr=0.1, lr_scaling="linear", weight_decay=1e-4,
                             momentum=0.9, warmup_epochs=5),
           train=TrainConfig(epochs=70)),
    "Context prediction on ImageNet with a ResNet-50 pair network (the paper's is AlexNet-style): "
    "the paper's 96 px patches, 48 px gap, 7 px jitter and colour dropping; mmselfsup's "
    "ResNet-50 optimisation (40.4 linear in mmselfsup's model zoo).",
    {"backbone": "sslbench: ResNet-50 where the paper used an AlexNet-style network; ResNet-50 "
                 "w2x 'RelativePosition' reaches 51.4 linear in Kolesnikov et al. 2019 (as "
                 "quoted in MoCo's Table 1)",
     "method.patch_size, gap, jitter, colour_dropping": "Doersch et al. 2015: 96 x "
         "96 patches, gap 48 px, jitter up to 7 px, colour dropping (its best chromatic-aberration "
         "fix: 46.3 VOC07 mAP vs 45.7 with projection)",
     "data.image_size": "sslbench: the paper resizes images to 150k-450k pixels; 448 px (200k "
                        "pixels) holds the 398 px patch layout with room for its placement",
     "method.all_pairs, hidden_dim, optim": "open-mmlab/mmselfsup configs/selfsup/relative_loc "
         "(r50.py, relative-loc_resnet50_8xb64-steplr-70e_in1k.py): all 8 pairs of each image, "
         "ResNet-50 features of both patches concatenated -> fc 4096 (BN, ReLU) -> 8, 64 images "
         "x 8 GPUs = 512 per batch, SGD lr 0.2 (= base_lr 0.1 x 512 / 256), momentum 0.9, wd "
         "1e-4, 70 epochs, 5 warm-up epochs; 40.4 linear (mmselfsup docs/en/model_zoo.md). "
         "Deviations: wd 1e-4 also on the head (mmselfsup 5e-4), no dropout, a cosine instead of "
         "lr x 0.1 at epochs 30 and 50, warm-up from 0 (mmselfsup 0.1 x lr); the paper samples "
         "one pair per image (all_pairs=false)",
     "augment": "flip only: the patch positions are the randomness (mmselfsup: random 255 px crop "
                "of a 292 px resize and grayscale p 0.66, for its own 3 x 3 patch geometry)"},
))
