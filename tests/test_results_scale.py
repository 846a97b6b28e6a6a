"""Tests of reading many runs: load_runs paging, the results benchmark's store, export_frame.

One SQLite store per module (MLflow's migrations take seconds) holds two experiments:

* ``ties``: evaluation runs written through ``MlflowClient`` in shuffled order, three at a time
  sharing one start time, plus runs that must not be read (FAILED, RUNNING, pretraining,
  deleted), so paging has ties to break and rows to skip;
* the results benchmark's experiment (``sslbench.benchmark.bench_results``), bulk-inserted, so
  the benchmark's own store and checks are tested at a small size.

The 10,000-run timing lives only in the benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from sslbench.benchmark import bench_results as B
from sslbench.benchmark.errors import SSLBenchError
from sslbench.results import tracking as T
from sslbench.results.aggregate import (
    EXPORT_SUFFIXES,
    SEARCH_PAGE_SIZE,
    aggregate,
    export_frame,
    load_runs,
)

TIES = "ties"
N_EVAL = 23  # FINISHED eval runs in TIES: more than a few pages of PAGE
PAGE = 5
BENCH_RUNS = 60  # FINISHED eval runs in the benchmark's experiment


@dataclasses.dataclass
class Store:
    uri: str
    folder: Path
    eval_ids: list[str]  # FINISHED eval runs of TIES, by (start_time, run_id)
    running_id: str  # a RUNNING eval run of TIES that starts before all others
    layout: B.Layout  # the benchmark's experiment


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    folder = tmp_path_factory.mktemp("scale")
    uri = f"sqlite:///{folder / T.DEFAULT_SQLITE_FILE}"
    layout, built = B.build_store(uri, BENCH_RUNS, n_params=12)  # into a new store only
    assert built
    client = T.get_client(uri)
    exp = client.create_experiment(TIES, artifact_location=str(folder / "mlruns"))
    rng = random.Random(0)
    plan = [("FINISHED", "eval")] * N_EVAL + [("FAILED", "eval"), ("KILLED", "eval")]
    plan += [("FINISHED", "pretrain")] * 3 + [("DELETED", "eval")]
    rng.shuffle(plan)
    finished: list[tuple[int, str]] = []
    for i, (status, kind) in enumerate(plan):
        start = 1_700_000_000_000 + (i // 3) * 1000  # three runs per start time
        tags = {T.TAG_KIND: kind, T.TAG_SEED: str(i), T.TAG_BATCH_SIZE: "256", "index": str(i)}
        run = client.create_run(exp, start_time=start, tags=tags, run_name=f"{kind}/{i}")
        run_id = run.info.run_id
        client.log_batch(
            run_id,
            metrics=[Metric(T.METRIC_TOP1, 50.0 + i, start, 0)],
            params=[Param("k", str(i)), Param("optim.lr", "0.1")],
            tags=[RunTag(T.TAG_PROTOCOL, "linear")],
            synchronous=True,
        )
        if status == "DELETED":
            client.set_terminated(run_id, "FINISHED")
            client.delete_run(run_id)
            continue
        client.set_terminated(run_id, status)
        if (status, kind) == ("FINISHED", "eval"):
            finished.append((start, run_id))
    running = client.create_run(
        exp, start_time=1_600_000_000_000, tags={T.TAG_KIND: "eval"}, run_name="eval/running"
    )
    return Store(uri, folder, [r for _, r in sorted(finished)], running.info.run_id, layout)


def _count_calls(monkeypatch: pytest.MonkeyPatch, uri: str) -> list[dict[str, Any]]:
    """Records the keyword arguments of every ``search_runs`` call of the store's client."""
    client = T.get_client(uri)
    original, calls = client.search_runs, []

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "search_runs", recording)
    return calls


