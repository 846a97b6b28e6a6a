"""What MLflow knows about a sweep cell: its pretraining run, its evaluations, its state.

A cell is identified by its config hash and its protocol specs, never by the sweep that made
it: a cell whose pretraining run and every protocol's evaluation run are FINISHED is done,
whoever ran it. :func:`cell_record` is pure (it reads a frame from
:func:`sslbench.results.aggregate.load_runs`), so the logic is tested without a store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sslbench.results import tracking as T

DONE, PARTIAL, RUNNING, FAILED, INTERRUPTED, PENDING = (
    "done", "partial", "running", "failed", "interrupted", "pending")


@dataclass(frozen=True)
class EvalRecord:
    run_id: str
    status: str
    has_metrics: bool


@dataclass(frozen=True)
class CellRecord:
    """A cell's runs in MLflow.

    Attributes:
        state: ``done`` (pretraining and every evaluation FINISHED), ``partial`` (pretrained,
            some evaluations missing), ``running``, ``failed``, ``interrupted`` (KILLED:
            preempted or stopped, resumable), ``pending`` (nothing logged).
            A RUNNING run may be stale (its job was killed -9); the scheduler tells which.
        pretrain_run_id, pretrain_status: the newest pretraining run of this config, if any.
        run_dir: that run's folder (its checkpoint).
        evals: protocol name -> its best evaluation run (FINISHED first, else the newest).
        error: the first line of the error that failed a run.
    """

    state: str
    pretrain_run_id: str | None = None
    pretrain_status: str | None = None
    run_dir: str | None = None
    evals: Mapping[str, EvalRecord] = field(default_factory=dict)
    error: str | None = None

    def missing_protocols(self, protocols: Sequence[str]) -> list[str]:
        """Protocols without a FINISHED evaluation run."""
        return [p for p in protocols if p not in self.evals or self.evals[p].status != "FINISHED"]


def protocol_spec_json(name: str) -> str:
    """The ``protocol_spec`` tag value of protocol ``name`` (how evaluations are matched)."""
    from sslbench.protocols.spec import get_protocol

    return json.dumps(get_protocol(name).to_dict(), sort_keys=True)


def cell_record(runs: pd.DataFrame, config_hash: str, protocols: Mapping[str, str],
                dataset: str | None = None) -> CellRecord:
    """The state of one cell from a frame of all runs (``load_runs(kind=None, finished_only=False)``).

    Args:
        runs: every run of the experiment.
        config_hash: the cell's config hash.
        protocols: protocol name -> its spec JSON (:func:`protocol_spec_json`).
        dataset: the evaluation dataset (default: any).
    """
    if runs.empty:
        return CellRecord(PENDING)
    mine = runs[runs[T.TAG_CONFIG_HASH] == config_hash]
    pre = mine[mine[T.TAG_KIND] == T.KIND_PRETRAIN]
    if pre.empty:
        return CellRecord(PENDING)
    finished = pre[pre["status"] == "FINISHED"]
    row = (finished if not finished.empty else pre).sort_values("start_time").iloc[-1]
    evals = _evals(mine, protocols, dataset)
    base: dict[str, Any] = dict(pretrain_run_id=row["run_id"], pretrain_status=row["status"],
                                run_dir=_get(row, T.TAG_RUN_DIR), evals=evals)
    status = row["status"]
    if status == "FINISHED":
        failed = [e for e in evals.values() if e.status == "FAILED"]
        if all(p in evals and evals[p].status == "FINISHED" for p in protocols):
            return CellRecord(DONE, **base)
        if failed:
            err = _get(mine[mine["run_id"] == failed[0].run_id].iloc[0], T.TAG_ERROR)
            return CellRecord(FAILED, **base, error=err or "an evaluation failed")
        if any(e.status == "RUNNING" for e in evals.values()):
            return CellRecord(RUNNING, **base)
        return CellRecord(PARTIAL, **base)
    if status == "FAILED":
        return CellRecord(FAILED, **base, error=_get(row, T.TAG_ERROR) or "pretraining failed")
    if status == "KILLED":
        return CellRecord(INTERRUPTED, **base)
    return CellRecord(RUNNING, **base)


def _evals(mine: pd.DataFrame, protocols: Mapping[str, str], dataset: str | None) -> dict[str, EvalRecord]:
    ev = mine[mine[T.TAG_KIND] == T.KIND_EVAL]
    out: dict[str, EvalRecord] = {}
    spec_col = T.TAG_PROTOCOL_SPEC
    if ev.empty or spec_col not in ev.columns:
        return out
    # An evaluation on the cell's dataset, except detection, whose spec names its own dataset.
    own_data = ev[T.TAG_EVAL_DATASET] == dataset if dataset is not None else pd.Series(True, index=ev.index)
    has_metrics = ev["eval_seconds"].notna() if "eval_seconds" in ev.columns else \
        pd.Series(False, index=ev.index)
    for name, spec in protocols.items():
        detection = json.loads(spec).get("kind") == "detection"
        match = ev[(ev[spec_col] == spec) & (own_data | detection)]
        if match.empty:
            continue
        done = match[match["status"] == "FINISHED"]
        row = (done if not done.empty else match).sort_values("start_time").iloc[-1]
        out[name] = EvalRecord(row["run_id"], row["status"], bool(has_metrics.loc[row.name]))
    return out


def _get(row: pd.Series, key: str) -> str | None:
    value = row.get(key)
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
