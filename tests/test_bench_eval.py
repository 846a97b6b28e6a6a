"""The evaluation-speed benchmark runs end to end on the CPU (tiny sizes) and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslbench.benchmark import bench_eval


def test_small_run_prints_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    code = bench_eval.main(["--small", "--device", "cpu", "--train", "300", "--test", "40", "--dim", "16",
                            "--images", "24", "--backbone", "small-cnn", "--repeats", "1", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "kNN k=200: 300 x 40 x 16 features, chunk 1024" in printed and "images/s" in printed
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["knn_chunk"] == 1024 and result["extract_precision"] == "fp32"
    assert result["extract_batch_size"] == 512 and result["extract_images"] == 24
    for key in ("knn_seconds", "knn_queries_per_s", "extract_seconds", "extract_images_per_s"):
        assert result[key] > 0
    assert "knn_seconds_before" not in result and "extract_seconds_before" not in result  # CUDA only


def test_small_defaults_and_bad_arguments() -> None:
    args = bench_eval.build_parser().parse_args(["--small"])
    assert args.train is None and bench_eval.SMALL_SIZES == (5_000, 1_000, 512, 2_000)
    assert bench_eval.FULL_SIZES == (50_000, 10_000, 512, 60_000)
    assert bench_eval.main(["--small", "--device", "cpu", "--repeats", "0"]) == 2
    if not torch.cuda.is_available():
        assert bench_eval.main(["--small", "--device", "cuda"]) == 2
