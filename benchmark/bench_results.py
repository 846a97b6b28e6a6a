"""Time ``load_runs`` + ``aggregate`` on a large MLflow store, against ``mlflow.search_runs``.

The store is a throwaway SQLite MLflow database holding ``--runs`` FINISHED evaluation runs shaped
like the ones ``sslbench.benchmark.evaluate.evaluate_and_log`` logs (the identity and provenance
tags copied from the parent, ``kind=eval``, ``protocol``, ``protocol_version``, the protocol's
JSON ``protocol_spec``, ``eval_dataset``, ``mlflow.parentRunId``, ``sweep``, ``sweep_cell``: 27
tags with ``mlflow.runName``; metrics ``top1``, ``top5``, ``eval_seconds``, and ``val_top1``, ``best_epoch/top1`` on the
linear protocols), spread over 8 methods x 5 batch sizes x 2 datasets x the 4 registered protocols
x as many seeds as it takes. Beside them are their pretraining parents (the resolved recipe's
flattened config as params, a short metric history) and, per 50 evaluations, one FAILED
evaluation: neither may show up in the frame. Real evaluation runs carry 6-8 params (those of
``sslbench.protocols.run.ProtocolResult``); each is padded to ``--params`` (default 40) with
``pad.NN`` params so that the benchmark errs on the heavy side.

The store is built by bulk inserts through MLflow's own SQLAlchemy table models
(``mlflow.store.tracking.dbmodels.models``) into a database that MLflow created and migrated, in
one transaction: the same rows ``create_run`` / ``log_batch`` / ``set_terminated`` write (runs,
tags, params, metrics, latest_metrics), ~40x faster than those calls run by run (~30 runs/s on
2 cores: 7-8 minutes for the default store). MLflow then reads it as any other store; the
benchmark checks that ``MlflowClient.get_run`` returns one run as built.

Every value is known, so the benchmark checks that the frame has exactly one row per FINISHED
evaluation run, in start-time order, and that ``aggregate``'s means, standard deviations and
counts equal those computed here in plain Python.

Usage::

    python -m sslbench.benchmark.bench_results                          # 10,000 runs, temp store
    python -m sslbench.benchmark.bench_results --runs 2000 --repeats 1
    python -m sslbench.benchmark.bench_results --store /tmp/big --keep  # build once ...
    python -m sslbench.benchmark.bench_results --store /tmp/big         # ... and time it again
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sslbench.benchmark.errors import ConfigError, SSLBenchError
from sslbench.results import tracking as T
from sslbench.results.aggregate import DEFAULT_BY, aggregate, load_runs

EXPERIMENT = "sslbench-bench-results"
#: Experiment tag that records what was built, so that ``--store`` can reuse a kept store.
LAYOUT_TAG = "sslbench.bench_results"
LAYOUT_VERSION = 1

METHODS = ("byol", "simclr", "mocov2", "dino", "barlow-twins", "vicreg", "swav", "simsiam")
BATCH_SIZES = (64, 128, 256, 512, 1024)
DATASETS = ("cifar10", "cifar100")
BASE_TOP1 = {"byol": 84.0, "simclr": 80.5, "mocov2": 81.0, "dino": 85.5, "barlow-twins": 83.0,
             "vicreg": 82.5, "swav": 83.5, "simsiam": 79.0}
DATASET_OFFSET = {"cifar10": 0.0, "cifar100": -25.0}
EPOCHS = 200
BACKBONE = "resnet18"
T0_MS = 1_700_000_000_000  # start time of the first run
FAILED_EVERY = 50  # one FAILED evaluation run per this many FINISHED ones
HISTORY_STEPS = 5  # per-epoch metric steps logged on each pretraining run
#: Fixed values of the provenance tags (T.PROVENANCE_TAGS order), so that a kept store is
#: rebuilt identically in memory by a later commit.
PROVENANCE = ("f48d0b8c1e2a4b6d8f0a1c3e5b7d9f1a3c5e7b9d", "0.1.0", "2.4.0+cu121", "0.19.0", "1.0.9",
              "3.17.2", "3.11.7", "Linux-6.8.0-49-generic-x86_64-with-glibc2.39",
              "cuda:0 (NVIDIA H100 80GB HBM3)")


@dataclass
class Layout:
    """Every run of the store, as rows of MLflow's tables, and the values the checks expect."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    latest: list[dict[str, Any]] = field(default_factory=list)
    #: run ids of the FINISHED evaluation runs, in start-time order
    eval_ids: list[str] = field(default_factory=list)
    #: aggregate group key (DEFAULT_BY order) -> the logged top1 values of its runs
    top1: dict[tuple[Any, ...], list[float]] = field(default_factory=lambda: defaultdict(list))


