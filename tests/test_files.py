"""Files sslbench writes honour the umask (``tempfile.mkstemp`` would make every one 0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from sslbench.benchmark.files import atomic_write, atomic_write_text


@pytest.fixture(params=[(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)], ids=["022", "002", "077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    mask, mode = request.param
    old = os.umask(mask)
    try:
        yield mode
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_umasks_mode(tmp_path, umask):
    new = atomic_write_text(tmp_path / "a" / "new.txt", "x")
    assert _mode(new) == umask and new.read_text() == "x"
    old = tmp_path / "old.bin"
    old.write_bytes(b"old")
    old.chmod(0o600)  # a file an earlier sslbench wrote private
    atomic_write(old, lambda f: f.write(b"new"))
    assert _mode(old) == umask and old.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "f.txt", "old")

    def boom(f: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_checkpoints_cell_files_job_records_and_reports_follow_the_umask(tmp_path, umask):
    from sslbench.benchmark.cell import CellTask
    from sslbench.benchmark.checkpoint import save_checkpoint
    from sslbench.results.aggregate import export_frame
    from sslbench.slurm.executor import record_jobs

    assert _mode(save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", {"epoch": 1})) == umask
    task = CellTask("c", "s", {}, "h", [], str(tmp_path / "cell"), None, "e")
    assert _mode(task.save()) == umask
    record_jobs(tmp_path / "slurm", {"c": "1_0"})
    assert _mode(tmp_path / "slurm" / "jobs.json") == umask
    assert _mode(export_frame(pd.DataFrame({"a": [1]}), tmp_path / "runs.csv")) == umask


def test_leaderboard_files_follow_the_umask(tmp_path):
    from results_store import build_store

    from sslbench.results.aggregate import load_runs
    from sslbench.results.leaderboard import build_leaderboard, write_leaderboard

    store = build_store(tmp_path / "store")
    frame, columns, primary = build_leaderboard(load_runs(tracking_uri=store.uri, kind="eval"),
                                                load_runs(tracking_uri=store.uri, kind="pretrain"))
    old = os.umask(0o002)  # a group's shared results folder
    try:
        paths = write_leaderboard(frame, columns, primary, tmp_path / "board", store.uri)
    finally:
        os.umask(old)
    assert {k: _mode(p) for k, p in paths.items()} == {"html": 0o664, "md": 0o664, "csv": 0o664}
