"""``sslbench sweep plan | run | status``: a sweep's cells against MLflow and the scheduler.

- ``plan`` submits nothing: it lists the cells, how many are done, and the pretraining cost
  estimated from the images/s that finished runs of the same method, backbone, dataset and
  batch size measured.
- ``run`` writes each cell's ``cell.json`` (and the sweep's ``sweep.json``), skips the cells
  that are done (MLflow, by config hash and protocol spec) or still queued/running in SLURM,
  and runs the rest: in this process, as local subprocesses, or as one SLURM job array, printing
  each finished cell with its result and time. A second ``run`` of a finished sweep submits
  nothing; a second driver on the same folder skips the cells the first one is running (their
  lock, :func:`~sslbench.benchmark.cell.cell_lock`). A SLURM submission that fails leaves no
  cell folders behind.
- ``status`` shows each cell's state from MLflow, the cell folders and ``squeue``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sslbench.benchmark.cell import (
    ELSEWHERE,
    SKIPPED,
    CellOutcome,
    CellTask,
    read_error,
    read_outcome,
    run_cell,
)
from sslbench.benchmark.console import duration, metrics_text
from sslbench.benchmark.errors import SSLBenchError
from sslbench.benchmark.sweep import Cell, SweepSpec, expand, save_sweep
from sslbench.results import cells as C
from sslbench.results import tracking as T

EXECUTORS = ("local", "slurm")
QUEUED = "queued"  # in the scheduler, not started yet


@dataclass(frozen=True)
class CellStatus:
    """A cell's state, for plan/run/status.

    Attributes:
        cell: the cell.
        state: done, partial, running, queued, interrupted, failed or pending.
        record: what MLflow has (runs, evaluations).
        job_id, job_state: its newest SLURM job and squeue's state of it (None: none/unknown).
        error: first line of the error, for ``failed``.
    """

    cell: Cell
    state: str
    record: C.CellRecord
    job_id: str | None = None
    job_state: str | None = None
    error: str | None = None


def _task(spec: SweepSpec, cell: Cell) -> CellTask:
    # The default store is pinned to an absolute path so that jobs started elsewhere find it;
    # a URI from MLFLOW_TRACKING_URI is left to the environment (jobs inherit it), so that
    # credentials in it are never written into cell files.
    uri = spec.tracking_uri
    if uri is None and not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        uri = T.resolve_tracking_uri(None)
    return CellTask(cell_id=cell.id, sweep=spec.name, config=cell.config.to_dict(),
                    config_hash=cell.config_hash, protocols=list(cell.protocols),
                    run_dir=str(cell.run_dir.resolve()), tracking_uri=uri,
                    experiment=spec.experiment, threads=spec.local.threads)


def _runs(spec: SweepSpec) -> pd.DataFrame:
    from sslbench.results.aggregate import load_runs

    return load_runs(tracking_uri=spec.tracking_uri, experiment=spec.experiment, kind=None,
                     finished_only=False)


def statuses(spec: SweepSpec, cells: list[Cell] | None = None,
             runs: pd.DataFrame | None = None) -> tuple[list[CellStatus], bool]:
    """Every cell's state, and whether the scheduler could be asked (False: squeue failed).

    Args:
        spec: the sweep.
        cells: its cells (default: ``expand(spec)``).
        runs: the experiment's runs (default: read from MLflow).
    """
    from sslbench.slurm.executor import alive, queue_states, recorded_jobs

    cells = cells if cells is not None else expand(spec)
    runs = runs if runs is not None else _runs(spec)
    jobs = recorded_jobs(spec.sweep_dir / "slurm")
    queue = queue_states(sorted(set(jobs.values())))
    out = []
    for cell in cells:
        specs = {p: C.protocol_spec_json(p) for p in cell.protocols}
        rec = C.cell_record(runs, cell.config_hash, specs, dataset=cell.config.data.dataset)
        job = jobs.get(cell.id)
        job_state = queue.get(job) if (queue is not None and job is not None) else None
        state, error = rec.state, rec.error
        if state != C.DONE and alive(job_state):
            state = QUEUED if job_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") else C.RUNNING
        elif state == C.RUNNING and job is not None and queue is not None:
            state = C.INTERRUPTED  # MLflow says RUNNING but its job is gone (killed -9, node lost)
        if state in (C.PENDING, C.INTERRUPTED, C.PARTIAL):
            local_error = read_error(cell.run_dir)
            if local_error is not None:
                state, error = C.FAILED, local_error
        out.append(CellStatus(cell, state, rec, job, job_state, error))
    return out, queue is not None or not jobs


# --- plan ---------------------------------------------------------------------------------------
def estimate_seconds(cell: Cell, runs: pd.DataFrame) -> tuple[float | None, str]:
    """Pretraining seconds for ``cell`` from finished runs' measured images/s.

    Returns:
        (seconds or None, how it was estimated: ``measured``, ``~other batch`` or ``unknown``).
    """
    ips, steps = T.METRIC_FINAL_IMAGES_PER_S, "param.derived.steps_per_epoch"
    if runs.empty or ips not in runs.columns or steps not in runs.columns:
        return None, "unknown"
    cfg = cell.config
    pre = runs[(runs[T.TAG_KIND] == T.KIND_PRETRAIN) & (runs["status"] == "FINISHED")
               & (runs[T.TAG_METHOD] == cfg.method) & (runs[T.TAG_BACKBONE] == cfg.backbone)
               & (runs[T.TAG_DATASET] == cfg.data.dataset) & runs[ips].notna()]
    pre = pre[pd.to_numeric(pre[ips], errors="coerce") > 0]
    if pre.empty:
        return None, "unknown"
    same = pre[pre[T.TAG_BATCH_SIZE] == cfg.data.batch_size]
    how = "measured" if not same.empty else "~other batch"
    use = same if not same.empty else pre
    images = (pd.to_numeric(use[steps], errors="coerce") * use[T.TAG_BATCH_SIZE].astype(float)).median()
    rate = pd.to_numeric(use[ips], errors="coerce").median()
    if not math.isfinite(images) or not math.isfinite(rate):
        return None, "unknown"
    return float(cfg.train.epochs * images / rate), how


def plan(spec: SweepSpec) -> str:
    """The plan as text: cells, states, estimated cost. Submits and writes nothing."""
    cells = expand(spec)
    runs = _runs(spec)
    sts, _ = statuses(spec, cells, runs)
    lines = [f"Sweep '{spec.name}' ({spec.source}): {len(cells)} cells, recipe {spec.recipe}, "
             f"protocols {', '.join(spec.protocols) or '(none)'}; folder {spec.sweep_dir}"]
    width = max(len(c.id) for c in cells)
    total, unknown = 0.0, 0
    for st in sts:
        secs, how = estimate_seconds(st.cell, runs)
        pending = st.state != C.DONE
        if pending and secs is not None:
            total += secs
        unknown += pending and secs is None
        cost = "-" if not pending else (f"{_hms(secs)} ({how})" if secs is not None else "unknown")
        axes = " ".join(f"{k}={v}" for k, v in st.cell.assignment.items())
        lines.append(f"  {st.cell.id:{width}s}  {st.state:11s}  {cost:24s}  {axes}")
    done = sum(st.state == C.DONE for st in sts)
    todo = len(cells) - done
    line = f"{done} of {len(cells)} cells done; {todo} to run."
    if todo and unknown < todo:
        line += (f" Estimated pretraining time of {todo - unknown} of them: {_hms(total)} (one "
                 "device at a time, at the images/s finished runs measured).")
    if unknown:
        line += (f" No measurement yet for {unknown} cell(s): a finished run of the same method, "
                 "backbone and dataset gives one.")
    lines.append(line)
    return "\n".join(lines)


def _hms(seconds: float | None) -> str:
    return "?" if seconds is None else duration(seconds)


# --- run ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunReport:
    """What ``sweep run`` did: cells skipped as done, skipped as queued, run or submitted, failed,
    and skipped as running elsewhere (another driver held their lock)."""

    done: list[str]
    queued: list[str]
    launched: list[str]
    failed: dict[str, str]
    job_ids: dict[str, str]
    elsewhere: list[str] = field(default_factory=list)


def outcome_text(outcome: CellOutcome | None, seconds: float) -> str:
    """A finished cell's result and time, e.g. ``done in 1m02s: knn-k20-t0.07 top1 81.20``."""
    if outcome is not None and outcome.action == ELSEWHERE:
        return "running elsewhere (another driver holds its lock): skipped here"
    if outcome is not None and outcome.action == SKIPPED:
        return "already done (MLflow has every result)"
    text = f"done in {duration(seconds)}"
    results = [f"{name} top1 {m['top1']:.2f}" if "top1" in m else f"{name} {metrics_text(m)}"
               for name, m in (outcome.metrics if outcome is not None else {}).items()]
    return text + (": " + "; ".join(results) if results else "")


