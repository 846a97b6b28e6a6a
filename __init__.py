"""sslbench: a benchmarking and reproduction harness for self-supervised visual representation learning.

Subpackages:
    benchmark: CLI, typed configs and recipes, training engine, checkpoints, datasets,
        augmentation, backbones.
    methods: registry, method protocol, heads, losses, one module per method.
    protocols: evaluation protocols (kNN, linear probe) on frozen encoders.
    results: MLflow access, aggregation, tables and plots.
    slurm: cluster launchers (submitit).

The Python API: ``sslbench.pretrain``, ``sslbench.evaluate``, ``sslbench.load_encoder`` and
``sslbench.results.load_runs`` (``benchmark/api.py``).
"""

from typing import Any

__version__ = "0.1.0"

#: The Python API (``sslbench.pretrain``, ...), imported on first use so that ``import sslbench``
#: stays cheap (torch and MLflow load only when a function is called).
_API = {"pretrain", "evaluate", "load_encoder", "resolve_config", "read_config_file"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from sslbench.benchmark import api

        return getattr(api, name)
    if name == "results":
        import importlib

        return importlib.import_module("sslbench.results")
    raise AttributeError(f"module 'sslbench' has no attribute {name!r}")


__all__ = ["__version__", "evaluate", "load_encoder", "pretrain", "read_config_file", "resolve_config", "results"]
