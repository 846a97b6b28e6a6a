"""What a user sees: bars only on a terminal; one line per epoch and per evaluation, always."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from sslbench.benchmark.cli import main
from sslbench.benchmark.console import bars_enabled, duration, epoch_line

EPOCH = re.compile(r"^simclr epoch (\d+)/2: loss [\d.]+, lr [\d.e+-]+, [\d,]+ images/s, [\d.]+ s, ETA \S+$")
EVAL = re.compile(r"^  (\S+) on synthetic: top1 [\d.]+(, \w+ [\d.]+)* \([\d.]+ s\)$")
ARGS = ["pretrain", "--recipe", "simclr-quick", "--set", "data.dataset=synthetic", "--set", "data.batch_size=32",
        "--set", "augment=simclr-small", "--epochs", "2", "--tracking-uri", "none", "--device", "cpu"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_piped_pretrain_log_has_one_line_per_epoch_and_evaluation_and_no_carriage_return(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sslbench.benchmark.cli", *ARGS, "--out", str(tmp_path / "run"),
                           "--eval", "knn-k20-t0.07,knn-k200-t0.1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    lines = proc.stdout.splitlines()
    epochs = [m.group(1) for m in map(EPOCH.match, lines) if m]
    assert epochs == ["1", "2"], proc.stdout
    evals = [m.group(1) for m in map(EVAL.match, lines) if m]
    assert evals == ["knn-k20-t0.07", "knn-k200-t0.1"], proc.stdout
    # in order: pretraining, its epochs, the checkpoint, then the evaluations
    start = next(i for i, line in enumerate(lines) if line.startswith("Pretraining"))
    ckpt = next(i for i, line in enumerate(lines) if line.startswith("Checkpoint:"))
    assert start < lines.index(next(line for line in lines if EPOCH.match(line))) < ckpt
    assert all(EVAL.match(line) for line in lines[ckpt + 1:])


def test_no_progress_keeps_the_epoch_lines(tmp_path, capsys):
    assert main([*ARGS, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert sum(bool(EPOCH.match(line)) for line in out.out.splitlines()) == 2, out.out
    assert "\r" not in out.out + out.err


def test_bars_only_where_asked_and_stderr_is_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not bars_enabled(True)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert bars_enabled(True) and not bars_enabled(False)


def test_a_terminal_still_gets_the_bars(monkeypatch):
    from sslbench.benchmark.engine import _progress

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(_progress(range(3), 3, "epoch 1/1", True)) == [0, 1, 2]
    assert "\r" in terminal.getvalue() and "epoch 1/1" in terminal.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert list(_progress(range(3), 3, "epoch 1/1", False)) == [0, 1, 2] and quiet.getvalue() == ""


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (12, "12s"), (65, "1m05s"), (3725, "1h02m")])
def test_durations(seconds, text):
    assert duration(seconds) == text


def test_epoch_line_names_the_epoch_loss_lr_speed_and_eta():
    metrics = {"train/loss": 5.12345, "train/lr": 0.03, "train/images_per_s": 1234.4, "train/epoch_time_s": 8.06}
    assert epoch_line("byol", 3, 22, metrics, 170.0) == (
        "byol epoch 3/22: loss 5.1235, lr 0.03, 1,234 images/s, 8.1 s, ETA 2m50s")
    assert epoch_line("byol", 3, 22, metrics, None).endswith("8.1 s")