def _protocol_specs() -> dict[str, dict[str, Any]]:
    from sslbench.protocols import get_protocol, list_protocols

    # The kNN and linear specs: the store's eval runs carry their params (k, lr grid); the other
    # kinds (semi-supervised, detection, diagnostics) are left out so the layout stays fixed.
    specs = {name: get_protocol(name).to_dict() for name in list_protocols()}
    return {name: spec for name, spec in specs.items() if spec["kind"] in ("knn", "linear")}


@functools.lru_cache(maxsize=None)
def _recipe(name: str) -> dict[str, Any]:
    from sslbench.benchmark.recipes import resolve

    return resolve(name).to_dict()


def _config_params(method: str, dataset: str, batch_size: int, seed: int) -> dict[str, str]:
    """The params a pretraining run logs: its flattened config and derived values."""
    base = "byol" if method not in ("simclr", "mocov2") else method
    cfg = copy.deepcopy(_recipe(f"{base}-cifar10"))
    cfg.update(method=method, recipe=f"{method}-{dataset}")
    cfg["data"].update(dataset=dataset, batch_size=batch_size)
    cfg["train"].update(epochs=EPOCHS, seed=seed)
    lr = cfg["optim"]["base_lr"] * batch_size / 256
    steps = 50_000 // batch_size
    derived = {"lr": lr, "final_lr": 0.0, "world_size": 1, "steps_per_epoch": steps,
               "total_steps": steps * EPOCHS, "warmup_steps": steps * 10}
    return T.flatten({**cfg, "derived": derived})


def known_top1(method: str, dataset: str, batch_size: int, protocol: str, seed: int) -> float:
    """The top-1 logged for one evaluation: distinct per configuration, spread over seeds."""
    noise = ((seed * 37 + len(protocol) * 11 + batch_size) % 21 - 10) / 10
    linear = 4.0 if protocol.startswith("linear") else 0.0
    return (BASE_TOP1[method] + DATASET_OFFSET[dataset] + 1.5 * math.log2(batch_size / 256)
            + linear + noise)


