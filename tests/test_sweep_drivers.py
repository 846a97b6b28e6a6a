"""Sweep drivers: each finished cell printed with its result and time; a failed SLURM submission
leaves no cell folders; two drivers of one sweep never run a cell twice (the cell lock)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sslbench.benchmark.cell import cell_lock
from sslbench.benchmark.errors import SSLBenchError
from sslbench.benchmark.sweep import SPEC_FILE, expand, sweep_from_dict
from sslbench.benchmark.sweep_run import run
from sslbench.results.aggregate import load_runs
from sslbench.results.tracking import get_client

TINY_SET = {"data.dataset": "synthetic", "train.epochs": 1, "train.device": "cpu",
            "augment": "simclr-small", "method.proj_hidden_dim": 32, "method.proj_dim": 16,
            "data.batch_size": 32}


def _raw(tmp_path: Path, **over: object) -> dict[str, object]:
    raw: dict[str, object] = {"name": "d", "recipe": "simclr-quick", "protocols": ["knn-k20-t0.07"],
                              "set": dict(TINY_SET), "axes": {"seed": [0, 1]},
                              "out": str(tmp_path / "sweep"),
                              "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}"}}
    raw.update(over)
    return raw


def _runs(spec, kind):
    return load_runs(tracking_uri=spec.tracking_uri, experiment=spec.experiment, kind=kind, finished_only=False)


def test_each_finished_cell_is_printed_with_its_result_and_time(tmp_path):
    spec = sweep_from_dict(_raw(tmp_path))
    lines: list[str] = []
    report = run(spec, "local", echo=lines.append, progress=False)
    assert not report.failed and len(report.launched) == 2
    done = [line for line in lines if re.search(r"done in \d+(m\d\d)?s: knn-k20-t0.07 top1 \d+\.\d\d$", line)]
    assert len(done) == 2 and done[0].startswith("[1/2] ") and done[1].startswith("[2/2] "), lines
    assert (spec.sweep_dir / SPEC_FILE).exists()  # `sweep status --name d` reads it


def test_subprocess_workers_print_each_finished_cell(tmp_path):
    spec = sweep_from_dict(_raw(tmp_path, protocols=[]))
    lines: list[str] = []
    report = run(spec, "local", workers=2, echo=lines.append)
    assert not report.failed
    assert sum(bool(re.search(r"-s[01]-\w+ done in \d+(m\d\d)?s$", line)) for line in lines) == 2, lines


@pytest.fixture
def failing_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `sbatch` that refuses every job, as a cluster with a wrong partition does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit only looks for it
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # no squeue either: nothing on record to ask about
    return bin_dir


def test_a_refused_slurm_submission_leaves_no_cell_folders(tmp_path, failing_sbatch):
    spec = sweep_from_dict(_raw(tmp_path, out=str(tmp_path / "new" / "sweep")))
    with pytest.raises(SSLBenchError, match="invalid partition"):
        run(spec, "slurm", echo=lambda _: None)
    assert not (tmp_path / "new").exists()


def test_a_refused_submission_keeps_the_folders_of_earlier_runs(tmp_path, failing_sbatch):
    spec = sweep_from_dict(_raw(tmp_path, axes={"seed": [0, 1, 2]}))
    kept = expand(spec)[0].run_dir
    (kept / "checkpoints").mkdir(parents=True)
    (kept / "checkpoints" / "last.pt").write_bytes(b"an earlier run's checkpoint")
    with pytest.raises(SSLBenchError, match="invalid partition"):
        run(spec, "slurm", echo=lambda _: None)
    assert [p.name for p in (spec.sweep_dir / "cells").iterdir()] == [kept.name]
    assert (kept / "checkpoints" / "last.pt").read_bytes() == b"an earlier run's checkpoint"
    assert not (spec.sweep_dir / "slurm").exists()


def test_no_sbatch_at_all_leaves_no_cell_folders_either(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = sweep_from_dict(_raw(tmp_path))
    with pytest.raises(SSLBenchError, match="sbatch"):
        run(spec, "slurm", echo=lambda _: None)
    assert not spec.sweep_dir.exists()


def test_sbatch_without_srun_is_a_clear_error(tmp_path, failing_sbatch):
    (failing_sbatch / "srun").unlink()  # submitit's jobs start with srun: it refuses without it
    spec = sweep_from_dict(_raw(tmp_path))
    with pytest.raises(SSLBenchError, match="`srun` was not found"):
        run(spec, "slurm", echo=lambda _: None)
    assert not spec.sweep_dir.exists()


def test_a_cell_locked_by_another_driver_is_skipped_as_running_elsewhere(tmp_path):
    spec = sweep_from_dict(_raw(tmp_path, axes={"seed": [0]}, protocols=[]))
    (cell,) = expand(spec)
    lines: list[str] = []
    with cell_lock(cell.run_dir) as mine:  # the other driver
        assert mine
        report = run(spec, "local", echo=lines.append)
        with cell_lock(cell.run_dir) as also:
            assert not also  # non-blocking: it does not wait
    assert report.elsewhere == [cell.id] and report.launched == [] and not report.failed
    assert any("running elsewhere" in line for line in lines), lines
    assert _runs(spec, "pretrain").empty  # nothing ran here
    assert run(spec, "local", echo=lines.append).launched == [cell.id]  # the lock is gone with its holder


def test_two_drivers_of_one_sweep_run_every_cell_exactly_once(tmp_path):
    sweep_file = tmp_path / "grid.toml"
    seeds = [0, 1, 2, 3]
    set_lines = "\n".join(f'"{k}" = {v!r}'.replace("'", '"') for k, v in TINY_SET.items())
    sweep_file.write_text(f'name = "two"\nrecipe = "simclr-quick"\nprotocols = ["knn-k20-t0.07"]\n'
                          f'out = "sweep"\n[tracking]\nuri = "sqlite:///{tmp_path / "mlruns.db"}"\n'
                          f"[set]\n{set_lines}\n[axes]\nseed = {seeds}\n")
    spec = sweep_from_dict(_raw(tmp_path, name="two", axes={"seed": seeds}))
    get_client(spec.tracking_uri).create_experiment(spec.experiment)  # both drivers find it made
    cmd = [sys.executable, "-m", "sslbench.benchmark.cli", "sweep", "run", str(sweep_file), "--no-progress"]
    drivers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
               for _ in range(2)]
    logs = [d.communicate(timeout=900)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], logs
    pre, evals = _runs(spec, "pretrain"), _runs(spec, "eval")
    cells = expand(spec)
    assert len(pre) == len(cells) and set(pre["status"]) == {"FINISHED"}, logs
    assert sorted(pre["config_hash"]) == sorted(c.config_hash for c in cells)  # each cell once
    assert len(evals) == len(cells) and set(evals["status"]) == {"FINISHED"}
    client = get_client(spec.tracking_uri)
    for run_id in pre["run_id"]:  # and every epoch logged once
        assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1]
    ran = [line for log in logs for line in log.splitlines() if re.search(r"\] \S+ done in ", line)]
    assert len(ran) == len(cells), logs  # of the two drivers, exactly one ran each cell
