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
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sslbench.benchmark.errors import SSLBenchError

TASK_FILE = "cell.json"
ERROR_FILE = "error.json"


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
    """What one call of :func:`run_cell` did: ``skipped`` (already done) or ``ran``."""

    cell_id: str
    action: str
    pretrain_run_id: str | None
    metrics: dict[str, dict[str, float]]


def run_cell(task: CellTask, *, progress: bool = False) -> CellOutcome:
    """Runs one cell to completion, doing only what MLflow does not already have.

    Raises:
        SSLBenchError: bad config, missing data, a finished pretraining whose checkpoint is
            gone, a non-finite loss (each also written to ``<run_dir>/error.json``).
    """
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
        return CellOutcome(task.cell_id, "skipped", rec.pretrain_run_id, {})

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
            return CellOutcome(task.cell_id, "ran", rec.pretrain_run_id, {})
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
        return CellOutcome(task.cell_id, "ran", run_id, {})

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
    return CellOutcome(task.cell_id, "ran", run_id, metrics)


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


def main(argv: list[str] | None = None) -> int:
    """``python -m sslbench.benchmark.cell CELL_JSON``: how the local executor runs a cell."""
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