def plan(n_runs: int, n_params: int, experiment_id: int, artifact_root: str) -> Layout:
    """The rows of a store with ``n_runs`` FINISHED evaluation runs (deterministic)."""
    rng = random.Random(0)
    specs = _protocol_specs()
    provenance = dict(zip(T.PROVENANCE_TAGS, PROVENANCE, strict=True))
    configs = [(m, d, b, p) for m in METHODS for d in DATASETS for b in BATCH_SIZES for p in specs]
    layout = Layout()
    parents: dict[tuple[str, str, int, int], tuple[str, dict[str, str]]] = {}
    clock = iter(range(T0_MS, T0_MS + 10**12, 1000))  # one start per second, in creation order

    def new_run(name: str, status: str, tags: dict[str, str], params: dict[str, str],
                metrics: dict[str, list[float]]) -> str:
        run_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        start = next(clock)
        layout.runs.append({
            "run_uuid": run_id, "name": name, "source_type": "UNKNOWN", "source_name": "",
            "entry_point_name": "", "user_id": "bench", "status": status, "start_time": start,
            "end_time": start + 900, "deleted_time": None, "source_version": "",
            "lifecycle_stage": "active", "artifact_uri": f"{artifact_root}/{run_id}/artifacts",
            "experiment_id": experiment_id,
        })
        layout.tags.extend({"key": k, "value": v, "run_uuid": run_id}
                           for k, v in {**tags, T.TAG_RUN_NAME: name}.items())
        layout.params.extend({"key": k, "value": v, "run_uuid": run_id} for k, v in params.items())
        for key, history in metrics.items():
            rows = [{"key": key, "value": v, "timestamp": start + 800, "step": step,
                     "is_nan": False, "run_uuid": run_id} for step, v in enumerate(history)]
            layout.metrics.extend(rows)
            layout.latest.append(rows[-1])
        return run_id

    def parent(method: str, dataset: str, batch_size: int, seed: int) -> tuple[str, dict[str, str]]:
        key = (method, dataset, batch_size, seed)
        if key not in parents:
            params = _config_params(*key)
            cell = f"{method}-{dataset}-b{batch_size}-s{seed}"
            tags = {T.TAG_KIND: T.KIND_PRETRAIN, T.TAG_METHOD: method,
                    T.TAG_RECIPE: params["recipe"], T.TAG_AUGMENT: params["augment"],
                    T.TAG_DATASET: dataset, T.TAG_BACKBONE: BACKBONE,
                    T.TAG_BATCH_SIZE: str(batch_size), T.TAG_EPOCHS: str(EPOCHS),
                    T.TAG_SEED: str(seed), T.TAG_CONFIG_HASH: hashlib.sha1(cell.encode()).hexdigest()[:16],
                    **provenance, T.TAG_SWEEP: "bench", T.TAG_SWEEP_CELL: cell,
                    T.TAG_RUN_DIR: f"/scratch/sweeps/bench/cells/{cell}"}
            losses = [6.0 - 0.5 * i for i in range(HISTORY_STEPS)]
            metrics = {T.METRIC_TRAIN_LOSS: losses, T.METRIC_TRAIN_LR: [0.1] * HISTORY_STEPS,
                       T.METRIC_FINAL_TRAIN_LOSS: losses[-1:], T.METRIC_FINAL_WALL_TIME_S: [3600.0],
                       T.METRIC_FINAL_IMAGES_PER_S: [2500.0], T.METRIC_FINAL_PEAK_MEMORY_MB: [9000.0]}
            name = T.pretrain_run_name(params["recipe"], seed, batch_size=batch_size)
            parents[key] = (new_run(name, "FINISHED", tags, params, metrics), tags)
        return parents[key]

    finished, i = 0, -1
    while finished < n_runs:
        i += 1
        method, dataset, batch_size, protocol = configs[i % len(configs)]
        seed = i // len(configs)
        parent_id, parent_tags = parent(method, dataset, batch_size, seed)
        spec = specs[protocol]
        failed = i % (FAILED_EVERY + 1) == FAILED_EVERY
        tags = {**T.identity_tags(parent_tags), T.TAG_KIND: T.KIND_EVAL, T.TAG_PROTOCOL: protocol,
                T.TAG_PROTOCOL_VERSION: str(spec["version"]),
                T.TAG_PROTOCOL_SPEC: json.dumps(spec, sort_keys=True), T.TAG_EVAL_DATASET: dataset,
                T.TAG_PARENT_RUN_ID: parent_id, T.TAG_SWEEP: "bench",
                T.TAG_SWEEP_CELL: parent_tags[T.TAG_SWEEP_CELL]}
        params = {"num_train": "50000", "num_test": "10000", "feature_dim": "512",
                  "feature_seconds": f"{20 + i % 9}.25"}
        top1 = known_top1(method, dataset, batch_size, protocol, seed)
        metrics = {T.METRIC_TOP1: [top1], T.METRIC_TOP5: [top1 + 12.5], "eval_seconds": [30.0 + i % 7]}
        if spec["kind"] == "knn":
            params.update(k=str(spec["k"]), temperature=str(spec["temperature"]))
        else:
            grid = {f"lr={lr},wd={wd}": 50.0 for lr in spec["lrs"] for wd in spec["weight_decays"]}
            params.update(lr=str(spec["lrs"][1]), weight_decay=str(spec["weight_decays"][1]),
                          grid=json.dumps(grid, sort_keys=True), mode=spec["mode"])
            metrics.update({T.METRIC_VAL_TOP1: [top1 + 1.0], T.METRIC_BEST_EPOCH_TOP1: [top1 + 0.25]})
        params.update({f"pad.{j:02d}": f"value-{j}" for j in range(max(0, n_params - len(params)))})
        if failed:  # FAILED before logging anything but its tags
            tags[T.TAG_ERROR] = "NonFiniteLossError: the probe's loss became nan"
            new_run(T.eval_run_name(protocol, T.run_label(parent_tags)), "FAILED", tags, {}, {})
            continue
        layout.eval_ids.append(new_run(T.eval_run_name(protocol, T.run_label(parent_tags)), "FINISHED", tags, params, metrics))
        group = dict(method=method, dataset=dataset, backbone=BACKBONE, batch_size=batch_size,
                     epochs=EPOCHS, protocol=protocol)
        layout.top1[tuple(group[c] for c in DEFAULT_BY)].append(top1)
        finished += 1
    return layout


