"""Sweeps on a real Slurm cluster (`.ci/slurm.sh start` makes a one-node one; CI does).

Skipped with the reason when no controller answers, unless SSLBENCH_REQUIRE_SLURM=1 (CI sets
it), which turns the skip into a failure so CI can never pass these by not running them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from sslbench.benchmark.errors import SSLBenchError
from sslbench.benchmark.sweep import expand, sweep_from_dict
from sslbench.benchmark.sweep_run import run, status_text, statuses
from sslbench.results import cells as C
from sslbench.results.aggregate import load_runs
from sslbench.results.tracking import get_client
from sslbench.slurm.executor import queue_states, recorded_jobs

pytestmark = pytest.mark.slow


def _controller_problem() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "Slurm is not installed (run `bash .ci/slurm.sh start` as root)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"no Slurm controller answers ({proc.stderr.strip()[:120]})"
    if not any(s.strip() in ("idle", "mixed", "allocated") for s in proc.stdout.splitlines()):
        return f"no Slurm node is up (sinfo: {proc.stdout.strip()[:120]})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _controller_problem()
    if problem is not None:
        if os.environ.get("SSLBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"SSLBENCH_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


TINY_SET = {"data.dataset": "synthetic", "train.device": "cpu", "augment": "simclr-small",
            "method.proj_hidden_dim": 32, "method.proj_dim": 16, "train.threads": 1}
SLURM = {"time_min": 10, "cpus_per_task": 1, "array_parallelism": 2, "signal_delay_s": 30}


def _spec(tmp_path: Path, name: str, experiment: str = "sslbench", **over: object):
    raw: dict[str, object] = {
        "name": name, "recipe": "simclr-quick", "protocols": ["knn-k20-t0.07"],
        "set": dict(TINY_SET), "out": str(tmp_path / name), "slurm": dict(SLURM),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "experiment": experiment}}
    raw.update(over)
    return sweep_from_dict(raw)


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _runs(spec, kind=None):
    return load_runs(tracking_uri=spec.tracking_uri, experiment=spec.experiment, kind=kind,
                     finished_only=False)


def _log(tmp_path: Path) -> str:
    logs = sorted(tmp_path.rglob("*_log.out"))
    return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs[-3:])


def test_grid_through_slurm_arrays_then_nothing_to_submit(slurm, tmp_path, capsys):
    """2 methods x 2 batch sizes x 2 seeds as one job array; a second run submits nothing."""
    spec = _spec(tmp_path, "grid", set={**TINY_SET, "train.epochs": 1},
                 axes={"method": ["simclr", "byol"], "batch_size": [32, 64], "seed": [0, 1]},
                 include=[{"method": "byol", "method.pred_hidden_dim": 32}])
    t0 = time.perf_counter()
    report = run(spec, "slurm", wait=True, echo=lambda _: None)
    wall = time.perf_counter() - t0
    assert len(report.launched) == 8 and len(report.job_ids) == 8
    assert len({j.split("_")[0] for j in report.job_ids.values()}) == 1  # one array
    sts, ok = statuses(spec)
    assert ok and [s.state for s in sts] == [C.DONE] * 8, status_text(spec) + _log(tmp_path)
    runs = _runs(spec)
    assert (runs["kind"] == "pretrain").sum() == 8 and (runs["kind"] == "eval").sum() == 8
    assert set(runs["status"]) == {"FINISHED"}
    second = run(spec, "slurm", echo=lambda _: None)
    assert second.launched == [] and second.job_ids == {} and len(second.done) == 8
    assert len(_runs(spec)) == 16  # nothing new, nothing duplicated
    assert all(j in recorded_jobs(spec.sweep_dir / "slurm").values() for j in report.job_ids.values())
    with capsys.disabled():
        print(f"\n[slurm grid] 8 cells through one SLURM array (parallelism 2): {wall:.1f} s")


def _checkpoint_epoch(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "last.pt"
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["epoch"])
    except Exception:  # noqa: BLE001 - not there yet, or being replaced
        return 0


def test_preempted_cell_requeues_resumes_and_matches_an_uninterrupted_run(slurm, tmp_path, capsys):
    epochs = 10
    common = {"set": {**TINY_SET, "train.epochs": epochs, "data.batch_size": 32},
              "axes": {"seed": [3]}}
    reference = _spec(tmp_path, "reference", experiment="reference", **common)
    assert not run(reference, "local", echo=lambda _: None).failed
    spec = _spec(tmp_path, "preempted", experiment="preempted", **common)
    (cell,) = expand(spec)
    report = run(spec, "slurm", echo=lambda _: None)
    (job_id,) = report.job_ids.values()
    _wait(lambda: 2 <= _checkpoint_epoch(cell.run_dir) < epochs - 2, 240,
          "the job to checkpoint its second epoch", poll=0.1)
    before = _checkpoint_epoch(cell.run_dir)
    # SLURM's preemption/timeout signal: submitit checkpoints, requeues the job and exits.
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    _wait(lambda: "Restarts=1" in _show(job_id), 60, "the job to be requeued")
    # submitit requeues first, then exits the job; the exiting run ends KILLED (preempted, not
    # failed) a moment after the requeue shows in scontrol.
    _wait(lambda: _run_status(spec) == "KILLED", 60, "the preempted run to end KILLED")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
    _wait(lambda: not _alive(job_id), 300, "the requeued job to finish")
    sts, _ = statuses(spec)
    assert sts[0].state == C.DONE, status_text(spec) + _log(tmp_path)
    pre = _runs(spec, "pretrain")
    assert len(pre) == 1  # the requeued job went on in the same MLflow run
    run_id = pre["run_id"].iloc[0]
    client = get_client(spec.tracking_uri)
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, epochs + 1))  # no epoch logged twice, none lost
    ref_pre = _runs(reference, "pretrain")
    got, want = pre.iloc[0], ref_pre.iloc[0]
    assert got["final/train_loss"] == want["final/train_loss"]  # bit-identical resume on CPU
    ev, ref_ev = _runs(spec, "eval").iloc[0], _runs(reference, "eval").iloc[0]
    assert ev["top1"] == ref_ev["top1"]
    assert "resumed_git_commit" in got.index and isinstance(got["resumed_git_commit"], str)
    with capsys.disabled():
        print(f"\n[slurm preemption] signalled at epoch {before}/{epochs}; final train loss "
              f"{got['final/train_loss']:.6f} (uninterrupted {want['final/train_loss']:.6f}); "
              f"kNN top-1 {ev['top1']:.2f} (uninterrupted {ref_ev['top1']:.2f})")


def test_data_parallel_cell_as_two_submitit_tasks(slurm, tmp_path):
    """One cell, two SLURM tasks: DDP over gloo started by submitit, one run logged by rank 0."""
    spec = _spec(tmp_path, "ddp", set={**TINY_SET, "train.epochs": 1, "data.batch_size": 32},
                 axes={"seed": [0]}, slurm={**SLURM, "tasks_per_node": 2})
    report = run(spec, "slurm", wait=True, echo=lambda _: None)
    assert len(report.job_ids) == 1
    sts, _ = statuses(spec)
    assert sts[0].state == C.DONE, status_text(spec) + _log(tmp_path)
    pre = _runs(spec, "pretrain")
    assert len(pre) == 1 and len(_runs(spec, "eval")) == 1
    assert pre["param.derived.world_size"].iloc[0] == "2"
    assert pre["param.derived.batch_per_rank"].iloc[0] == "16"


def _show(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                          check=False).stdout


def _alive(job_id: str) -> bool:
    from sslbench.slurm.executor import alive

    states = queue_states([job_id]) or {}
    return alive(states.get(job_id))


def _run_status(spec) -> str:
    return str(_runs(spec, "pretrain")["status"].iloc[0])


def test_unrecorded_jobs_of_the_sweep_block_a_second_submission(slurm, tmp_path):
    """A driver killed between sbatch and jobs.json: the next run refuses to submit twice."""
    spec = _spec(tmp_path, "stray", set={**TINY_SET, "train.epochs": 1}, axes={"seed": [0]})
    job = subprocess.run(["sbatch", "--parsable", "--job-name", "sslbench-stray", "--time", "2",
                          "--wrap", "sleep 60"], capture_output=True, text=True, check=True)
    job_id = job.stdout.strip().split(";")[0]
    try:
        _wait(lambda: _alive(job_id), 30, "the stray job to be queued")
        with pytest.raises(SSLBenchError, match="did not record"):
            run(spec, "slurm", echo=lambda _: None)
    finally:
        subprocess.run(["scancel", job_id], check=False)
