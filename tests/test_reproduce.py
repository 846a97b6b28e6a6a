"""The reference table and `sslbench reproduce`: schema, matching, verdicts and the reports,
on a throwaway MLflow store of runs with known values (tests/results_store.py)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from results_store import RUNS, ResultsStore, build_store, write_reference

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results.aggregate import load_runs
from sslbench.results.reference import COLUMN_NAMES, COLUMNS, METRICS, PROTOCOLS, load_reference
from sslbench.results.reproduce import (
    NOT_COMPARABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    WITHIN,
    reproduce,
    verdict,
    write_report,
)
from sslbench.results.stats import mean_ci


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ResultsStore:
    return build_store(tmp_path_factory.mktemp("reproduce"))


# --- The packaged reference table ------------------------------------------------------------------
def test_packaged_reference_schema_and_sources() -> None:
    ref = load_reference()
    assert list(ref.columns) == ["file", *COLUMN_NAMES]
    assert ref["id"].is_unique
    for col in (c.name for c in COLUMNS if c.required):
        assert (ref[col].astype(str).str.len() > 0).all(), col
    assert ref["source"].str.len().min() > 3  # every row says where its number is printed
    assert set(ref["protocol"]) <= PROTOCOLS and set(ref["metric"]) <= METRICS
    assert ref["value"].between(0, 100).all() and (ref["tolerance"] > 0).all()
    assert str(ref["epochs"].dtype) == "Int64" and str(ref["batch_size"].dtype) == "Int64"
    # Flagged numbers keep their flag and get the wider tolerance.
    assert (ref.loc[ref["flag"] != "", "tolerance"] >= 1.5).all()
    files = set(ref["file"])
    assert {"papers.csv", "anchors.csv", "sslbench.csv"} <= files, files


def test_packaged_reference_spot_checks() -> None:
    ref = load_reference().set_index("id", drop=False)

    def one(**match: object) -> pd.Series:
        rows = ref
        for k, v in match.items():
            rows = rows[rows[k] == v]
        assert len(rows) >= 1, match
        return rows.iloc[0]

    # PAPERS.md §3.2, BYOL Table 16: BYOL at batch 128, 300 epochs: 69.6 ± 0.5.
    r = one(method="byol", ablation="batch_size", batch_size=128, metric="top1", source="BYOL paper Table 16")
    assert (r["value"], r["std"], r["epochs"], r["dataset"]) == (69.6, 0.5, 300, "imagenet")
    r = one(method="simclr", ablation="batch_size", batch_size=64, metric="top1", reported_by="BYOL paper")
    assert (r["value"], r["std"]) == (59.2, 2.9)  # SimCLR as re-run by BYOL
    # ANCHORS.md §3.1: solo-learn BYOL CIFAR-10, online linear, 92.58.
    r = one(method="byol", dataset="cifar10", reported_by="solo-learn", metric="top1")
    assert r["value"] == 92.58 and r["protocol"] == "linear-online"
    # sslbench's own baselines exist for every quick-start method.
    mine = ref[ref["reported_by"] == "sslbench"]
    assert {"simclr", "mocov2", "byol"} <= set(mine["method"])
    assert (mine["provenance"] == "M").all()


def test_reference_errors_name_file_line_and_column(tmp_path: Path) -> None:
    path = write_reference(tmp_path)
    rows = list(csv.DictReader(path.open()))
    rows[2]["source"] = ""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMN_NAMES)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(SSLBenchError, match=r"test.csv, line 4 is invalid: 'source' is empty"):
        load_reference(tmp_path)
    rows[2]["source"], rows[3]["protocol"] = "x", "lineal"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMN_NAMES)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(SSLBenchError, match=r"line 5 .*protocol 'lineal' is not one of"):
        load_reference(tmp_path)
    (tmp_path / "dup").mkdir()
    write_reference(tmp_path / "dup")
    write_reference(tmp_path / "dup2")
    with pytest.raises(SSLBenchError, match="used more than once"):
        load_reference(tmp_path / "dup", extra=[tmp_path / "dup2"])
    with pytest.raises(SSLBenchError, match="No reference tables"):
        load_reference(tmp_path / "nowhere")


# --- Verdicts --------------------------------------------------------------------------------------
def test_verdict_rules_by_hand() -> None:
    # [89.5, 90.0, 90.8]: mean 90.1, 95 % CI 90.1 ± 4.303 * 0.6557 / sqrt(3) = [88.47, 91.73]
    assert verdict([89.5, 90.0, 90.8], 90.0, 1.0) == REPRODUCED
    assert verdict([90.0, 90.1, 90.2], 91.0, 1.0) == WITHIN  # |Δ| 0.9 <= 1, CI [89.85, 90.35] excludes it
    assert verdict([90.0, 90.1, 90.2], 95.0, 1.0) == NOT_REPRODUCED
    assert verdict([90.0, 90.1, 90.2], 85.0, 1.0) == NOT_REPRODUCED  # above by more than tol, too
    assert verdict([90.0], 90.0, 1.0) == WITHIN + " (single seed)"  # no interval: at most "within"
    assert verdict([80.0], 90.0, 1.0) == NOT_REPRODUCED + " (single seed)"
    # A wide interval that holds the reference is not enough when the mean is off by > tol.
    assert verdict([80.0, 100.0], 91.5, 1.0) == NOT_REPRODUCED


def test_reproduce_on_a_store(store: ResultsStore) -> None:
    runs = load_runs(tracking_uri=store.uri, kind="eval")
    report = reproduce(runs, load_reference(store.reference_dir))
    by = {(r["method"], r["dataset"], r["protocol"]): r for _, r in report.iterrows()}
    assert len(report) == len(RUNS)
    simclr = by[("simclr", "cifar10", "linear")]
    ci = mean_ci([89.6, 90.1, 90.9])
    assert simclr["verdict"] == REPRODUCED and simclr["n"] == 3 and simclr["seeds"] == "0,1,2"
    assert (simclr["mean"], simclr["ci_lo"], simclr["ci_hi"]) == (pytest.approx(ci.mean), pytest.approx(ci.lo), pytest.approx(ci.hi))
    assert simclr["reference_id"] == "t.simclr" and simclr["delta"] == pytest.approx(0.2)
    assert by[("byol", "cifar10", "linear")]["verdict"] == WITHIN
    assert by[("mocov2", "cifar10", "linear")]["verdict"] == NOT_REPRODUCED
    assert by[("mocov2", "cifar10", "linear")]["delta"] == pytest.approx(90.0 - 95.0)
    dino = by[("dino", "cifar10", "linear")]
    assert dino["verdict"] == NOT_COMPARABLE and dino["differs"] == "batch_size 128 vs 256"
    assert by[("simsiam", "cifar10", "linear")]["verdict"] == WITHIN + " (single seed)"
    knn = by[("simclr", "cifar10", "knn-k200-t0.1")]  # only a k=20 reference: protocol differs
    assert knn["verdict"] == NOT_COMPARABLE and knn["differs"] == "protocol knn-k200-t0.1 vs knn-k20-t0.07"
    stl = by[("simclr", "stl10", "knn-k200-t0.1")]  # every difference is named
    assert stl["differs"] == "dataset stl10 vs cifar10; protocol knn-k200-t0.1 vs knn-k20-t0.07"
    assert by[("byol", "cifar10", "knn-k200-t0.1")]["differs"] == "protocol knn-k200-t0.1 vs linear"
    # Ordered by verdict: reproduced first, not comparable last.
    assert report["verdict"].iloc[0] == REPRODUCED and report["verdict"].iloc[-1].startswith(NOT_COMPARABLE)
    assert all(len(ids.split(",")) == r["n"] for ids, (_, r) in zip(report["run_ids"], report.iterrows(), strict=True))


def test_reproduce_reports_and_cli(store: ResultsStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "sslbench.benchmark.cli", "reproduce", "--tracking-uri", store.uri,
         "--out", str(out), "--reference", str(store.reference_dir), "--metric", "top1,top5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 reproduced" in proc.stdout and "not reproduced" in proc.stdout
    csv_report = pd.read_csv(out / "reproduce.csv")
    assert len(csv_report) == 2 * len(RUNS)  # top1 and top5 rows
    md = (out / "reproduce.md").read_text()
    assert "| simclr" in md and "reproduced" in md and "batch_size 128 vs 256" in md
    html = (out / "reproduce.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "http://" not in html and "https://" not in html
    assert 'class="v-reproduced"' in html and "batch_size 128 vs 256" in html
    strict = subprocess.run(
        [sys.executable, "-m", "sslbench.benchmark.cli", "reproduce", "--tracking-uri", store.uri,
         "--out", str(out), "--reference", str(store.reference_dir), "--strict"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert strict.returncode == 1 and "--strict" in strict.stderr


def test_reproduce_edge_cases(store: ResultsStore, tmp_path: Path) -> None:
    runs = load_runs(tracking_uri=store.uri, kind="eval")
    ref = load_reference(store.reference_dir)
    assert reproduce(runs.iloc[:0], ref).empty
    none = reproduce(runs, ref[ref["method"] != "simclr"], methods=["simclr"])
    assert set(none["differs"]) == {"no reference row for this method and metric"}
    with pytest.raises(SSLBenchError, match="No run logged the metric 'AP'"):
        reproduce(runs, ref, metrics=["AP"])
    with pytest.raises(SSLBenchError, match="lack the column"):
        reproduce(runs.drop(columns=["seed"]), ref)
    paths = write_report(reproduce(runs, ref), tmp_path, "sqlite:///x.db")
    assert {p.suffix for p in paths.values()} == {".md", ".html", ".csv"}
    assert not math.isnan(pd.read_csv(paths["csv"])["mean"].iloc[0])


def test_baseline_rows_from_runs_pass_the_schema_and_reproduce(store: ResultsStore, tmp_path: Path) -> None:
    from sslbench.results.baselines import baseline_rows, to_csv, tolerance

    assert tolerance(float("nan")) == 1.0 and tolerance(0.2) == 1.0 and tolerance(0.62) == 1.6
    runs = load_runs(tracking_uri=store.uri, kind="eval")
    rows = baseline_rows(runs, command="pytest")
    assert len(rows) == len(RUNS)
    simclr = rows[(rows["method"] == "simclr") & (rows["protocol"] == "linear")].iloc[0]
    ci = mean_ci([89.6, 90.1, 90.9])
    assert simclr["value"] == pytest.approx(ci.mean, abs=1e-3) and simclr["std"] == pytest.approx(ci.std, abs=1e-3)
    assert simclr["tolerance"] == tolerance(ci.std) and simclr["n_runs"] == 3 and "seeds 0,1,2" in simclr["source"]
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "sslbench.csv").write_text(to_csv(rows))
    ref = load_reference(tmp_path / "ref")  # what `results baselines` writes passes the schema
    report = reproduce(runs, ref)
    assert set(report["verdict"]) <= {REPRODUCED, WITHIN + " (single seed)"}  # runs reproduce themselves
    with pytest.raises(SSLBenchError, match="No evaluation runs"):
        baseline_rows(runs.iloc[:0], command="x")
