"""The Python API: what the CLI does, callable from a notebook or a script.

::

    import sslbench

    run = sslbench.pretrain("simclr-quick", epochs=2, **{"optim.base_lr": 0.3}, tracking_uri="none")
    scores = sslbench.evaluate(run.checkpoint, protocols=["knn-k200-t0.1", "linear"])
    encoder, source = sslbench.load_encoder(run.checkpoint)
    runs = sslbench.results.load_runs(tracking_uri="sqlite:///mlruns.db")   # one row per MLflow run

:func:`pretrain` and :func:`evaluate` log to MLflow as the CLI does (``tracking_uri=None``:
``$MLFLOW_TRACKING_URI``, else ``sqlite:///./mlruns.db``; ``"none"``: no MLflow at all, never
imported). Errors are the CLI's :class:`~sslbench.benchmark.errors.SSLBenchError` subclasses,
each with its one-paragraph message and fix.

A config kept beside a paper's code is a TOML file (:func:`read_config_file`, also
``sslbench pretrain --config FILE``)::

    recipe = "simclr-cifar10"
    [data]
    dataset = "cifar10"
    data_dir = "/data/cifar"
    [train]
    epochs = 200
    [method]
    temperature = 0.2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from sslbench.benchmark.config import Config
from sslbench.benchmark.engine import PretrainResult, Tracking
from sslbench.benchmark.errors import ConfigError, SSLBenchError

#: keyword shortcuts of :func:`pretrain` -> config keys (as the CLI's flags)
SHORTCUTS = {"epochs": "train.epochs", "seed": "train.seed", "batch_size": "data.batch_size",
             "dataset": "data.dataset", "data_dir": "data.data_dir", "device": "train.device",
             "backbone": "backbone", "augment": "augment", "method": "method"}


def tracking(tracking_uri: str | None = None, experiment: str = "sslbench") -> Tracking | None:
    """Where runs are logged: ``None`` -> the default store, ``"none"`` -> no MLflow."""
    if tracking_uri is not None and tracking_uri.strip().lower() == "none":
        return None
    return Tracking(tracking_uri, experiment)


def read_config_file(path: str | Path) -> tuple[str | None, list[str]]:
    """A TOML config file as ``(recipe, overrides)``: the top-level ``recipe`` key, and every
    other value as a ``section.key=value`` override (nested tables flattened with dots).

    Raises:
        ConfigError: the file is missing or not valid TOML, or ``recipe`` is not a string.
    """
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' does not exist.", "Check the path.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file '{path}' is not valid TOML ({exc}).",
                          "Fix the file: `key = value` lines under [data], [train], [optim], [method] ...") from None
    recipe = data.pop("recipe", None)
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"'recipe' in '{path}' must be a recipe name, got {recipe!r}.",
                          "Write e.g. recipe = \"simclr-cifar10\" (`sslbench recipes` lists them).")
    overrides: list[str] = []

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, bool):
            overrides.append(f"{prefix}={'true' if value else 'false'}")
        else:
            overrides.append(f"{prefix}={value}")

    flatten("", data)
    return recipe, overrides


def resolve_config(recipe: str | None = None, overrides: Mapping[str, Any] | Sequence[str] = (), *,
                   config_file: str | Path | None = None) -> Config:
    """The resolved config of ``recipe`` (or the file's) with ``overrides`` applied last.

    Raises:
        SSLBenchError: neither a recipe nor a method is given; any config error.
    """
    from sslbench.benchmark.recipes import resolve
    from sslbench.methods import get_method

    items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides)
    file_recipe, file_overrides = read_config_file(config_file) if config_file else (None, [])
    recipe = recipe or file_recipe
    if recipe is None:
        method = next((i.split("=", 1)[1] for i in [*file_overrides, *items] if i.startswith("method=")), None)
        if method is None:
            raise SSLBenchError("Neither a recipe nor a method was given.",
                                "Pass recipe='NAME' (`sslbench recipes`) or method='NAME'.")
        recipe = get_method(method).default_recipe
    return resolve(recipe, [*file_overrides, *items])


def pretrain(recipe: str | None = None, *, out: str | Path | None = None, resume: bool = False,
             tracking_uri: str | None = None, experiment: str = "sslbench", progress: bool = False,
             config_file: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] = (),
             **options: Any) -> PretrainResult:
    """Pretrains a recipe and returns its :class:`~sslbench.benchmark.engine.PretrainResult`
    (``checkpoint``, ``encoder``, ``config``, ``metrics``, ``run_id``).

    Args:
        recipe: a recipe name (``sslbench recipes``); None: ``method``'s default recipe.
        out: the run folder (default ``sslbench-runs/<recipe>-<hash>-s<seed>``).
        resume: continue the run in ``out`` (a finished run returns at once).
        tracking_uri: MLflow store (None: the default; ``"none"``: no MLflow).
        experiment: MLflow experiment.
        progress: progress bars.
        config_file: a TOML config (:func:`read_config_file`), applied before the overrides.
        overrides: ``{"optim.base_lr": 0.3}`` or ``["optim.base_lr=0.3"]``.
        **options: the shortcuts ``epochs``, ``seed``, ``batch_size``, ``dataset``, ``data_dir``,
            ``device``, ``backbone``, ``augment``, ``method``, or any dotted config key passed as
            ``**{"method.temperature": 0.2}``.

    Raises:
        SSLBenchError: an unknown key, recipe or dataset, a bad value, a non-finite loss, ...
    """
    from sslbench.benchmark.engine import pretrain as run_pretrain

    items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides)
    for key, value in options.items():
        name = SHORTCUTS.get(key, key)
        if "." not in name and name not in SHORTCUTS.values():
            raise ConfigError(f"pretrain() got an unknown option '{key}'.",
                              f"Use one of {', '.join(SHORTCUTS)} or a dotted config key, e.g. "
                              "**{'optim.base_lr': 0.3}.")
        items.append(f"{name}={value}")
    cfg = resolve_config(recipe, items, config_file=config_file)
    folder = Path(out) if out else Path("sslbench-runs") / f"{cfg.recipe}-{cfg.hash()[:8]}-s{cfg.train.seed}"
    return run_pretrain(cfg, folder, resume=resume, tracking=tracking(tracking_uri, experiment), progress=progress)


def load_encoder(path: str | Path, **kwargs: Any) -> tuple[nn.Module, Any]:
    """The encoder of an sslbench checkpoint or a plain timm / torchvision state dict, in eval
    mode, and where it came from (loaded with ``weights_only=True``; see
    :func:`sslbench.benchmark.encoders.load_any_encoder` for ``backbone``, ``in_chans``, ...)."""
    from sslbench.benchmark.encoders import load_any_encoder

    return load_any_encoder(path, **kwargs)


def evaluate(encoder_or_checkpoint: nn.Module | str | Path | PretrainResult, *,
             protocols: Sequence[str] = ("knn-k200-t0.1", "linear"), dataset: str | None = None,
             data_dir: str | None = None, device: str = "auto", tracking_uri: str | None = "none",
             experiment: str = "sslbench", progress: bool = False,
             normalization: tuple[Sequence[float], Sequence[float]] | None = None,
             **load_options: Any) -> dict[str, dict[str, float]]:
    """Evaluates a frozen encoder under named protocols; returns protocol -> metrics (top-1, ...).

    Args:
        encoder_or_checkpoint: a checkpoint path (sslbench or a plain state dict: pass
            ``backbone=...``), a :class:`PretrainResult`, or any module mapping images to features.
        protocols: protocol names (``sslbench protocols``).
        dataset: the evaluation data (default: the checkpoint's pretraining data).
        data_dir: where that data lives.
        device: ``auto``, ``cpu`` or ``cuda``.
        tracking_uri: ``"none"`` (default here: nothing logged) or an MLflow store; a checkpoint's
            evaluations are logged as child runs of its pretraining run when the store has it.
        experiment: MLflow experiment.
        progress: progress bars.
        normalization: ``(mean, std)`` of a plain module's inputs (default: the data's).
        **load_options: :func:`load_encoder`'s options for a checkpoint (``backbone``, ``mean``, ...).

    Raises:
        SSLBenchError: unknown protocol or dataset, unreadable checkpoint, no dataset for a module.
    """
    from sslbench.benchmark.config import config_from_dict
    from sslbench.benchmark.encoders import fit_to_data
    from sslbench.benchmark.engine import identity_tags, resolve_device
    from sslbench.benchmark.evaluate import evaluate_and_log, load_eval_splits
    from sslbench.protocols.spec import get_protocol

    for name in protocols:
        get_protocol(name)  # unknown names fail before anything loads
    dev = resolve_device(device)
    if isinstance(encoder_or_checkpoint, PretrainResult):
        encoder_or_checkpoint = encoder_or_checkpoint.checkpoint
    tags: dict[str, str] = {}
    parent = None
    if isinstance(encoder_or_checkpoint, nn.Module):
        if dataset is None:
            raise SSLBenchError("evaluate() got a module but no dataset.", "Pass dataset='NAME' (`sslbench datasets`).")
        encoder = encoder_or_checkpoint
        train, test = load_eval_splits(dataset, data_dir=data_dir, device=dev)
        info = train.info
        mean, std = normalization or (info.mean, info.std)
        norm: tuple[tuple[float, ...], tuple[float, ...], int] = (tuple(mean), tuple(std), info.image_size)
        tags = {"method": "module", "recipe": type(encoder).__name__, "dataset": dataset}
    else:
        encoder, source = load_encoder(encoder_or_checkpoint, map_location=dev, **load_options)
        dataset = dataset or source.dataset
        if dataset is None:
            raise SSLBenchError(f"'{encoder_or_checkpoint}' is a plain state dict: it does not say which data "
                                "to evaluate on.", "Pass dataset='NAME' (`sslbench datasets` lists them).")
        train, test = load_eval_splits(dataset, data_dir=data_dir, image_size=source.image_size, device=dev)
        info = train.info
        encoder, norm, _ = fit_to_data(encoder, source, info.channels, tuple(info.mean), tuple(info.std))
        if source.kind == "sslbench":
            tags = identity_tags(config_from_dict(source.config), dev)
            parent = source.mlflow_run_id
    track = tracking(tracking_uri, experiment)
    if parent is not None and track is not None:
        from sslbench.results.tracking import run_status

        try:
            run_status(parent, tracking_uri=track.uri)
        except SSLBenchError:
            tags, parent = {**tags, "source_pretrain_run_id": parent}, None
    results = evaluate_and_log(encoder.to(dev), protocols=list(protocols), train=train, test=test, device=dev,
                               parent_run_id=parent if track is not None else None, tags=tags, tracking=track,
                               progress=progress, echo=None, normalization=norm)
    return {r.spec.name: dict(r.metrics) for r in results}
