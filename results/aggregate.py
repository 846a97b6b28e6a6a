"""Runs from MLflow as a DataFrame, and their mean / std over seeds.

:func:`load_runs` is the only function here that talks to MLflow; everything downstream
(aggregation, tables, plots) works on the DataFrame, so it can be built by hand in tests.
"""

from __future__ import annotations

import contextlib
import gc
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results import tracking as T

#: Columns every frame from :func:`load_runs` has, in this order, even when empty.
RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "parent_run_id",
    "run_name",
    "status",
    "start_time",
    "end_time",
)
IDENTITY_COLUMNS: tuple[str, ...] = (
    *RUN_COLUMNS,
    T.TAG_KIND,
    T.TAG_METHOD,
    T.TAG_RECIPE,
    T.TAG_AUGMENT,
    T.TAG_DATASET,
    T.TAG_BACKBONE,
    T.TAG_BATCH_SIZE,
    T.TAG_EPOCHS,
    T.TAG_SEED,
    T.TAG_CONFIG_HASH,
    T.TAG_PROTOCOL,
    T.TAG_PROTOCOL_VERSION,
    T.TAG_EVAL_DATASET,
    T.TAG_GIT_COMMIT,
)
PARAM_PREFIX = "param."
METRIC_PREFIX = "metric."  # only for a metric whose name clashes with a tag or run column
DEFAULT_BY: tuple[str, ...] = ("method", "dataset", "backbone", "batch_size", "epochs", "protocol")
DEFAULT_METRICS: tuple[str, ...] = (T.METRIC_TOP1, T.METRIC_TOP5)

#: Runs per ``search_runs`` call in :func:`load_runs` (as ``mlflow.search_runs`` pages its
#: DataFrames). MLflow pages by offset, so every page sorts all matching runs again (~0.1 s per
#: page with 10,000 of them): small pages make large stores quadratic. Larger pages buy nothing
#: more but memory: a page is held at once as SQLAlchemy rows and MLflow entities, ~100 kB per
#: run with ~70 tags and params, and a server builds it in one request.
SEARCH_PAGE_SIZE = 10_000
_MLFLOW_MAX_PAGE = 50_000  # mlflow.store.tracking.SEARCH_MAX_RESULTS_THRESHOLD, also the server's cap
_MLFLOW_DEFAULT_PAGE = 1000  # SEARCH_MAX_RESULTS_DEFAULT: every MLflow server accepts it
#: The suffixes :func:`export_frame` accepts: CSV and Parquet.
EXPORT_SUFFIXES: tuple[str, ...] = (".csv", ".parquet")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _row(run: Any) -> dict[str, Any]:
    info, data = run.info, run.data
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "parent_run_id": data.tags.get(T.TAG_PARENT_RUN_ID),
        "run_name": info.run_name,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }
    for key, value in data.tags.items():
        if key not in row:
            row[key] = value
    for key, value in data.metrics.items():
        row[key if key not in row else METRIC_PREFIX + key] = value
    for key, value in data.params.items():
        row[PARAM_PREFIX + key] = value
    return row


