"""CLI, typed configs and recipes, training engine, checkpoints, datasets, augmentation, backbones."""
