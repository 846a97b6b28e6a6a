"""MLflow off: ``--tracking-uri none`` (any case) and ``--no-mlflow`` run pretraining and evaluation
without importing mlflow (a GPU machine may not have it), and the heavy optional libraries stay
unimported until a command needs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslbench.benchmark.cli import _tracking_off, build_parser, main

TINY = ["--dataset", "synthetic", "--set", "data.batch_size=32", "--set", "method.proj_hidden_dim=32",
        "--set", "method.proj_dim=16", "--set", "augment=simclr-small", "--no-progress"]


def _without_mlflow(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``import mlflow`` (and ``import mlflow.<anything>``) raises ImportError."""
    fake = tmp_path / "fake-site" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mlflow is not installed on this machine (test)')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _cli(env: dict[str, str], cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sslbench.benchmark.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_pretrain_and_eval_run_without_mlflow(tmp_path: Path) -> None:
    env = _without_mlflow(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    probe = subprocess.run([sys.executable, "-c", "import mlflow.entities"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "not installed on this machine" in probe.stderr  # the fake hides mlflow
    pre = _cli(env, work, "pretrain", "--recipe", "simclr-quick", *TINY, "--epochs", "0", "--out", "run",
               "--eval", "knn-k20-t0.07", "--tracking-uri", "none")
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert "knn-k20-t0.07 on synthetic: top1" in pre.stdout
    checkpoint = work / "run" / "checkpoints" / "last.pt"
    assert checkpoint.is_file()
    ev = _cli(env, work, "eval", str(checkpoint), "--protocol", "knn-k20-t0.07", "--no-progress",
              "--tracking-uri", "NONE")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "knn-k20-t0.07 on synthetic: top1" in ev.stdout
    ev = _cli(env, work, "eval", str(checkpoint), "--protocol", "knn-k20-t0.07", "--no-progress", "--no-mlflow")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert not list(work.glob("mlruns*")), "nothing may be logged"


def test_tracking_none_is_off_in_any_case_and_refused_where_mlflow_is_needed(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for value in ("none", "NONE", " None "):
        assert _tracking_off(parser.parse_args(["eval", "ckpt.pt", "--tracking-uri", value]))
    assert _tracking_off(parser.parse_args(["pretrain", "--no-mlflow"]))
    assert not _tracking_off(parser.parse_args(["eval", "ckpt.pt", "--tracking-uri", "sqlite:///none.db"]))
    assert not _tracking_off(parser.parse_args(["eval", "ckpt.pt"]))
    for argv in (["results", "table"], ["reproduce"], ["leaderboard"], ["quickstart"],
                 ["sweep", "plan", "--recipe", "simclr-quick"]):
        assert main([*argv, "--tracking-uri", "None"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sslbench: error: ") and "reads its runs back from MLflow" in err, err


def test_entry_modules_import_no_optional_heavy_library() -> None:
    code = ("import sys; import sslbench.benchmark.engine, sslbench.protocols.run, sslbench.benchmark.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'submitit', 'pycocotools')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