def run(spec: SweepSpec, executor: str = "local", *, workers: int | None = None,
        wait: bool = False, echo: Callable[[str], None] = print, progress: bool = True) -> RunReport:
    """Runs (or submits) every cell that is not done.

    Args:
        spec: the sweep.
        executor: ``local`` (here; ``workers`` > 1: that many subprocesses) or ``slurm``.
        workers: overrides ``[local] workers``.
        wait: slurm: poll until the submitted jobs have left the queue.
        echo: where progress lines go (one per cell started and finished).
        progress: progress bars for the cells run in this process, where stderr is a terminal
            (subprocesses and jobs write logs: epoch and evaluation lines, no bars).

    Raises:
        SSLBenchError: unknown executor, sbatch missing, SLURM refusing the array, an
            unreachable tracking server (checked before anything runs).
    """
    if executor not in EXECUTORS:
        raise SSLBenchError(f"Unknown executor '{executor}'.", f"Use one of: {', '.join(EXECUTORS)}.")
    cells = expand(spec)
    sts, scheduler_ok = statuses(spec, cells)
    if not scheduler_ok:
        raise SSLBenchError(
            "This sweep has SLURM jobs on record but `squeue` cannot reach the controller, so "
            "sslbench cannot tell which cells are still queued.",
            "Run this on a node that reaches slurmctld; to start over locally, delete "
            f"{spec.sweep_dir / 'slurm' / 'jobs.json'} first.")
    from sslbench.slurm.executor import alive

    done = [s.cell.id for s in sts if s.state == C.DONE]
    queued = [s.cell.id for s in sts if s.state != C.DONE and alive(s.job_state)]
    todo = [s for s in sts if s.cell.id not in done and s.cell.id not in queued]
    echo(f"Sweep '{spec.name}': {len(cells)} cells; {len(done)} done, {len(queued)} queued or "
         f"running in SLURM, {len(todo)} to run ({executor}).")
    if not todo:
        return RunReport(done, queued, [], {}, {})
    failed: dict[str, str] = {}
    job_ids: dict[str, str] = {}
    elsewhere: list[str] = []
    if executor == "slurm":
        from sslbench.slurm.executor import submit_cells

        made = _new_paths(spec, todo)
        try:
            save_sweep(spec)
            paths = {s.cell.id: _task(spec, s.cell).save() for s in todo}
            job_ids = submit_cells(spec.slurm, spec.sweep_dir, spec.name, paths)
        except Exception:  # no half-made cell folders: remove what this call created (not on
            _remove(made)  # Ctrl-C, which may come after sbatch took the array)
            raise
        echo(f"Submitted {len(job_ids)} cell(s) as a job array "
             f"({', '.join(sorted({j.split('_')[0] for j in job_ids.values()}))}); logs in "
             f"{spec.sweep_dir / 'slurm'}.")
        if wait:
            _wait_for_jobs(list(job_ids.values()), echo)
        return RunReport(done, queued, [s.cell.id for s in todo], failed, job_ids)
    save_sweep(spec)
    paths = {s.cell.id: _task(spec, s.cell).save() for s in todo}
    if (workers or spec.local.workers) > 1:
        failed, elsewhere = _run_subprocesses(paths, workers or spec.local.workers, echo)
    else:  # in this process
        for i, s in enumerate(todo, 1):
            echo(f"[{i}/{len(todo)}] {s.cell.id} ({s.state})")
            t0 = time.perf_counter()
            try:
                outcome = run_cell(CellTask.load(paths[s.cell.id]), progress=progress)
            except SSLBenchError as exc:
                failed[s.cell.id] = str(exc)
                echo(f"[{i}/{len(todo)}] {s.cell.id} failed after {duration(time.perf_counter() - t0)}: {exc}")
                continue
            if outcome.action == ELSEWHERE:
                elsewhere.append(s.cell.id)
            echo(f"[{i}/{len(todo)}] {s.cell.id} {outcome_text(outcome, time.perf_counter() - t0)}")
    launched = [s.cell.id for s in todo if s.cell.id not in elsewhere]
    return RunReport(done, queued, launched, failed, job_ids, elsewhere)