def _insert(uri: str, layout: Layout) -> None:
    """Writes ``layout`` into the MLflow database at ``uri`` in one transaction."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )

    engine = sa.create_engine(uri)
    try:
        with engine.begin() as conn:
            for model, rows in ((SqlRun, layout.runs), (SqlTag, layout.tags),
                                (SqlParam, layout.params), (SqlMetric, layout.metrics),
                                (SqlLatestMetric, layout.latest)):
                for i in range(0, len(rows), 50_000):
                    conn.execute(sa.insert(model.__table__), rows[i : i + 50_000])
    finally:
        engine.dispose()


def build_store(uri: str, n_runs: int, n_params: int) -> tuple[Layout, bool]:
    """The store's layout, inserting it unless a kept store already holds the same one.

    Returns:
        (layout, built): built is False when an existing store was reused.

    Raises:
        ConfigError: the store holds the benchmark's experiment with another layout, or holds
            other experiments (the benchmark writes only into a new store or its own).
    """
    client = T.get_client(uri)  # creates and migrates the database
    wanted = json.dumps({"version": LAYOUT_VERSION, "runs": n_runs, "params": n_params})
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        if exp.tags.get(LAYOUT_TAG) != wanted:
            raise ConfigError(
                f"The store {T.redact_uri(uri)} already holds experiment '{EXPERIMENT}' built as "
                f"{exp.tags.get(LAYOUT_TAG)}, not {wanted}.",
                "Pass the same --runs and --params as when it was built, or another --store.",
            )
        return plan(n_runs, n_params, int(exp.experiment_id), exp.artifact_location), False
    others = [e.name for e in client.search_experiments() if e.name != "Default"]
    if others:
        raise ConfigError(
            f"The store {T.redact_uri(uri)} holds other experiments ({', '.join(others[:5])}); the "
            "benchmark adds thousands of runs only to a new store or to one it built.",
            "Pass an empty folder as --store, or leave --store out for a temporary one.",
        )
    sqlite = T._sqlite_path(uri)
    assert sqlite is not None
    root = str(sqlite.resolve().parent / T.DEFAULT_ARTIFACT_DIR)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=root)
    layout = plan(n_runs, n_params, int(experiment_id), root)
    _insert(uri, layout)
    # Last, so that a build killed half-way is not taken for a finished one.
    client.set_experiment_tag(experiment_id, LAYOUT_TAG, wanted)
    return layout, True


def check_store(uri: str, layout: Layout) -> None:
    """One evaluation run read back through MlflowClient equals what was built."""
    run_id = layout.eval_ids[len(layout.eval_ids) // 2]
    run = T.get_client(uri).get_run(run_id)
    want = {r["key"]: r["value"] for r in layout.tags if r["run_uuid"] == run_id}
    _expect(run.data.tags == want, "get_run returned other tags than were inserted")
    want = {r["key"]: r["value"] for r in layout.params if r["run_uuid"] == run_id}
    _expect(run.data.params == want, "get_run returned other params than were inserted")
    want = {r["key"]: r["value"] for r in layout.latest if r["run_uuid"] == run_id}
    _expect(run.data.metrics == want, "get_run returned other metrics than were inserted")
    name = next(r["name"] for r in layout.runs if r["run_uuid"] == run_id)
    _expect(run.info.status == "FINISHED" and run.info.run_name == name, "get_run: other status or name")


def _expect(ok: bool, what: str) -> None:
    """Raises AssertionError(what) unless ok (also under ``python -O``, unlike ``assert``)."""
    if not ok:
        raise AssertionError(what)


def check_frame(runs: pd.DataFrame, agg: pd.DataFrame, layout: Layout, what: str) -> None:
    """The frame holds every FINISHED evaluation once, in start-time order, and ``agg`` the
    means, standard deviations and counts computed here.

    Raises:
        AssertionError: anything differs.
    """
    n = len(layout.eval_ids)
    _expect(len(runs) == n, f"{what}: {len(runs)} rows, expected {n}")
    _expect(runs["run_id"].tolist() == layout.eval_ids, f"{what}: other runs or another order")
    _expect(len(agg) == len(layout.top1), f"{what}: {len(agg)} groups, expected {len(layout.top1)}")
    for row in agg.itertuples(index=False):
        key = tuple(getattr(row, c) for c in DEFAULT_BY)
        values = layout.top1.get(key, [])
        mean = statistics.fmean(values) if values else math.nan
        _expect(row.n == len(values), f"{what}: n={row.n} for {key}, expected {len(values)}")
        _expect(math.isclose(row.top1_mean, mean, rel_tol=1e-12), f"{what}: top1_mean of {key}")
        _expect(math.isclose(row.top5_mean, mean + 12.5, rel_tol=1e-12), f"{what}: top5_mean of {key}")
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        _expect(math.isclose(row.top1_std, std, rel_tol=1e-9) or (math.isnan(std) and math.isnan(row.top1_std)),
                f"{what}: top1_std of {key}")


def load_with_mlflow(uri: str) -> pd.DataFrame:
    """The naive way: ``mlflow.search_runs`` as a DataFrame (one row per run; columns
    ``tags.*``, ``params.*``, ``metrics.*``), renamed to what ``aggregate`` reads."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    frame = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string=f"tags.{T.TAG_KIND} = '{T.KIND_EVAL}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )
    frame = frame.rename(columns=lambda c: c.split(".", 1)[1] if c.startswith(("tags.", "metrics.")) else c)
    for col in T.INT_TAGS:
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    return frame


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` calls, and its last result."""
    times: list[float] = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


@contextlib.contextmanager
def _store_dir(store: str | None, keep: bool) -> Iterator[Path]:
    """The folder of the store: ``store``, or a temporary one removed afterwards unless ``keep``."""
    if store is not None:
        path = Path(store)
        existed = (path / T.DEFAULT_SQLITE_FILE).exists()
        yield path
        if not keep and not existed:  # remove only what this run created
            for suffix in ("", "-wal", "-shm", "-lock"):
                (path / f"{T.DEFAULT_SQLITE_FILE}{suffix}").unlink(missing_ok=True)
        return
    path = Path(tempfile.mkdtemp(prefix="sslbench-bench-results-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept the store: sqlite:///{path / T.DEFAULT_SQLITE_FILE}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the machine type."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _header(uri: str, n_runs: int, repeats: int) -> None:
    import mlflow
    import pyarrow
    import sqlalchemy

    print(f"load_runs + aggregate on {n_runs:,} FINISHED eval runs (SQLite store {T.redact_uri(uri)})")
    print(f"sslbench {T.git_commit()}, mlflow {mlflow.__version__}, pandas {pd.__version__}, "
          f"pyarrow {pyarrow.__version__}, sqlalchemy {sqlalchemy.__version__}, "
          f"python {platform.python_version()}")
    load = f", load average (1 min) {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"device: cpu ({_cpu_name()}), {os.cpu_count()} cores{load}; "
          f"median of {repeats} timed call(s) each, in one process with the store already open")


def run(args: argparse.Namespace) -> dict[str, float]:
    """Builds (or reuses) the store, times both ways and checks them; returns seconds per way."""
    if args.runs < 1 or args.repeats < 1 or args.params < 0:
        raise ConfigError("--runs and --repeats must be >= 1 and --params >= 0.", "")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with _store_dir(args.store, args.keep) as folder:
        uri = f"sqlite:///{(folder / T.DEFAULT_SQLITE_FILE).resolve()}"
        _header(uri, args.runs, args.repeats)
        t0 = time.perf_counter()
        layout, built = build_store(uri, args.runs, args.params)
        build_s = time.perf_counter() - t0
        check_store(uri, layout)
        failed = sum(r["status"] == "FAILED" for r in layout.runs)
        print(f"store: {len(layout.runs):,} runs ({args.runs:,} FINISHED eval, {failed:,} FAILED eval, "
              f"{len(layout.runs) - args.runs - failed:,} pretrain), {len(layout.tags):,} tags, "
              f"{len(layout.params):,} params, {len(layout.metrics):,} metric values; "
              + (f"built in {build_s:.1f} s (bulk insert through MLflow's SQLAlchemy models)" if built
                 else f"reused (planned in {build_s:.1f} s)"))

        def ours() -> tuple[pd.DataFrame, pd.DataFrame]:
            runs = load_runs(tracking_uri=uri, experiment=EXPERIMENT)
            return runs, aggregate(runs)

        def naive() -> tuple[pd.DataFrame, pd.DataFrame]:
            runs = load_with_mlflow(uri)
            return runs, aggregate(runs)

        seconds: dict[str, float] = {}
        rows = []
        for label, key, fn in (("sslbench load_runs + aggregate", "sslbench", ours),
                               ("mlflow.search_runs (pandas) + aggregate", "mlflow", naive)):
            if key == "mlflow" and args.skip_naive:
                continue
            s, (runs, agg) = _median_seconds(fn, args.repeats)
            check_frame(runs, agg, layout, label)
            seconds[key] = s
            rows.append((label, s, len(runs.columns)))
        print(f"{'way':<44}{'seconds':>10}{'runs/s':>10}{'columns':>9}")
        for label, s, cols in rows:
            print(f"{label:<44}{s:>10.2f}{args.runs / s:>10,.0f}{cols:>9}")
        if "mlflow" in seconds:
            print(f"mlflow.search_runs / sslbench = {seconds['mlflow'] / seconds['sslbench']:.1f}x; "
                  "both frames checked: every FINISHED eval run once, in start-time order, and the "
                  "aggregated top1/top5 means, stds and n equal the logged values")
        seconds["build"] = build_s
        return seconds


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(prog="python -m sslbench.benchmark.bench_results",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--runs", type=int, default=10_000, help="FINISHED evaluation runs (default 10000)")
    p.add_argument("--params", type=int, default=40,
                   help="params per evaluation run, padded with pad.NN (default 40)")
    p.add_argument("--store", help="folder of the SQLite store (default: a temporary folder); a store "
                                   "kept from an earlier run with the same --runs/--params is reused")
    p.add_argument("--keep", action="store_true", help="keep the store afterwards")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per way (default 3)")
    p.add_argument("--skip-naive", action="store_true", help="time only load_runs + aggregate")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except SSLBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