# --- paging -----------------------------------------------------------------------------------
@pytest.mark.parametrize("page_size", [1, PAGE, N_EVAL, N_EVAL + 1, None])
def test_paging_returns_every_run_once_in_start_time_order(
    store: Store, monkeypatch: pytest.MonkeyPatch, page_size: int | None
) -> None:
    calls = _count_calls(monkeypatch, store.uri)
    runs = load_runs(tracking_uri=store.uri, experiment=TIES, page_size=page_size)
    assert runs["run_id"].tolist() == store.eval_ids  # ties broken by run id, none twice
    assert runs["start_time"].is_monotonic_increasing
    page = page_size or SEARCH_PAGE_SIZE
    assert len(calls) == math.ceil(N_EVAL / page)
    assert {c["max_results"] for c in calls} == {page}
    single = load_runs(tracking_uri=store.uri, experiment=TIES, page_size=50_000)
    pd.testing.assert_frame_equal(runs, single)
    assert str(runs["seed"].dtype) == "Int64" and (runs["status"] == "FINISHED").all()
    assert runs["param.k"].tolist() == runs["index"].tolist()
    assert runs["top1"].tolist() == [50.0 + int(i) for i in runs["index"]]


def test_paging_with_the_filters_off(store: Store) -> None:
    everything = load_runs(tracking_uri=store.uri, experiment=TIES, kind=None, finished_only=False,
                           page_size=PAGE)
    # 23 + FAILED + KILLED + 3 pretraining + RUNNING; the deleted run is not ACTIVE
    assert len(everything) == N_EVAL + 6 and everything["run_id"].is_unique
    assert everything["run_id"].iloc[0] == store.running_id
    assert everything["start_time"].is_monotonic_increasing
    assert set(everything["status"]) == {"FINISHED", "FAILED", "KILLED", "RUNNING"}


def test_a_run_that_finishes_while_paging_is_not_read_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, client = store.uri, T.get_client(store.uri)
    exp = client.create_experiment("live", artifact_location=str(store.folder / "mlruns"))
    late = client.create_run(exp, start_time=1000, tags={T.TAG_KIND: "eval"}).info.run_id
    ids = []
    for i in range(1, 7):  # FINISHED, all starting after the RUNNING one
        run = client.create_run(exp, start_time=1000 + i, tags={T.TAG_KIND: "eval"})
        client.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    original = client.search_runs

    def finish_between_pages(*args: Any, **kwargs: Any) -> Any:
        page = original(*args, **kwargs)
        if kwargs.get("page_token") is None:  # shifts every later page by one
            client.set_terminated(late, "FINISHED")
        return page

    monkeypatch.setattr(client, "search_runs", finish_between_pages)
    runs = load_runs(tracking_uri=uri, experiment="live", page_size=2)
    assert runs["run_id"].tolist() == ids


def test_a_server_that_refuses_large_pages_gets_mlflows_default(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = T.get_client(store.uri)
    original, sizes = client.search_runs, []

    def capped(*args: Any, **kwargs: Any) -> Any:
        sizes.append(kwargs["max_results"])
        if kwargs["max_results"] > 1000:
            raise MlflowException.invalid_parameter_value(
                f"Invalid value {kwargs['max_results']} for parameter 'max_results' supplied."
            )
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "search_runs", capped)
    runs = load_runs(tracking_uri=store.uri, experiment=TIES)
    assert sizes == [SEARCH_PAGE_SIZE, 1000] and runs["run_id"].tolist() == store.eval_ids