def _new_paths(spec: SweepSpec, todo: Iterable[CellStatus]) -> list[Path]:
    """The folders (sweep, cells/, slurm/, each cell's) that do not exist yet: those a failed
    submission removes again, outermost first (the cell folders of earlier runs stay)."""
    root = spec.sweep_dir
    if not root.exists():
        while not root.parent.exists():  # e.g. a first sweep: sslbench-sweeps/ too
            root = root.parent
        return [root]
    candidates = [root / "cells", root / "slurm", *(s.cell.run_dir for s in todo)]
    new = [p for p in candidates if not p.exists()]
    return [p for p in new if not any(q in p.parents for q in new)]


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _run_subprocesses(paths: dict[str, Path], workers: int,
                      echo: Callable[[str], None]) -> tuple[dict[str, str], list[str]]:
    """Each cell as ``python -m sslbench.benchmark.cell``, ``workers`` at a time; log per cell.

    Returns:
        The failed cells (id -> error) and those another driver was running.
    """
    pending = list(paths.items())
    running: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
    failed: dict[str, str] = {}
    elsewhere: list[str] = []
    while pending or running:
        while pending and len(running) < workers:
            cell_id, path = pending.pop(0)
            log = path.parent / "log.txt"
            with log.open("ab") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "sslbench.benchmark.cell", str(path)],
                                        stdout=fh, stderr=subprocess.STDOUT)
            running[cell_id] = (proc, log, time.perf_counter())
            echo(f"started {cell_id} (pid {proc.pid}, log {log})")
        for cell_id, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[cell_id]
            seconds = time.perf_counter() - t0
            if proc.returncode == 0:
                outcome = read_outcome(log)
                if outcome is not None and outcome.action == ELSEWHERE:
                    elsewhere.append(cell_id)
                echo(f"{cell_id} {outcome_text(outcome, seconds)}")
            else:
                failed[cell_id] = read_error(log.parent) or f"exit code {proc.returncode}; see {log}"
                echo(f"{cell_id} failed after {duration(seconds)}: {failed[cell_id]}")
        time.sleep(0.2)
    return failed, elsewhere


