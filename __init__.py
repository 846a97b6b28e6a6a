"""sslbench: a benchmarking and reproduction harness for self-supervised visual representation learning.

Subpackages:
    benchmark: CLI, typed configs and recipes, training engine, checkpoints, datasets,
        augmentation, backbones.
    methods: registry, method protocol, heads, losses, one module per method.
    protocols: evaluation protocols (kNN, linear probe) on frozen encoders.
    results: MLflow access, aggregation, tables and plots.
    slurm: cluster launchers (submitit).
"""

__version__ = "0.1.0"