def test_other_search_errors_are_not_retried(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    client = T.get_client(store.uri)
    calls = []

    def bad_filter(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        raise MlflowException.invalid_parameter_value("Invalid filter 'tags.kind = x'")

    monkeypatch.setattr(client, "search_runs", bad_filter)
    with pytest.raises(SSLBenchError, match="Invalid filter"):
        load_runs(tracking_uri=store.uri, experiment=TIES)
    assert len(calls) == 1


@pytest.mark.parametrize("page_size", [0, -1, 50_001])
def test_page_size_out_of_range(store: Store, page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size"):
        load_runs(tracking_uri=store.uri, experiment=TIES, page_size=page_size)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_left_as_it_was(store: Store, enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        load_runs(tracking_uri=store.uri, experiment=TIES, page_size=PAGE)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


# --- the benchmark's store --------------------------------------------------------------------
def test_benchmark_store_reads_back_through_paging(store: Store) -> None:
    B.check_store(store.uri, store.layout)
    runs = load_runs(tracking_uri=store.uri, experiment=B.EXPERIMENT, page_size=7)
    B.check_frame(runs, aggregate(runs), store.layout, "paged")
    assert len(runs) == BENCH_RUNS  # neither the FAILED evaluations nor the parents
    assert runs["parent_run_id"].notna().all() and (runs["kind"] == "eval").all()
    wrong = runs.copy()
    wrong.loc[0, B.T.METRIC_TOP1] += 0.5
    with pytest.raises(AssertionError):
        B.check_frame(wrong, aggregate(wrong), store.layout, "wrong")


def test_benchmark_reuses_a_kept_store(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(runs=BENCH_RUNS, params=12, store=str(store.folder), keep=False,
                              repeats=1, skip_naive=False)
    seconds = B.run(args)
    out = capsys.readouterr().out
    assert "reused" in out and "mlflow.search_runs / sslbench" in out
    assert set(seconds) == {"sslbench", "mlflow", "build"}
    assert (store.folder / T.DEFAULT_SQLITE_FILE).exists()  # a store it did not create stays
    assert B.main(["--runs", str(BENCH_RUNS + 1), "--params", "12", "--store", str(store.folder)]) == 2
    assert "--runs" in capsys.readouterr().err


def test_benchmark_refuses_a_store_with_other_experiments(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / T.DEFAULT_SQLITE_FILE}"
    T.get_client(uri).create_experiment("mine", artifact_location=str(tmp_path / "mlruns"))
    with pytest.raises(SSLBenchError, match="mine"):
        B.build_store(uri, 10, n_params=0)
    assert load_runs(tracking_uri=uri, experiment=B.EXPERIMENT).empty


# --- export_frame -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame(store: Store) -> pd.DataFrame:
    runs = load_runs(tracking_uri=store.uri, experiment=B.EXPERIMENT)
    runs.loc[0, "top5"] = np.nan  # a missing metric
    runs.loc[1, "seed"] = pd.NA  # a missing int
    return runs


def test_export_parquet_round_trip_keeps_dtypes(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = export_frame(frame, tmp_path / "new" / "folder" / "runs.parquet")
    assert path == tmp_path / "new" / "folder" / "runs.parquet"
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, frame)
    for col in ("batch_size", "epochs", "seed"):
        assert str(back[col].dtype) == "Int64"
    assert back["seed"].isna().sum() == 1
    assert isinstance(back["start_time"].dtype, pd.DatetimeTZDtype)
    assert str(back["start_time"].dt.tz) == "UTC"
    agg = aggregate(frame)
    pd.testing.assert_frame_equal(pd.read_parquet(export_frame(agg, tmp_path / "agg.PARQUET")), agg)


def test_export_csv_round_trip_keeps_values(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = export_frame(frame, tmp_path / "sub" / "runs.csv")
    text_cols = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c])]
    back = pd.read_csv(
        path,
        dtype={**{c: "str" for c in text_cols}, "batch_size": "Int64", "epochs": "Int64",
               "seed": "Int64"},
        parse_dates=["start_time", "end_time"],
    )
    assert list(back.columns) == list(frame.columns)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["seed"].isna().sum() == 1 and back["top5"].isna().sum() == 1


def test_export_replaces_a_file_atomically(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "runs.parquet"
    export_frame(frame.iloc[:3], path)
    export_frame(frame, path)
    assert len(pd.read_parquet(path)) == len(frame)
    mixed = pd.DataFrame({"x": [1, "a"]})
    with pytest.raises(SSLBenchError, match="column x"):
        export_frame(mixed, path)
    assert len(pd.read_parquet(path)) == len(frame)  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["runs.parquet"]  # no temporary file left


@pytest.mark.parametrize("name", ["runs.xlsx", "runs", "runs.parquet.bak", "runs.json"])
def test_export_bad_suffix(frame: pd.DataFrame, tmp_path: Path, name: str) -> None:
    with pytest.raises(SSLBenchError) as info:
        export_frame(frame, tmp_path / name)
    message = str(info.value)
    assert all(suffix in message for suffix in EXPORT_SUFFIXES) and "\n" not in message
    assert not any(tmp_path.iterdir())
