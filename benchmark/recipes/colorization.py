"""Recipes of colorization (Zhang, Isola & Efros, ECCV 2016): quick (CPU, the generated colour
Fashion-MNIST) and ImageNet (an L-only ResNet-50 where the paper trained a VGG-style network).

Official training files: richzhang/colorization ``train/solver.prototxt`` (Adam, lr 3e-5, betas
0.9 / 0.99, weight decay 1e-3, x0.1 after 225k iterations, 500k iterations) and
``models/colorization_train_val_v2.prototxt`` (batch 40, random 176 px crops + mirror, ab targets
subsampled by 4).
"""

from __future__ import annotations

from sslbench.benchmark.config import Config, DataConfig, OptimConfig, TrainConfig
from sslbench.benchmark.recipes.base import (
    IMAGENET_DATA,
    QUICK_OPTIM,
    QUICK_SOURCES,
    Recipe,
    register_recipe,
)

_PAPER_TARGETS = ("Zhang et al. 2016 §2.1-2.2: ab grid 10 (in-gamut bins), soft encoding over the 5 "
                  "nearest bins with sigma 5, rebalancing lambda 0.5 with the prior smoothed by sigma 5")

register_recipe(Recipe(
    "colorization-quick",
    # Measured (10 epochs, seed 0; kNN k=200 on a held-out fifth of the *train* split; the random-init
    # L-only small-cnn on this data: 63.1): the 1x1 head alone 59.2 (the features become a per-pixel
    # colour read-out), two 3x3 conv blocks before it 63.6, the same without rebalancing 63.2. The
    # generated colours are half random (and the background's entirely), so there is little for the
    # L network to learn from them in 10 epochs.
    Config(method="colorization", backbone="small-cnn", augment="fmnist-quick-no-color",
           method_args={"target_stride": 2, "head_layers": 2, "head_hidden_dim": 256},
           data=DataConfig(dataset="fashion-mnist-color-mini", batch_size=256), optim=QUICK_OPTIM,
           train=TrainConfig(epochs=10)),
    "Colorization (L -> quantised ab, class-rebalanced) on the generated colour Fashion-MNIST "
    "subset, CPU-sized (quick start).",
    {**QUICK_SOURCES,
     "data.dataset": "sslbench: the embedded images generated in colour (colorization needs colour)",
     "method.grid_size, num_neighbors, sigma, prior_sigma, rebalance_lambda": _PAPER_TARGETS,
     "method.target_stride": "sslbench: 2 on the 20 px views (10 x 10 targets; the paper's 4 would leave "
                             "5 x 5)",
     "method.head_layers, head_hidden_dim": "the paper's conv8 block (3x3 convs, 256 wide) before the 1x1 "
                                            "classifier, two layers (measured: see the comment above)",
     "augment": "colorization_train_val_v2.prototxt: random crop + mirror, no colour change (the "
                "targets are the view's colours) = 'fmnist-quick' without its jitter"},
))

register_recipe(Recipe(
    "colorization-imagenet",
    Config(method="colorization", backbone="resnet50", augment="linear-eval",
           method_args={"target_stride": 4, "head_layers": 3, "head_hidden_dim": 256},
           data=DataConfig(**{**IMAGENET_DATA.__dict__, "batch_size": 40}),
           optim=OptimConfig(name="adamw", base_lr=3e-5, lr_scaling="none", weight_decay=1e-3,
                             momentum=0.9, final_lr_ratio=0.1),
           train=TrainConfig(epochs=16)),
    "Colorization on ImageNet with an L-only ResNet-50 (the paper's network is VGG-style; ResNet-101 "
    "linear 39.6 in MoCo's Table 1), the official solver.",
    {"all": "richzhang/colorization train/solver.prototxt: Adam base_lr 3e-5, momentum 0.9 "
            "(momentum2 0.99), weight_decay 1e-3, 500k iterations at batch 40 (train_val_v2: 40) = "
            "15.6 epochs of 1.28M images -> 16; lr x0.1 at 225k. Deviations: AdamW (decoupled decay; "
            "Caffe adds it to the gradient) with beta2 0.999 (sslbench's AdamW), a cosine to 0.1 x "
            "instead of the step; ResNet-50 (the paper's VGG-style net, AlexNet "
            "for the transfer tests), whose stride-32 feature map is upsampled to the 56 x 56 "
            "targets where the paper's dilated net predicts at stride 4",
     "method.grid_size, num_neighbors, sigma, prior_sigma, rebalance_lambda": _PAPER_TARGETS,
     "method.target_stride": "colorization_train_val_v2.prototxt data_ab_ss: stride-4 subsampling",
     "method.head_layers, head_hidden_dim": "colorization_train_val_v2.prototxt conv8_1-conv8_3: three "
                                            "256-wide layers before conv8_313 (the first a 2x "
                                            "deconvolution there, a 3x3 conv here)",
     "augment": "train_val_v2: random crop (176 of 256) + mirror; RandomResizedCrop 0.08-1 + flip "
                "('linear-eval') is the closest sslbench recipe without colour change (deviation: "
                "scale and aspect jitter)"},
))