def load_runs(
    *,
    tracking_uri: str | None = None,
    experiment: str = T.DEFAULT_EXPERIMENT,
    kind: str | None = T.KIND_EVAL,
    finished_only: bool = True,
    page_size: int | None = None,
) -> pd.DataFrame:
    """All runs of an experiment, one row per run, earliest start first.

    Columns: ``run_id``, ``parent_run_id``, ``run_name``, ``status``, ``start_time``,
    ``end_time`` (UTC timestamps), every tag (``batch_size``, ``epochs``, ``seed`` as nullable
    ints), every metric (its latest value; a metric named like a tag gets a ``metric.`` prefix)
    and every param prefixed ``param.``. The columns in :data:`IDENTITY_COLUMNS` are always there
    (NA where a run lacks the tag). A missing store or experiment gives an empty frame.

    Works on any tracking URI (SQLite, a database, an ``mlflow server``): it pages through
    MLflow's ``search_runs``, :data:`SEARCH_PAGE_SIZE` runs a page, falling back to
    MLflow's default page of 1,000 runs where a server refuses a page that large.

    Args:
        tracking_uri: see :func:`sslbench.results.tracking.resolve_tracking_uri`.
        experiment: the MLflow experiment name.
        kind: only runs with this ``kind`` tag (``"eval"``, ``"pretrain"``); None for all.
        finished_only: only runs whose status is FINISHED (drops FAILED, KILLED, RUNNING).
        page_size: runs per ``search_runs`` call (default :data:`SEARCH_PAGE_SIZE`); at most
            50,000, MLflow's limit.

    Raises:
        SSLBenchError: the store or server cannot be reached or read.
        ValueError: ``page_size`` is not in [1, 50,000].
    """
    from mlflow.entities import ViewType

    page = SEARCH_PAGE_SIZE if page_size is None else page_size
    if not 1 <= page <= _MLFLOW_MAX_PAGE:
        raise ValueError(f"page_size must be in [1, {_MLFLOW_MAX_PAGE}], got {page_size}.")
    uri = T.resolve_tracking_uri(tracking_uri)
    sqlite = T._sqlite_path(uri)
    if sqlite is not None and not sqlite.exists():
        return _frame([])  # don't create a database just to find it empty
    client, uri, experiment_id = T._open(uri, experiment, create=False)
    if experiment_id is None:
        return _frame([])
    filters = []
    if kind is not None:
        filters.append(f"tags.{T.TAG_KIND} = {_quote(kind)}")
    if finished_only:
        filters.append("attributes.status = 'FINISHED'")

    def search(max_results: int, token: str | None) -> Any:
        return client.search_runs(
            [experiment_id],
            filter_string=" and ".join(filters),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results,
            # MLflow breaks ties by run id, so pages never overlap or skip a run.
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    with _gc_paused():
        with T._guard(uri, "searching runs"):
            try:
                runs = search(page, None)
            except Exception as exc:
                if not _refused_page_size(exc, page):
                    raise
                page = _MLFLOW_DEFAULT_PAGE  # a server with a lower limit than MLflow's own
                runs = search(page, None)
            while True:
                for run in runs:
                    # Pages are offsets into the sorted matches: a run that finishes meanwhile
                    # shifts the next page by one and comes again.
                    if run.info.run_id not in seen:
                        seen.add(run.info.run_id)
                        rows.append(_row(run))
                if not runs.token:
                    break
                runs = search(page, runs.token)
        return _frame(rows)


def _refused_page_size(exc: BaseException, page: int) -> bool:
    """Whether ``exc`` is a server refusing ``max_results=page`` (a store or server whose limit is
    lower than MLflow's 50,000), so that a smaller page may succeed."""
    return (
        page > _MLFLOW_DEFAULT_PAGE
        and getattr(exc, "error_code", None) == "INVALID_PARAMETER_VALUE"
        and "max_results" in str(exc)
    )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector meanwhile (reference counting still frees memory).

    A page of runs is hundreds of thousands of fresh SQLAlchemy and MLflow objects, and every few
    hundred allocations the collector walks them again: two thirds of the time of reading 10,000
    runs from SQLite goes there. The collector is switched back on after (if it was on).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in IDENTITY_COLUMNS:
        if col not in frame.columns:
            frame[col] = pd.Series([None] * len(frame), dtype=object)
    frame = frame[[*IDENTITY_COLUMNS, *(c for c in frame.columns if c not in IDENTITY_COLUMNS)]]
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(pd.to_numeric(frame[col], errors="coerce"), unit="ms", utc=True)
    for col in T.INT_TAGS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    return frame.reset_index(drop=True)


def export_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Writes ``frame`` (e.g. from :func:`load_runs` or :func:`aggregate`) as CSV or Parquet.

    The format follows the suffix of ``path``: ``.csv`` or ``.parquet`` (any case). The file is
    written beside ``path`` under a temporary name, flushed to disk and renamed over ``path``, so
    a reader sees the old file or the new one, never part of one; missing folders are created.
    The index is not written.

    Parquet (through pyarrow) keeps the dtypes: ``pd.read_parquet`` gives back the nullable
    ``Int64`` columns, the UTC timestamps, strings and NA as they were. CSV keeps the values
    only: ``pd.read_csv`` reads integers with a missing value as floats, timestamps as text
    (``parse_dates=`` turns them back) and NA as empty fields.

    Args:
        frame: the frame to write.
        path: where to write it, ending in ``.csv`` or ``.parquet``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        SSLBenchError: ``path`` has another suffix, or a column holds values of mixed types,
            which Parquet cannot store.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise SSLBenchError(
            f"Cannot export to '{path}': the format is chosen by the file's suffix, and "
            f"'{path.suffix or '(none)'}' names none.",
            f"End the file name in {' or '.join(EXPORT_SUFFIXES)} (CSV keeps the values, "
            "Parquet also the column types).",
        )
    if suffix == ".csv":
        _atomic_write(path, lambda f: frame.to_csv(f, index=False, encoding="utf-8"))
        return path
    import pyarrow as pa

    try:
        _atomic_write(path, lambda f: frame.to_parquet(f, engine="pyarrow", index=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise SSLBenchError(
            f"Cannot write '{path}' as Parquet: {'; '.join(map(str, exc.args))}.",
            "Give that column one type (e.g. `frame[col].astype(str)`), or export as .csv.",
        ) from None
    return path


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Calls ``write(file)`` on a new file beside ``path``, fsyncs it and renames it over ``path``.

    The same steps as :func:`sslbench.benchmark.checkpoint.atomic_write`, which cannot be used
    here: that module imports torch (seconds), which reading results never needs. The file is
    created with the umask's permissions (``tempfile.mkstemp`` would make it private to its owner).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_columns(runs: pd.DataFrame, wanted: Sequence[str], what: str) -> None:
    missing = [c for c in wanted if c not in runs.columns]
    if missing:
        raise SSLBenchError(
            f"Cannot aggregate: the runs have no {what} column(s) {missing}.",
            f"Available columns: {', '.join(map(str, runs.columns))}.",
        )


def _seeds(values: pd.Series) -> str:
    return ",".join(str(int(s)) for s in sorted(values.dropna()))


def transfer_protocol(runs: pd.DataFrame) -> pd.Series:
    """The ``protocol`` column, with ``@<eval_dataset>`` appended where a run was evaluated on
    another dataset than it was pretrained on (``sslbench eval --dataset``), so that transfer
    results form their own columns in tables, as on the leaderboard, instead of merging with the
    same protocol on the pretraining data."""
    protocol = runs[T.TAG_PROTOCOL]
    if T.TAG_EVAL_DATASET not in runs.columns or T.TAG_DATASET not in runs.columns:
        return protocol
    ev, ds = runs[T.TAG_EVAL_DATASET], runs[T.TAG_DATASET]
    moved = protocol.notna() & ev.notna() & (ev.astype(str) != "") & (ev.astype(str) != ds.astype(str))
    return protocol.where(~moved, protocol.astype(str) + "@" + ev.astype(str))


def aggregate(
    runs: pd.DataFrame,
    *,
    by: Sequence[str] = DEFAULT_BY,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> pd.DataFrame:
    """Mean and standard deviation of each metric over seeds, per configuration.

    Each run (row) counts once: ``n`` is the number of runs in the group and ``seeds`` their
    sorted seeds as ``"0,1,2"``; a run that lacks a metric (NaN) is left out of that metric's
    mean and std only. A seed that appears twice in one group (a rerun) is kept and
    shows twice in ``seeds``, with a warning. ``std`` uses ddof=1 and is NaN when n == 1. Group
    keys that are NA (e.g. no protocol on pretraining runs) form their own group.

    Args:
        runs: a frame like :func:`load_runs` gives (needs the ``by`` and ``metrics`` columns,
            and ``seed``).
        by: the columns that define one configuration. A run evaluated on another dataset than its
            pretraining one counts under protocol ``<protocol>@<eval_dataset>``
            (:func:`transfer_protocol`).
        metrics: the metric columns to summarise.

    Returns:
        One row per group: the ``by`` columns, then ``{m}_mean`` and ``{m}_std`` per metric,
        ``n`` and ``seeds``, sorted by the ``by`` columns.
    """
    by, metrics = list(by), list(metrics)
    stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    if runs.empty:
        return pd.DataFrame(columns=[*by, *stats, "n", "seeds"])
    _check_columns(runs, by, "group-by")
    _check_columns(runs, metrics, "metric")
    seed = runs[T.TAG_SEED] if T.TAG_SEED in runs.columns else pd.Series(pd.NA, index=runs.index)
    frame = runs[by].copy()
    if T.TAG_PROTOCOL in by:
        frame[T.TAG_PROTOCOL] = transfer_protocol(runs)
    for m in metrics:
        frame[m] = pd.to_numeric(runs[m], errors="coerce").astype(float)
    frame["_seed"] = pd.to_numeric(seed, errors="coerce")
    groups = frame.groupby(by, dropna=False, sort=True)
    out = groups[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["n"] = groups.size()
    out["seeds"] = groups["_seed"].agg(_seeds)
    out = out.reset_index()
    dup = out[
        out["seeds"].map(lambda s: len(s.split(",")) != len(set(s.split(","))) if s else False)
    ]
    if not dup.empty:
        warnings.warn(
            f"{len(dup)} configuration(s) have the same seed more than once (reruns); each run "
            f"counts in n. First: {dup.iloc[0][by].to_dict()} seeds={dup.iloc[0]['seeds']}.",
            stacklevel=2,
        )
    out["n"] = out["n"].astype(np.int64)
    return out[[*by, *stats, "n", "seeds"]]


PRETRAIN_PREFIX = "pretrain."


def attach_pretrain(evals: pd.DataFrame, pretrains: pd.DataFrame) -> pd.DataFrame:
    """Evaluation runs with the columns of their pretraining (parent) run beside them.

    Every column of ``pretrains`` (metrics such as ``final/wall_time_s``, ``final/images_per_s``,
    ``final/peak_memory_mb``, tags such as ``device``, params such as
    ``param.derived.world_size``) is added as ``pretrain.<column>``, matched by
    ``evals.parent_run_id == pretrains.run_id``. An evaluation without a parent in ``pretrains``
    (a baseline, or a parent that is not FINISHED) gets NA there. Rows and their order are kept.

    Args:
        evals: a frame from ``load_runs(kind="eval")``.
        pretrains: a frame from ``load_runs(kind="pretrain")``.
    """
    right = pretrains.drop_duplicates("run_id").add_prefix(PRETRAIN_PREFIX)
    joined = evals.merge(
        right, how="left", left_on="parent_run_id", right_on=PRETRAIN_PREFIX + "run_id"
    )
    joined.index = evals.index
    return joined


def device_hours(runs_with_pretrain: pd.DataFrame) -> pd.Series:
    """Pretraining cost per row in device-hours: ``pretrain.final/wall_time_s`` × the run's world
    size (``pretrain.param.derived.world_size``, 1 when absent) / 3600; NaN without a wall time.

    Args:
        runs_with_pretrain: a frame from :func:`attach_pretrain`.
    """
    def column(name: str) -> pd.Series:
        if name not in runs_with_pretrain.columns:
            return pd.Series(np.nan, index=runs_with_pretrain.index, dtype=float)
        return pd.to_numeric(runs_with_pretrain[name], errors="coerce").astype(float)

    wall = column(PRETRAIN_PREFIX + T.METRIC_FINAL_WALL_TIME_S)
    world = column(PRETRAIN_PREFIX + "param." + T.DERIVED_PARAM_PREFIX + "world_size")
    return wall * world.fillna(1.0) / 3600.0
