"""Runs protocols on an encoder and logs each result as a child run of its pretraining run.

This is glue between the engine's output (an encoder and its identity tags) and
``sslbench.protocols`` (which never sees a method) and ``sslbench.results`` (MLflow). It is also
where a method is consulted when a protocol needs more than the encoder: semi-supervised
fine-tuning from SimCLR v2's first projector layer.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslbench.benchmark.checkpoint import load_checkpoint
from sslbench.benchmark.console import eval_line, say
from sslbench.benchmark.datasets import ArrayDataset, FolderDataset, load_dataset
from sslbench.benchmark.engine import Tracking
from sslbench.benchmark.errors import ConfigError
from sslbench.protocols.run import ProtocolResult, evaluate
from sslbench.protocols.spec import DetectionSpec, SemiSupSpec, get_protocol
from sslbench.protocols.subsets import LabelledSubset


def load_eval_splits(dataset: str, *, data_dir: str | None = None, download: bool = False,
                     image_size: int | None = None, num_workers: int = 2,
                     device: torch.device | str = "cpu") -> tuple[ArrayDataset | FolderDataset, ArrayDataset | FolderDataset]:
    """Train and test splits for evaluation; in-memory data is moved to ``device`` once."""
    splits: list[ArrayDataset | FolderDataset] = []
    for split in ("train", "test"):
        ds = load_dataset(dataset, split, data_dir=data_dir, download=download,
                          image_size=image_size, num_workers=num_workers)
        splits.append(ds.to(device) if isinstance(ds, ArrayDataset) else ds)
    return splits[0], splits[1]


def needs_classification_splits(protocols: Sequence[str]) -> bool:
    """Whether any of the named protocols reads the classification train/test splits."""
    return any(not isinstance(get_protocol(name), DetectionSpec) for name in protocols)


def projector_layers(protocols: Sequence[str]) -> int:
    """The projector layers the named semi-supervised protocols fine-tune from (0: none); they
    must agree, as one evaluation builds one such module."""
    layers = {s.from_projector_layer for s in map(get_protocol, protocols)
              if isinstance(s, SemiSupSpec) and s.from_projector_layer}
    if len(layers) > 1:
        raise ConfigError(f"The protocols fine-tune from different projector layers {sorted(layers)}.",
                          "Evaluate them in separate `sslbench eval` calls.")
    return layers.pop() if layers else 0


def finetune_module(checkpoint: str | Path, layers: int, device: torch.device | str = "cpu") -> nn.Module:
    """The encoder of an sslbench checkpoint followed by the method's first ``layers`` projector
    layers (SimCLR v2 §2: fine-tuning from the projector's first layer), for semi-supervised specs.

    Raises:
        ConfigError: the checkpoint's method has no such projector (only SimCLR v2 does).
        CheckpointError: the checkpoint does not fit its method.
    """
    from sslbench.benchmark.config import config_from_dict
    from sslbench.benchmark.engine import build_method
    from sslbench.methods.registry import get_method

    state = load_checkpoint(checkpoint, map_location=device)
    cfg = config_from_dict(state["config"])
    entry = get_method(cfg.method)
    if "finetune_from_layer" not in {f.name for f in dataclasses.fields(entry.config)}:
        raise ConfigError(
            f"Method '{cfg.method}' has no projector layers to fine-tune from (from_projector_layer={layers}).",
            "Use a semi-supervised spec with from_projector_layer=0, or a simclrv2 checkpoint.")
    cfg = dataclasses.replace(cfg, method_args={**cfg.method_args, "finetune_from_layer": layers})
    meta = state["encoder"]
    method = build_method(cfg, meta["in_chans"], meta["image_size"])
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as exc:
        from sslbench.benchmark.errors import CheckpointError

        raise CheckpointError(f"'{checkpoint}' does not fit method '{cfg.method}' ({str(exc).splitlines()[0][:160]}).",
                              "The checkpoint is corrupt or was edited.") from None
    module: nn.Module = method.finetune_module()  # type: ignore[operator]
    return module.to(device).eval()


def evaluate_and_log(encoder: nn.Module, *, protocols: Sequence[str], train: Any, test: Any,
                     device: torch.device | str, parent_run_id: str | None,
                     tags: Mapping[str, str], tracking: Tracking | None,
                     progress: bool = True,
                     resume_run_ids: Mapping[str, str] | None = None,
                     echo: Callable[[str], None] | None = say,
                     **options: Any) -> list[ProtocolResult]:
    """Evaluates ``encoder`` under each named protocol and logs one child run per protocol.

    Each run is named after the protocol and what it evaluated (``linear ← simclr-cifar10 s0``),
    starts and ends when its protocol did (the first one's span includes the feature extraction
    the protocols share), and its pretraining run gets the headline metrics
    (``eval/{protocol}/top1``, ``.../top5``; ``AP`` for detection).

    Args:
        encoder: images -> features (kept frozen; the protocols check it).
        protocols: protocol spec names (``sslbench protocols`` lists them).
        train, test: the evaluation splits (None when only detection protocols run).
        device: where to evaluate.
        parent_run_id: the pretraining run (None: log top-level runs).
        tags: the pretraining run's identity tags (``dataset`` is the pretraining dataset; each
            evaluation run adds ``eval_dataset``, so a transfer is recorded as both).
        tracking: where to log (None: don't).
        progress: show tqdm bars (only where stderr is a terminal).
        resume_run_ids: protocol name -> an unfinished evaluation run to log into instead of
            creating one (a sweep re-running a cell whose evaluation was killed).
        echo: where each evaluation's line goes as soon as it has run (None: nowhere).
        **options: passed to :func:`sslbench.protocols.evaluate` (``normalization``,
            ``finetune_encoder``, ``subset``, ``detection_dataset``, ``detection_data_dir``).
    """
    specs = [get_protocol(name) for name in protocols]
    # Each protocol's wall-clock span, for its run's start and end: from the previous result (or
    # the start, so the first span holds the shared feature extraction) to its own result.
    finished_ms: list[int] = []

    def on_result(res: ProtocolResult) -> None:
        finished_ms.append(int(time.time() * 1000))
        if echo is not None:
            echo(eval_line(res))

    started_ms = int(time.time() * 1000)
    results = evaluate(encoder, train, test, specs, device=device, progress=progress, on_result=on_result,
                       **options)
    if tracking is None:
        return results
    from sslbench.results import tracking as T

    identity = T.identity_tags(tags)
    extra = {k: v for k, v in tags.items() if k.startswith("source_")}  # a plain state dict's origin
    subset: LabelledSubset | None = options.get("subset")
    of = (T.run_name(parent_run_id, tracking_uri=tracking.uri) if parent_run_id is not None else "") or T.run_label(tags)
    bounds: list[int | None] = [started_ms, *finished_ms]
    if len(finished_ms) != len(results):  # (an evaluate() that reported no results as it went)
        bounds = [None] * (len(results) + 1)
    headline: dict[str, float] = {}
    for i, res in enumerate(results):
        start_ms, end_ms = bounds[i], bounds[i + 1]
        spec = res.spec
        transfer = res.eval_dataset != identity.get("dataset", res.eval_dataset)
        child_tags = {**identity, **extra, "kind": "eval", "protocol": spec.name,
                      "protocol_version": str(spec.version),
                      "protocol_spec": json.dumps(spec.to_dict(), sort_keys=True),
                      "eval_dataset": res.eval_dataset,
                      "transfer": str(transfer).lower()}
        if isinstance(spec, SemiSupSpec) and subset is not None:
            child_tags["subset_file"] = subset.spec
        name = T.eval_run_name(spec.name, of, eval_dataset=res.eval_dataset if transfer else None)
        with T.TrackedRun(run_name=name, tags=child_tags, experiment=tracking.experiment,
                          tracking_uri=tracking.uri, parent_run_id=parent_run_id,
                          run_id=(resume_run_ids or {}).get(spec.name),
                          start_time_ms=start_ms, end_time_ms=end_ms) as run:
            # Counts come back from the protocols as floats: "256", not "256.0".
            run.log_params({k: T.param_value(v) for k, v in res.params.items()})
            run.log_metrics({**res.metrics, T.METRIC_EVAL_SECONDS: res.seconds})
            for artifact, text in res.artifacts.items():
                run.log_text(text, artifact)
        headline.update({T.eval_metric_name(spec.name, m, res.eval_dataset if transfer else None): v
                         for m, v in res.metrics.items() if m in T.HEADLINE_METRICS})
    if parent_run_id is not None and headline:  # the pretraining run shows its results too
        T.log_metrics_to_run(parent_run_id, headline, tracking_uri=tracking.uri)
    return results



def read_subset(path: str | Path, train: Any) -> LabelledSubset:
    """A labelled-subset file for ``train`` (:func:`sslbench.protocols.subsets.read_subset`): an
    sslbench subset (JSON, from ``sslbench subset``) or a published list of training file names
    (ImageNet's SimCLR ``1percent.txt``, for image-folder splits).

    Raises:
        DatasetError: unreadable, for another dataset or split, or naming files not in it.
    """
    from sslbench.protocols.subsets import read_subset as read

    samples = getattr(train, "samples", None)
    return read(path, dataset=train.info.name, num_samples=len(train),
                sample_names=[p for p, _ in samples] if samples is not None else None)