def _wait_for_jobs(job_ids: list[str], echo: Callable[[str], None], poll_s: float = 2.0) -> None:
    from sslbench.slurm.executor import alive, queue_states

    while True:
        states = queue_states(job_ids)
        if states is None:
            raise SSLBenchError("Lost contact with the SLURM controller while waiting.",
                                "Check `sinfo`; `sslbench sweep status FILE` shows the cells.")
        left = [j for j in job_ids if alive(states.get(j))]
        if not left:
            echo("All submitted jobs have left the queue.")
            return
        time.sleep(poll_s)


# --- status -------------------------------------------------------------------------------------
def status_text(spec: SweepSpec) -> str:
    """One line per cell: id, state, MLflow run, SLURM job and state, error."""
    sts, scheduler_ok = statuses(spec)
    width = max(len(s.cell.id) for s in sts)
    lines = [f"Sweep '{spec.name}': {len(sts)} cells"
             + ("" if scheduler_ok else " (squeue unreachable: SLURM states unknown)")]
    for s in sts:
        parts = [f"  {s.cell.id:{width}s}", f"{s.state:11s}"]
        if s.record.pretrain_run_id:
            parts.append(f"run {s.record.pretrain_run_id[:12]}")
        if s.job_id:
            parts.append(f"job {s.job_id} ({s.job_state or 'gone'})")
        if s.state == C.PARTIAL:
            parts.append("missing: " + ", ".join(s.record.missing_protocols(s.cell.protocols)))
        if s.error:
            parts.append(f"error: {s.error}")
        lines.append("  ".join(parts))
    counts: dict[str, int] = {}
    for s in sts:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(lines)
