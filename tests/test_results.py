"""Tests of sslbench.results: MLflow tracking, loading, aggregation, tables and plots.

One throwaway SQLite MLflow store is built per module (creating it runs MLflow's migrations,
which takes seconds) and filled through TrackedRun with runs whose metrics are known, so every
number downstream can be checked against a hand computation.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results import tracking as T
from sslbench.results.aggregate import IDENTITY_COLUMNS, aggregate, load_runs
from sslbench.results.plots import plot_accuracy_vs_batch_size, plot_method_comparison, t_ci95
from sslbench.results.tables import comparison_table, to_markdown, write_tables

METHODS = ("byol", "simclr")
BATCH_SIZES = (128, 256)
SEEDS = (0, 1, 2)
PROTOCOLS = ("knn-k200-t0.1", "linear")
BASE = {"byol": 80.0, "simclr": 75.0}
SEED_OFFSET = {0: -0.5, 1: 0.0, 2: 0.9}
EPOCHS = 2


def known_top1(method: str, batch_size: int, seed: int, protocol: str) -> float:
    """The top-1 the fixture logs: distinct per configuration, with a non-trivial seed spread."""
    return (
        BASE[method]
        + 2.0 * math.log2(batch_size / 128)
        + SEED_OFFSET[seed]
        + (5.0 if protocol == "linear" else 0.0)
    )


def config(method: str, batch_size: int, seed: int) -> dict:
    return {
        "method": method,
        "seed": seed,
        "data": {"dataset": "cifar10", "batch_size": batch_size},
        "optim": {"base_lr": 0.3, "weight_decay": 1e-6},
    }


@dataclasses.dataclass
class Store:
    uri: str
    root: Path
    pretrain_ids: dict[tuple[str, int, int], str]
    eval_ids: dict[tuple[str, int, int, str], str]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    provenance = T.provenance_tags("cpu")
    pretrain_ids: dict[tuple[str, int, int], str] = {}
    eval_ids: dict[tuple[str, int, int, str], str] = {}
    for method, bs, seed in itertools.product(METHODS, BATCH_SIZES, SEEDS):
        tags = {
            T.TAG_KIND: T.KIND_PRETRAIN,
            T.TAG_METHOD: method,
            T.TAG_RECIPE: f"{method}-cifar10",
            T.TAG_AUGMENT: "simclr",
            T.TAG_DATASET: "cifar10",
            T.TAG_BACKBONE: "resnet18",
            T.TAG_BATCH_SIZE: str(bs),
            T.TAG_EPOCHS: str(EPOCHS),
            T.TAG_SEED: str(seed),
            T.TAG_CONFIG_HASH: f"hash-{method}-{bs}-{seed}",
            **provenance,
        }
        name = T.pretrain_run_name(f"{method}-cifar10", seed, batch_size=bs)
        with T.TrackedRun(run_name=name, tags=tags, tracking_uri=uri) as run:
            run.log_params(config(method, bs, seed))
            run.log_params(T.flatten({"lr": 0.3 * bs / 256}, prefix=T.DERIVED_PARAM_PREFIX))
            run.log_dict(config(method, bs, seed), T.CONFIG_ARTIFACT)
            for epoch in range(1, EPOCHS + 1):
                run.log_metrics(
                    {T.METRIC_TRAIN_LOSS: 5.0 - epoch, T.METRIC_TRAIN_LR: 0.1}, step=epoch
                )
            run.log_metrics(
                {T.METRIC_FINAL_TRAIN_LOSS: 5.0 - EPOCHS, T.METRIC_FINAL_WALL_TIME_S: 1.5}
            )
            pretrain_ids[(method, bs, seed)] = run.run_id
            parent_tags = T.run_tags(run.run_id, tracking_uri=uri)
            # One protocol evaluated while the parent is still open (nested runs open at once),
            # the other after it has finished (evaluation of a saved checkpoint).
            for protocol in PROTOCOLS[:1]:
                eval_ids[(method, bs, seed, protocol)] = _log_eval(
                    uri, parent_tags, run.run_id, protocol
                )
        for protocol in PROTOCOLS[1:]:
            eval_ids[(method, bs, seed, protocol)] = _log_eval(
                uri, parent_tags, pretrain_ids[(method, bs, seed)], protocol
            )
    return Store(uri, root, pretrain_ids, eval_ids)


def _log_eval(uri: str, parent_tags: dict[str, str], parent_id: str, protocol: str) -> str:
    method, bs, seed = (
        parent_tags["method"],
        int(parent_tags["batch_size"]),
        int(parent_tags["seed"]),
    )
    spec = {"name": protocol, "version": 1}
    tags = {
        **T.identity_tags(parent_tags),
        T.TAG_KIND: T.KIND_EVAL,
        T.TAG_PROTOCOL: protocol,
        T.TAG_PROTOCOL_VERSION: "1",
        T.TAG_PROTOCOL_SPEC: json.dumps(spec),
        T.TAG_EVAL_DATASET: "cifar10",
    }
    top1 = known_top1(method, bs, seed, protocol)
    with T.TrackedRun(
        run_name=T.eval_run_name(protocol, T.run_label(parent_tags)), tags=tags, tracking_uri=uri, parent_run_id=parent_id
    ) as run:
        run.log_params(
            {"k": 200, "temperature": 0.1} if protocol.startswith("knn") else {"lr": 0.1}
        )
        run.log_metrics({T.METRIC_TOP1: top1, T.METRIC_TOP5: top1 + 10.0})
        return run.run_id


# --- load_runs --------------------------------------------------------------------------------
def test_load_runs_returns_the_logged_eval_runs(store: Store) -> None:
    runs = load_runs(tracking_uri=store.uri)
    assert len(runs) == len(store.eval_ids) == 24
    assert set(runs["run_id"]) == set(store.eval_ids.values())
    assert (runs["status"] == "FINISHED").all() and (runs["kind"] == "eval").all()
    for col in ("batch_size", "epochs", "seed"):
        assert str(runs[col].dtype) == "Int64"
    for row in runs.itertuples(index=False):
        key = (row.method, int(row.batch_size), int(row.seed), row.protocol)
        assert store.eval_ids[key] == row.run_id
        assert row.parent_run_id == store.pretrain_ids[key[:3]]
        assert row.run_name == f"{row.protocol} ← {key[0]}-cifar10 s{key[2]}"
        assert row.top1 == pytest.approx(known_top1(*key))
        assert row.top5 == pytest.approx(known_top1(*key) + 10.0)
        assert row.config_hash == f"hash-{key[0]}-{key[1]}-{key[2]}"
        assert row.epochs == EPOCHS and row.dataset == "cifar10" and row.backbone == "resnet18"
        assert json.loads(row.protocol_spec) == {"name": row.protocol, "version": 1}
    for tag in T.PROVENANCE_TAGS:
        assert runs[tag].notna().all(), tag
    knn = runs[runs["protocol"] == "knn-k200-t0.1"]
    assert (knn["param.k"] == "200").all() and (knn["param.temperature"] == "0.1").all()
    assert isinstance(runs["start_time"].dtype, pd.DatetimeTZDtype)


def test_load_runs_pretrain_params_metrics_and_config_artifact(store: Store) -> None:
    runs = load_runs(tracking_uri=store.uri, kind="pretrain")
    assert set(runs["run_id"]) == set(store.pretrain_ids.values())
    assert runs["parent_run_id"].isna().all()
    row = runs[runs["run_id"] == store.pretrain_ids[("byol", 256, 1)]].iloc[0]
    assert row["run_name"] == "byol-cifar10 b256 s1"
    assert row["param.data.batch_size"] == "256" and row["param.optim.base_lr"] == "0.3"
    assert row["param.derived.lr"] == "0.3"
    assert row["train/loss"] == 5.0 - EPOCHS  # the latest (last-epoch) value
    assert row["final/train_loss"] == 5.0 - EPOCHS
    # Artifacts live next to the SQLite database, not in the working directory.
    artifact = store.root / "mlruns" / row["run_id"] / "artifacts" / "config.json"
    assert json.loads(artifact.read_text()) == config("byol", 256, 1)
    history = T.get_client(store.uri).get_metric_history(row["run_id"], T.METRIC_TRAIN_LOSS)
    assert [(m.step, m.value) for m in history] == [(1, 4.0), (2, 3.0)]


def test_load_runs_pages_through_search_results(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = T.get_client(store.uri)
    original, calls = client.search_runs, []

    def small_pages(*args, **kwargs):
        calls.append(kwargs.get("page_token"))
        return original(*args, **{**kwargs, "max_results": 5})

    monkeypatch.setattr(client, "search_runs", small_pages)
    runs = load_runs(tracking_uri=store.uri)
    assert len(calls) == 5  # 24 runs in pages of 5
    assert set(runs["run_id"]) == set(store.eval_ids.values()) and runs["run_id"].is_unique


def test_load_runs_on_an_empty_store(store: Store, tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    empty = load_runs(tracking_uri=f"sqlite:///{missing}")
    assert empty.empty and list(empty.columns) == list(IDENTITY_COLUMNS)
    assert not missing.exists()  # reading does not create a database
    no_experiment = load_runs(tracking_uri=store.uri, experiment="never-created")
    assert no_experiment.empty and list(no_experiment.columns) == list(IDENTITY_COLUMNS)
    agg = aggregate(empty)
    assert agg.empty and "top1_mean" in agg.columns and "seeds" in agg.columns


# --- aggregate, tables, plots ----------------------------------------------------------------
def test_aggregate_matches_numpy(store: Store) -> None:
    agg = aggregate(load_runs(tracking_uri=store.uri))
    assert len(agg) == len(METHODS) * len(BATCH_SIZES) * len(PROTOCOLS)
    assert list(agg.columns) == [
        "method", "dataset", "backbone", "batch_size", "epochs", "protocol",
        "top1_mean", "top1_std", "top5_mean", "top5_std", "n", "seeds",
    ]  # fmt: skip
    for row in agg.itertuples(index=False):
        values = np.array([known_top1(row.method, row.batch_size, s, row.protocol) for s in SEEDS])
        assert row.top1_mean == pytest.approx(values.mean())
        assert row.top1_std == pytest.approx(values.std(ddof=1))
        assert row.top5_mean == pytest.approx(values.mean() + 10.0)
        assert row.n == 3 and row.seeds == "0,1,2"


def test_aggregate_single_seed_and_errors() -> None:
    runs = pd.DataFrame(
        {
            "method": ["a", "a", "b"],
            "protocol": ["p"] * 3,
            "seed": [2, 0, 5],
            "top1": [1.0, 3.0, 7.0],
        }
    )
    agg = aggregate(runs, by=["method", "protocol"], metrics=["top1"])
    a, b = agg.iloc[0], agg.iloc[1]
    assert (a["top1_mean"], a["top1_std"], a["n"], a["seeds"]) == (
        2.0,
        pytest.approx(math.sqrt(2)),
        2,
        "0,2",
    )
    assert b["top1_mean"] == 7.0 and math.isnan(b["top1_std"]) and b["n"] == 1 and b["seeds"] == "5"
    with pytest.raises(SSLBenchError, match="nope"):
        aggregate(runs, by=["nope"], metrics=["top1"])
    with pytest.raises(SSLBenchError, match="top5"):
        aggregate(runs, by=["method"], metrics=["top5"])
    with pytest.warns(UserWarning, match="same seed"):
        aggregate(pd.concat([runs, runs.iloc[:1]]), by=["method"], metrics=["top1"])


def _hand_agg() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["byol", "byol", "random-init"],
            "dataset": ["cifar10"] * 3,
            "backbone": ["resnet18"] * 3,
            "batch_size": pd.array([256, 256, 256], dtype="Int64"),
            "epochs": pd.array([100, 100, 0], dtype="Int64"),
            "protocol": ["knn-k200-t0.1", "linear", "knn-k200-t0.1"],
            "top1_mean": [86.25, 88.04, 31.0],
            "top1_std": [0.4, 0.15, float("nan")],
            "n": [3, 3, 1],
            "seeds": ["0,1,2", "0,1,2", "0"],
        }
    )


def test_comparison_table_cells() -> None:
    table = comparison_table(_hand_agg())
    assert list(table.columns) == [
        "method",
        "dataset",
        "backbone",
        "batch_size",
        "epochs",
        "knn-k200-t0.1",
        "linear",
    ]
    assert table["method"].tolist() == ["byol", "random-init"]
    assert table["knn-k200-t0.1"].tolist() == ["86.2 ± 0.4 (n=3)", "31.0 (n=1)"]
    assert table["linear"].tolist() == ["88.0 ± 0.1 (n=3)", "—"]
    assert table["batch_size"].tolist() == [256, 256]


def test_comparison_table_from_store(store: Store) -> None:
    table = comparison_table(aggregate(load_runs(tracking_uri=store.uri)))
    row = table[(table["method"] == "simclr") & (table["batch_size"] == 256)].iloc[0]
    values = np.array([known_top1("simclr", 256, s, "linear") for s in SEEDS])
    assert (
        row["linear"]
        == f"{values.mean():.1f} ± {values.std(ddof=1):.1f} (n=3)"
        == "82.1 ± 0.7 (n=3)"
    )


def test_to_markdown_is_a_pipe_table() -> None:
    md = to_markdown(pd.DataFrame({"a": ["x|y", None], "b": [1.5, 2]}))
    lines = md.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert re.fullmatch(r"\| -+ \| -+ \|", lines[1])
    assert "x\\|y" in lines[2] and lines[3].split("|")[1].strip() == ""


def test_write_tables_round_trip(tmp_path: Path) -> None:
    agg = _hand_agg()
    paths = write_tables(agg, tmp_path / "out", stem="quick")
    assert paths == {"md": tmp_path / "out" / "quick.md", "csv": tmp_path / "out" / "quick.csv"}
    back = pd.read_csv(paths["csv"])
    np.testing.assert_allclose(back["top1_mean"], agg["top1_mean"])
    np.testing.assert_allclose(back["top1_std"], agg["top1_std"])  # NaN round-trips as NaN
    assert back["n"].tolist() == [3, 3, 1] and back["seeds"].astype(str).tolist() == [
        "0,1,2",
        "0,1,2",
        "0",
    ]
    rows = [
        line
        for line in paths["md"].read_text(encoding="utf-8").splitlines()
        if line.startswith("|")
    ]
    parsed = pd.read_csv(
        io.StringIO("\n".join([rows[0], *rows[2:]])), sep=r"\s*\|\s*", engine="python"
    )
    parsed = parsed.drop(columns=[c for c in parsed.columns if c.startswith("Unnamed")])
    cell = parsed.loc[parsed["method"] == "byol", "knn-k200-t0.1"].item()
    mean, std, n = re.fullmatch(r"([\d.]+) ± ([\d.]+) \(n=(\d+)\)", cell).groups()
    assert (float(mean), float(std), int(n)) == (86.2, 0.4, 3)
    assert parsed.loc[parsed["method"] == "random-init", "knn-k200-t0.1"].item() == "31.0 (n=1)"


def _assert_images(paths: list[Path]) -> None:
    assert sorted(p.suffix for p in paths) == [".png", ".svg"]
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000
        assert data.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in data


def test_plots_write_png_and_svg(store: Store, tmp_path: Path) -> None:
    runs = load_runs(tracking_uri=store.uri)
    _assert_images(plot_accuracy_vs_batch_size(runs, tmp_path / "bs"))
    _assert_images(plot_accuracy_vs_batch_size(runs, tmp_path / "bs_knn", protocol="knn-k200-t0.1"))
    svg = (tmp_path / "bs.svg").read_text()
    assert "3 seeds per point" in svg and "linear" in svg  # title: seed counts, protocols
    baseline = pd.DataFrame(
        {
            "method": ["random-init"] * 2,
            "protocol": ["knn-k200-t0.1", "linear"],
            "seed": [0, 0],
            "top1": [30.0, 35.0],
        }
    )
    _assert_images(
        plot_method_comparison(pd.concat([runs, baseline], ignore_index=True), tmp_path / "cmp")
    )
    with pytest.raises(SSLBenchError, match="no-such"):
        plot_accuracy_vs_batch_size(runs, tmp_path / "x", protocol="no-such")


def test_t_ci95() -> None:
    lo, hi = t_ci95([1.0, 2.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0) and hi - 2.0 == pytest.approx(
        4.302653 / math.sqrt(3)
    )
    assert t_ci95([5.0]) == (5.0, 5.0)


# --- TrackedRun ------------------------------------------------------------------------------
def test_failed_and_killed_runs(store: Store) -> None:
    client = T.get_client(store.uri)
    with pytest.raises(RuntimeError, match="boom"):
        with T.TrackedRun(
            tags={T.TAG_KIND: T.KIND_EVAL}, experiment="failures", tracking_uri=store.uri
        ) as run:
            run.log_metrics({T.METRIC_TOP1: 1.0})
            raise RuntimeError("boom")
    assert client.get_run(run.run_id).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt):
        with T.TrackedRun(
            tags={T.TAG_KIND: T.KIND_EVAL}, experiment="failures", tracking_uri=store.uri
        ) as killed:
            raise KeyboardInterrupt
    assert client.get_run(killed.run_id).info.status == "KILLED"
    assert load_runs(tracking_uri=store.uri, experiment="failures").empty
    everything = load_runs(tracking_uri=store.uri, experiment="failures", finished_only=False)
    assert dict(zip(everything["run_id"], everything["status"], strict=True)) == {
        run.run_id: "FAILED",
        killed.run_id: "KILLED",
    }


def test_resume_appends_to_the_same_run(store: Store) -> None:
    cfg = config("byol", 128, 0)
    kwargs = dict(experiment="resume", tracking_uri=store.uri)
    with T.TrackedRun(
        run_name="byol-cifar10 b128 s0", tags={T.TAG_KIND: T.KIND_PRETRAIN}, **kwargs
    ) as run:
        run.log_params(cfg)
        run.log_metrics({T.METRIC_TRAIN_LOSS: 3.0}, step=1)
        run_id = run.run_id
    with T.TrackedRun(run_id=run_id, tags={T.TAG_KIND: T.KIND_PRETRAIN}, **kwargs) as resumed:
        assert resumed.run_id == run_id
        resumed.log_params(cfg)  # same values: skipped, no MLflow error
        resumed.log_params({"derived": {"resumed_at_epoch": 1}})  # new keys are still logged
        with pytest.raises(SSLBenchError, match="optim.base_lr"):
            resumed.log_params({**cfg, "optim": {"base_lr": 0.5, "weight_decay": 1e-6}})
        resumed.log_metrics({T.METRIC_TRAIN_LOSS: 2.0}, step=2)
    runs = load_runs(kind=None, **kwargs)
    assert runs["run_id"].tolist() == [run_id]
    assert (
        runs.iloc[0]["param.optim.base_lr"] == "0.3"
        and runs.iloc[0]["param.derived.resumed_at_epoch"] == "1"
    )
    history = T.get_client(store.uri).get_metric_history(run_id, T.METRIC_TRAIN_LOSS)
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0)]
    with pytest.raises(SSLBenchError, match="No MLflow run"):
        with T.TrackedRun(run_id="0" * 32, **kwargs):
            pass


def test_flatten() -> None:
    @dataclasses.dataclass(frozen=True)
    class Optim:
        base_lr: float = 0.3
        betas: tuple[float, float] = (0.9, 0.95)

    flat = T.flatten(
        {"optim": Optim(), "data": {"batch_size": 256, "extra": {}}, "long": "x" * 7000}
    )
    assert flat == {
        "optim.base_lr": "0.3",
        "optim.betas": "(0.9, 0.95)",
        "data.batch_size": "256",
        "data.extra": "{}",
        "long": "x" * 6000,
    }
    assert T.flatten({"lr": 1}, prefix="derived.") == {"derived.lr": "1"}


# --- URIs, provenance, connection errors ----------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://alice:s3cret@mlflow.example.com:5000", "https://mlflow.example.com:5000"),
        ("http://token@10.0.0.1:5000/path", "http://10.0.0.1:5000/path"),
        ("postgresql+psycopg2://u:pw@db:5432/mlflow", "postgresql+psycopg2://db:5432/mlflow"),
        ("https://host/x?token=abc&a=1", "https://host/x?token=***&a=1"),
        ("sqlite:////tmp/x/mlruns.db", "sqlite:////tmp/x/mlruns.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("databricks", "databricks"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert T.redact_uri(uri) == expected


def test_resolve_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert T.resolve_tracking_uri() == "http://env:5000"
    assert T.resolve_tracking_uri("http://explicit:5000") == "http://explicit:5000"
    assert not (tmp_path / "mlruns.db").exists()


def test_provenance_tags() -> None:
    tags = T.provenance_tags("cuda:0")
    assert set(tags) == set(T.PROVENANCE_TAGS) and tags["device"] == "cuda:0"
    package_dir = Path(T.__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True, text=True
    )
    if head.returncode == 0:
        assert re.fullmatch(re.escape(head.stdout.strip()) + r"(-dirty)?", tags["git_commit"])
    else:
        assert tags["git_commit"] == "unknown"
    import mlflow

    assert tags["mlflow_version"] == mlflow.__version__
    assert tags["sslbench_version"] == __import__("sslbench").__version__
    for key in (
        "torch_version",
        "torchvision_version",
        "timm_version",
        "python_version",
        "platform",
    ):
        assert tags[key] and tags[key] != "not-installed", key


def test_unreachable_server_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = "http://alice:s3cret@127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(SSLBenchError, match=r"127\.0\.0\.1:9") as err:
        with T.TrackedRun(run_name="x", tracking_uri=uri):
            pass
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value)
    assert "MLFLOW_TRACKING_URI" in str(err.value)
    with pytest.raises(SSLBenchError, match=r"127\.0\.0\.1:9") as err:
        load_runs(tracking_uri=uri)
    assert "s3cret" not in str(err.value)
