"""One sweep cell, run idempotently: pretrain (resuming), then the protocols still missing.

The same function runs a cell in the sweep driver's process, in a local subprocess
(``python -m sslbench.benchmark.cell CELL_JSON``) or in a SLURM job (``sslbench.slurm``). It
asks MLflow first, so running a cell again never duplicates a result:

- pretraining FINISHED and every protocol's evaluation FINISHED: nothing to do;
- a checkpoint in the cell's folder: the training resumes from it into the same MLflow run
  (the run id is in the checkpoint); no checkpoint but an unfinished run of this cell in
  MLflow (a job killed before its first epoch ended): that run is reused;
- an evaluation whose run was killed: re-run into the same run (or, when its metrics were
  already logged, just marked FINISHED).

A failure is logged on the MLflow run (``error`` tag) and, for failures before any run exists
(a missing dataset), in ``<run_dir>/error.json``, so ``sslbench sweep status`` can show it.

Two drivers of one sweep (two ``sslbench sweep run`` on one folder) never run a cell at once: a
cell runs under an exclusive, non-blocking ``flock`` on ``<run_dir>/cell.lock``, and a call that
cannot take it returns at once as ``running elsewhere``. The lock is the kernel's, so a killed
job leaves none behind. A data-parallel cell (several SLURM tasks of one job) takes no lock: its
ranks run the cell together, and the scheduler already keeps a queued cell from being submitted
twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sslbench.benchmark.errors import SSLBenchError

TASK_FILE = "cell.json"
ERROR_FILE = "error.json"
LOCK_FILE = "cell.lock"
#: :attr:`CellOutcome.action` values.
SKIPPED, RAN, ELSEWHERE = "skipped", "ran", "elsewhere"


@dataclass(frozen=True)
class CellTask:
    """Everything a cell's job needs, as JSON (written to ``<run_dir>/cell.json``)."""

    cell_id: str
    sweep: str
    config: dict[str, Any]
    config_hash: str
    protocols: list[str]
    run_dir: str
    tracking_uri: str | None
    experiment: str
    threads: int = 0

    def save(self) -> Path:
        """Writes ``cell.json`` atomically and returns its path."""
        from sslbench.benchmark.files import atomic_write_text

        return atomic_write_text(Path(self.run_dir) / TASK_FILE,
                                 json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> CellTask:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise SSLBenchError(f"Cannot read sweep cell file '{path}' ({exc}).",
                                "Re-run `sslbench sweep run FILE`, which writes it again.") from None


@dataclass(frozen=True)
class CellOutcome:
    """What one call of :func:`run_cell` did: ``skipped`` (already done), ``ran``, or
    ``elsewhere`` (another process holds the cell's lock: it is running there)."""

    cell_id: str
    action: str
    pretrain_run_id: str | None
    metrics: dict[str, dict[str, float]]


@contextlib.contextmanager
def cell_lock(run_dir: str | Path) -> Iterator[bool]:
    """Tries to take the cell's lock (exclusive, non-blocking ``flock`` on ``cell.lock``) and
    yields whether it got it; the lock is released on exit (or when the process dies)."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        got = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            got = False
        except OSError:  # a file system without flock (Lustre mounted without -o flock): unlocked
            pass
        yield got
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def run_cell(task: CellTask, *, progress: bool = False) -> CellOutcome:
    """Runs one cell to completion, doing only what MLflow does not already have, under the
    cell's lock (:func:`cell_lock`; a single-process cell only).

    Raises:
        SSLBenchError: bad config, missing data, a finished pretraining whose checkpoint is
            gone, a non-finite loss (each also written to ``<run_dir>/error.json``).
    """
    from sslbench.benchmark.distributed import read_dist_env

    if read_dist_env().world_size > 1:  # the ranks of one job run the cell together
        return _run_recording_errors(task, progress)
    with cell_lock(task.run_dir) as mine:
        if not mine:
            return CellOutcome(task.cell_id, ELSEWHERE, None, {})
        return _run_recording_errors(task, progress)


def _run_recording_errors(task: CellTask, progress: bool) -> CellOutcome:
    error_path = Path(task.run_dir) / ERROR_FILE
    try:
        outcome = _run(task, progress)
    except SSLBenchError as exc:
        _write_error(error_path, str(exc))
        raise
    except Exception as exc:
        _write_error(error_path, f"{type(exc).__name__}: {exc}")
        raise
    error_path.unlink(missing_ok=True)
    return outcome


def _run(task: CellTask, progress: bool) -> CellOutcome:
    import torch

    from sslbench.benchmark.config import config_from_dict
    from sslbench.benchmark.engine import (
        Tracking,
        identity_tags,
        load_encoder,
        pretrain,
        resolve_device,
    )
    from sslbench.benchmark.evaluate import evaluate_and_log, load_eval_splits
    from sslbench.results.aggregate import load_runs
    from sslbench.results.cells import DONE, cell_record, protocol_spec_json
    from sslbench.results.tracking import TAG_SWEEP, TAG_SWEEP_CELL, TrackedRun

    if task.threads:
        torch.set_num_threads(task.threads)
    cfg = config_from_dict(task.config)
    if cfg.hash() != task.config_hash:
        raise SSLBenchError(
            f"Cell '{task.cell_id}': its config now hashes to {cfg.hash()}, not {task.config_hash} "
            "(sslbench changed how configs are built since the sweep was planned).",
            "Re-run `sslbench sweep run FILE` so the cell files are written again.")
    tracking = Tracking(task.tracking_uri, task.experiment)
    specs = {p: protocol_spec_json(p) for p in task.protocols}
    runs = load_runs(tracking_uri=task.tracking_uri, experiment=task.experiment, kind=None,
                     finished_only=False)
    rec = cell_record(runs, task.config_hash, specs, dataset=cfg.data.dataset)
    if rec.state == DONE:
        return CellOutcome(task.cell_id, SKIPPED, rec.pretrain_run_id, {})

    run_dir = Path(task.run_dir)
    if rec.pretrain_status == "FINISHED":
        ckpt = Path(rec.run_dir or run_dir) / "checkpoints" / "last.pt"
        if not ckpt.exists():
            raise SSLBenchError(
                f"Cell '{task.cell_id}': its pretraining finished (MLflow run "
                f"{rec.pretrain_run_id}) but its checkpoint {ckpt} is gone, so its evaluations "
                "cannot run.", "Restore the checkpoint, or delete that MLflow run to pretrain again.")
        from sslbench.benchmark.distributed import read_dist_env

        if not read_dist_env().is_main:  # data-parallel ranks > 0: rank 0 evaluates
            return CellOutcome(task.cell_id, RAN, rec.pretrain_run_id, {})
        device = resolve_device(cfg.train.device)
        encoder, _ = load_encoder(ckpt, map_location=device)
        run_id, tags, is_main = rec.pretrain_run_id, identity_tags(cfg, device), True
    else:
        # An unfinished run of this very folder (killed before its first checkpoint) is reused.
        reuse = rec.pretrain_run_id if rec.run_dir == str(run_dir.resolve()) else None
        result = pretrain(cfg, run_dir, resume=True, tracking=tracking, progress=progress,
                          run_id=reuse, extra_tags={TAG_SWEEP: task.sweep, TAG_SWEEP_CELL: task.cell_id})
        encoder, device, run_id, tags = result.encoder, result.device, result.run_id, result.tags
        is_main = result.is_main
    if not is_main:  # data-parallel ranks > 0: rank 0 evaluates
        return CellOutcome(task.cell_id, RAN, run_id, {})

    resume_ids: dict[str, str] = {}
    missing = []
    for name in rec.missing_protocols(task.protocols):
        ev = rec.evals.get(name)
        if ev is not None and ev.has_metrics:  # killed after logging, before FINISHED
            with TrackedRun(run_id=ev.run_id, tracking_uri=task.tracking_uri,
                            experiment=task.experiment):
                pass
            continue
        if ev is not None:
            resume_ids[name] = ev.run_id
        missing.append(name)
    metrics: dict[str, dict[str, float]] = {}
    if missing:
        train, test = load_eval_splits(cfg.data.dataset, data_dir=cfg.data.data_dir,
                                       image_size=cfg.data.image_size, device=device)
        results = evaluate_and_log(encoder.to(device), protocols=missing, train=train, test=test,
                                   device=device, parent_run_id=run_id, tags=tags,
                                   tracking=tracking, progress=progress, resume_run_ids=resume_ids)
        metrics = {r.spec.name: dict(r.metrics) for r in results}
    return CellOutcome(task.cell_id, RAN, run_id, metrics)


def _write_error(path: Path, message: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    first = (message.strip().splitlines() or [""])[0]
    path.write_text(json.dumps({"error": first, "detail": message,
                                "traceback": traceback.format_exc(limit=20)}, indent=2))


def read_error(run_dir: str | Path) -> str | None:
    """The first line of the error a cell's last attempt left in its folder, if any."""
    path = Path(run_dir) / ERROR_FILE
    try:
        return str(json.loads(path.read_text())["error"])
    except (OSError, ValueError, KeyError):
        return None


def read_outcome(log: str | Path) -> CellOutcome | None:
    """The outcome a cell's subprocess printed last in its log (see :func:`main`); None when the
    log ends otherwise (it failed, or was killed)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode(errors="replace").strip().splitlines()
        return CellOutcome(**json.loads(lines[-1])) if lines else None
    except (OSError, ValueError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m sslbench.benchmark.cell CELL_JSON``: how the local executor runs a cell; the
    outcome is printed last, as one JSON line (:func:`read_outcome`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sslbench.benchmark.cell RUN_DIR/cell.json", file=sys.stderr)
        return 2
    try:
        outcome = run_cell(CellTask.load(args[0]))
    except SSLBenchError as exc:
        print(f"sslbench: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(outcome)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
