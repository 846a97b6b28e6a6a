"""Sweep cells as SLURM job arrays through submitit, and what the scheduler says of them.

Each cell is one array task running :class:`CellJob`, a submitit ``Checkpointable``: when SLURM
signals a time limit or a preemption (``USR2``, ``signal_delay_s`` before the end), submitit
calls :meth:`CellJob.checkpoint`, requeues the job and exits it; the requeued job calls the
cell again, which resumes from the cell's last epoch checkpoint into the same MLflow run (the
engine checkpoints every epoch, so at most the epoch in progress is redone). Job ids are kept in
``<sweep_dir>/slurm/jobs.json``; the scheduler is read with ``squeue`` only (never ``sacct``,
which needs slurmdbd).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit

from sslbench.benchmark.errors import SSLBenchError
from sslbench.benchmark.files import atomic_write_text

JOBS_FILE = "jobs.json"
#: squeue states in which a job will still run (or is running): never submit its cell again.
ALIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
    "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED",
})


class CellJob(submitit.helpers.Checkpointable):
    """A submitit job running one sweep cell (``<run_dir>/cell.json``) with :func:`run_cell`.

    It holds only the path of the cell file: all progress is on disk (checkpoints) and in MLflow,
    so the default :meth:`checkpoint` (resubmit this same callable) is the whole requeue contract.
    """

    def __init__(self, task_path: str) -> None:
        self.task_path = task_path

    def __call__(self) -> dict[str, Any]:
        from dataclasses import asdict

        from sslbench.benchmark.cell import CellTask, run_cell

        return asdict(run_cell(CellTask.load(self.task_path)))


def slurm_executor(settings: Any, folder: Path, job_name: str) -> submitit.SlurmExecutor:
    """A submitit executor for one sweep (``settings``: a :class:`SlurmSettings`).

    Raises:
        SSLBenchError: ``sbatch`` (or ``srun``, which submitit's jobs start with) is not on PATH.
    """
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise SSLBenchError(
            f"`{missing[0]}` was not found, so nothing can be submitted to SLURM.",
            "Run on a SLURM login node (or load its module), or use `--executor local`.")
    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=settings.max_requeues)
    params: dict[str, Any] = {
        "job_name": job_name, "time": settings.time_min, "nodes": settings.nodes,
        "ntasks_per_node": settings.ntasks_per_node, "cpus_per_task": settings.cpus_per_task,
        "array_parallelism": settings.array_parallelism,
        "signal_delay_s": settings.signal_delay_s, "stderr_to_stdout": True,
    }
    optional = {"partition": settings.partition, "account": settings.account,
                "qos": settings.qos, "constraint": settings.constraint,
                "gpus_per_node": settings.gpus_per_node or None,
                "mem": f"{int(settings.mem_gb * 1024)}MB" if settings.mem_gb else None,
                "setup": list(settings.setup) or None,
                "additional_parameters": dict(settings.additional) or None}
    params.update({k: v for k, v in optional.items() if v is not None})
    ex.update_parameters(**params)
    return ex


def submit_cells(settings: Any, sweep_dir: Path, sweep_name: str,
                 task_paths: Mapping[str, Path]) -> dict[str, str]:
    """Submits one job array (a task per cell) and records ``cell id -> job id``.

    Returns:
        cell id -> SLURM job id (``<array>_<index>``).
    """
    folder = sweep_dir / "slurm"
    job_name = f"sslbench-{sweep_name}"
    ex = slurm_executor(settings, folder, job_name)
    strays = unrecorded_jobs(job_name, list(recorded_jobs(folder).values()))
    if strays:
        raise SSLBenchError(
            f"SLURM already has job(s) {', '.join(strays[:5])} named '{job_name}' that this sweep "
            "did not record (a `sweep run` killed while submitting, or another sweep of the same "
            "name); submitting again could run the same cells twice.",
            f"Wait until they end (`squeue --name {job_name}`), or cancel them "
            f"(`scancel --name {job_name}`), then run again.")
    ids = list(task_paths)
    try:
        with ex.batch():
            jobs = [ex.submit(CellJob(str(task_paths[i]))) for i in ids]
    except submitit.core.utils.FailedJobError as exc:
        first = (str(exc).strip().splitlines() or ["sbatch failed"])[-1]
        raise SSLBenchError(f"SLURM refused the sweep's job array: {first}",
                            "Check partition, account, qos, time and resources under [slurm] "
                            "(`sinfo` lists partitions).") from None
    submitted = {cell: str(job.job_id) for cell, job in zip(ids, jobs, strict=True)}
    record_jobs(folder, submitted)
    return submitted


def record_jobs(folder: Path, jobs: Mapping[str, str]) -> None:
    """Merges ``cell id -> job id`` into ``jobs.json`` (atomically; newest id per cell wins)."""
    known = recorded_jobs(folder)
    known.update(jobs)
    atomic_write_text(folder / JOBS_FILE, json.dumps(known, indent=2, sort_keys=True))


def recorded_jobs(folder: Path) -> dict[str, str]:
    """``cell id -> job id`` of every cell this sweep submitted (empty if none)."""
    try:
        data = json.loads((folder / JOBS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _squeue(*selection: str) -> dict[str, str] | None:
    """``job id -> state`` of the jobs ``squeue`` lists for ``selection`` (array tasks expanded);
    None when squeue is missing or fails. A selection of only unknown job ids lists nothing."""
    if shutil.which("squeue") is None:
        return None
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", *selection],
                          capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        return {} if "Invalid job id" in proc.stderr else None
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state
    return states


def queue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``job id -> squeue state`` for the given jobs (array tasks expanded); jobs SLURM no
    longer lists are absent. None when ``squeue`` is missing or the controller is unreachable."""
    if not job_ids:
        return {}
    return _squeue("-t", "all", "-j", ",".join(sorted({j.split("_")[0] for j in job_ids})))


def unrecorded_jobs(job_name: str, recorded: Sequence[str]) -> list[str]:
    """Alive jobs named ``job_name`` that ``jobs.json`` does not know (a driver killed between
    ``sbatch`` and writing the file). Empty when squeue cannot be asked."""
    known = set(recorded) | {j.split("_")[0] for j in recorded}
    return [job for job, state in (_squeue("--name", job_name) or {}).items()
            if alive(state) and job not in known and job.split("_")[0] not in known]


def alive(state: str | None) -> bool:
    """Whether a job in this squeue state will still run."""
    return state is not None and state in ALIVE_STATES
