"""Runs protocols on an encoder and logs each result as a child run of its pretraining run.

This is glue between the engine's output (an encoder and its identity tags) and
``sslbench.protocols`` (which never sees a method) and ``sslbench.results`` (MLflow).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sslbench.benchmark.datasets import ArrayDataset, FolderDataset, load_dataset
from sslbench.benchmark.engine import Tracking
from sslbench.protocols.run import ProtocolResult, evaluate
from sslbench.protocols.spec import get_protocol


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


def evaluate_and_log(encoder: nn.Module, *, protocols: Sequence[str], train: object, test: object,
                     device: torch.device | str, parent_run_id: str | None,
                     tags: Mapping[str, str], tracking: Tracking | None,
                     progress: bool = True,
                     resume_run_ids: Mapping[str, str] | None = None) -> list[ProtocolResult]:
    """Evaluates ``encoder`` under each named protocol and logs one child run per protocol.

    Args:
        encoder: images -> features (kept frozen; the protocols check it).
        protocols: protocol spec names (``sslbench protocols`` lists them).
        train, test: the evaluation splits.
        device: where to evaluate.
        parent_run_id: the pretraining run (None: log top-level runs).
        tags: the pretraining run's identity tags.
        tracking: where to log (None: don't).
        progress: show tqdm bars.
        resume_run_ids: protocol name -> an unfinished evaluation run to log into instead of
            creating one (a sweep re-running a cell whose evaluation was killed).
    """
    specs = [get_protocol(name) for name in protocols]
    results = evaluate(encoder, train, test, specs, device=device, progress=progress)
    if tracking is None:
        return results
    from sslbench.results.tracking import TrackedRun, eval_run_name, identity_tags

    identity = identity_tags(tags)
    for res in results:
        spec = res.spec
        child_tags = {**identity, "kind": "eval", "protocol": spec.name,
                      "protocol_version": str(spec.version),
                      "protocol_spec": json.dumps(spec.to_dict(), sort_keys=True),
                      "eval_dataset": res.eval_dataset}
        with TrackedRun(run_name=eval_run_name(spec.name), tags=child_tags, experiment=tracking.experiment,
                        tracking_uri=tracking.uri, parent_run_id=parent_run_id,
                        run_id=(resume_run_ids or {}).get(spec.name)) as run:
            run.log_params(res.params)
            run.log_metrics({**res.metrics, "eval_seconds": res.seconds})
    return results
