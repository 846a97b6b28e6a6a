"""MLflow under concurrent writers: the local SQLite store, and a server backed by PostgreSQL.

Each test starts ``N_WRITERS`` processes (``tests/tracking_writer.py``) that open one run each,
wait at a barrier, then all at once log ``STEPS`` steps of ``KEYS`` metrics, one MLflow write per
step. Then it counts exactly: ``N_WRITERS`` runs, all FINISHED; every metric history holds each
step once with its value; and the store's ``metrics`` table holds ``N_WRITERS * KEYS * STEPS``
rows for these runs, none of them twice (nothing lost, nothing duplicated).

The PostgreSQL test needs a database: ``SSLBENCH_TEST_POSTGRES_URI`` (``bash .ci/postgres.sh
start`` starts a local PostgreSQL and prints it; the password is in ``PGPASSWORD``). Without it
the test is skipped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sslbench.results import tracking as T

N_WRITERS = 8
KEYS = 3

WRITER_SCRIPT = Path(__file__).with_name("tracking_writer.py")
_spec = importlib.util.spec_from_file_location("tracking_writer", WRITER_SCRIPT)
assert _spec is not None and _spec.loader is not None
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)

# Credentials that must never reach a param, a tag, a writer's output or the server's log.
HTTP_USER, HTTP_SECRET = "sslbench-user", "not-a-real-secret-7f3a"


@dataclasses.dataclass
class Writers:
    run_ids: list[str]
    outputs: list[str]  # stdout + stderr of each writer
    wall_s: float  # from starting the processes until the last one exited
    logging_s: float  # from the barrier's "go" until the last one exited


def run_writers(uri: str, experiment: str, steps: int, tmp_path: Path) -> Writers:
    """Starts the writers, lets them go together once all are ready, and waits for them."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    logs = [tmp_path / f"writer-{i}.log" for i in range(N_WRITERS)]
    outs = [tmp_path / f"writer-{i}.out" for i in range(N_WRITERS)]
    start = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(N_WRITERS):
            args = [uri, experiment, str(i), str(steps), str(KEYS), str(barrier)]
            with open(outs[i], "wb") as out, open(logs[i], "wb") as err:
                procs.append(subprocess.Popen([sys.executable, str(WRITER_SCRIPT), *args],
                                              stdout=out, stderr=err))  # fmt: skip
        deadline = time.monotonic() + 180
        while len(list(barrier.glob("ready-*"))) < N_WRITERS:
            exited = [i for i, p in enumerate(procs) if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                tails = "\n".join(logs[i].read_text()[-2000:] for i in exited)
                pytest.fail(f"writers {exited} did not reach the barrier:\n{tails}")
            time.sleep(0.05)
        go = time.monotonic()
        (barrier / "go").touch()
        for p in procs:
            p.wait(timeout=300)
        end = time.monotonic()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = [o.read_text() + e.read_text() for o, e in zip(outs, logs)]
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    assert not failed, "\n".join(outputs[i][-3000:] for i in failed)
    run_ids = [json.loads(o.read_text().strip().splitlines()[-1])["run_id"] for o in outs]
    return Writers(run_ids, outputs, end - start, end - go)


def check_store(uri: str, db_url: str, experiment: str, steps: int, writers: Writers) -> dict:
    """Asserts that the store holds exactly what the writers logged; returns the counts.

    Args:
        uri: the tracking URI to read through (what users see).
        db_url: the SQLAlchemy URL of the database behind it (the rows as stored).
    """
    import sqlalchemy
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == N_WRITERS
    assert {r.info.run_id for r in runs} == set(writers.run_ids)
    assert [r.info.status for r in runs] == ["FINISHED"] * N_WRITERS
    assert sorted(int(r.data.tags["writer"]) for r in runs) == list(range(N_WRITERS))
    points = 0
    for run in runs:
        index = int(run.data.tags["writer"])
        assert run.data.params["writer"] == str(index)
        for k in range(KEYS):
            history = client.get_metric_history(run.info.run_id, writer.metric_key(k))
            got = sorted((m.step, m.value) for m in history)
            assert got == [(s, writer.metric_value(index, k, s)) for s in range(1, steps + 1)]
            points += len(history)

    engine = sqlalchemy.create_engine(db_url)
    ids = sqlalchemy.bindparam("ids", expanding=True)
    rows_sql = sqlalchemy.text("SELECT COUNT(*) FROM metrics WHERE run_uuid IN :ids").bindparams(ids)
    dup_sql = sqlalchemy.text(
        "SELECT run_uuid, key, step, COUNT(*) FROM metrics WHERE run_uuid IN :ids "
        "GROUP BY run_uuid, key, step HAVING COUNT(*) > 1"
    ).bindparams(ids)
    try:
        with engine.connect() as con:
            rows = con.execute(rows_sql, {"ids": writers.run_ids}).scalar_one()
            duplicates = con.execute(dup_sql, {"ids": writers.run_ids}).all()
    finally:
        engine.dispose()
    expected = N_WRITERS * KEYS * steps
    assert (rows, duplicates, points) == (expected, [], expected)
    return {
        "writers": N_WRITERS,
        "metrics_per_writer": KEYS * steps,
        "writes_per_writer": steps,
        "rows": rows,
        "duplicates": len(duplicates),
        "wall_s": round(writers.wall_s, 1),
        "logging_s": round(writers.logging_s, 1),
    }


# --- SQLite: one machine ----------------------------------------------------------------------
@pytest.mark.slow  # 30-50 s on 2 CPU cores, most of it starting 8 Python processes
def test_parallel_writers_share_one_sqlite_store(tmp_path: Path) -> None:
    db = tmp_path / "mlruns.db"
    uri = f"sqlite:///{db}"  # a new file: the writers also race to create its schema
    steps = 200
    writers = run_writers(uri, "scale", steps, tmp_path)
    counts = check_store(uri, uri, "scale", steps, writers)
    print(f"\nSQLite: {counts}")
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_on_a_network_filesystem_keeps_its_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(T, "_filesystem_type", lambda path: "nfs4")
    db = tmp_path / "shared.db"
    T._use_wal(db)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    monkeypatch.undo()  # the local filesystem of tmp_path: the same database switches to WAL
    T._use_wal(db)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _locked() -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    # What MLflow's session wrapper raises for SQLite's SQLITE_BUSY (mlflow/store/db/utils.py).
    return MlflowException(
        "(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE
    )


def test_retry_if_locked_retries_only_locked_sqlite_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "_SQLITE_RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    calls: list[int] = []

    def fails(times: int, exc: Exception) -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return "done"

    sqlite_uri = "sqlite:////tmp/x.db"
    assert T._retry_if_locked(sqlite_uri, fails, 2, _locked()) == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(Exception, match="database is locked"):  # 1 + 3 retries, then it gives up
        T._retry_if_locked(sqlite_uri, fails, 10, _locked())
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(ValueError):  # not a lock: no retry
        T._retry_if_locked(sqlite_uri, fails, 1, ValueError("bad value"))
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(Exception, match="database is locked"):  # a server has its own retries
        T._retry_if_locked("http://127.0.0.1:5000", fails, 1, _locked())
    assert len(calls) == 1


def test_a_write_retried_after_it_landed_is_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst case of a retry: the first attempt wrote everything, then reported "locked"."""
    monkeypatch.setattr(T, "_SQLITE_RETRY_DELAYS_S", (0.0, 0.0))
    db = tmp_path / "mlruns.db"
    uri = f"sqlite:///{db}"
    client = T.get_client(uri)
    real_log_batch = client.log_batch
    attempts: list[int] = []

    def lands_then_fails(*args: object, **kwargs: object) -> None:
        real_log_batch(*args, **kwargs)  # type: ignore[arg-type]
        attempts.append(1)
        if len(attempts) % 2 == 1:  # every call's first attempt
            raise _locked()

    with T.TrackedRun(run_name="retried", tracking_uri=uri, experiment="retry") as run:
        monkeypatch.setattr(client, "log_batch", lands_then_fails)
        run.log_params({"a": 1})
        run.set_tags({"t": "x"})
        run.log_metrics({"m": 0.5, "n": 1.5}, step=1)
        run.log_metrics({"m": 0.25}, step=2)
        monkeypatch.undo()
    assert len(attempts) == 8  # 4 calls, each retried once
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params == {"a": "1"} and stored.data.tags["t"] == "x"
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, step, value FROM metrics ORDER BY key, step").fetchall()
        params = con.execute("SELECT COUNT(*) FROM params").fetchone()[0]
    assert rows == [("m", 1, 0.5), ("m", 2, 0.25), ("n", 1, 1.5)] and params == 1


# --- PostgreSQL behind an MLflow server: a cluster ----------------------------------------------
@pytest.fixture(scope="module")
def postgres_uri() -> str:
    uri = os.environ.get("SSLBENCH_TEST_POSTGRES_URI", "").strip()
    if not uri:
        pytest.skip(
            "no PostgreSQL: set SSLBENCH_TEST_POSTGRES_URI (as root on Debian, "
            "`bash .ci/postgres.sh start` starts one and prints it; password in PGPASSWORD)"
        )
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("SSLBENCH_TEST_POSTGRES_URI is set but psycopg2 is missing: pip install -e .[test]")
    return uri


def test_move_password_out() -> None:
    from sslbench.results.server import _move_password_out

    assert _move_password_out("postgresql+psycopg2://u:p%40ss@db:5432/x?sslmode=require") == (
        "postgresql+psycopg2://u@db:5432/x?sslmode=require",
        "p@ss",
    )
    assert _move_password_out("postgresql://u@db/x") == ("postgresql://u@db/x", None)
    assert _move_password_out("sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", None)


@pytest.mark.slow
def test_parallel_writers_through_a_postgresql_backed_server(
    postgres_uri: str, tmp_path: Path
) -> None:
    from sslbench.results.server import MlflowServer

    experiment = f"scale-{uuid.uuid4().hex[:12]}"  # the database outlives the test
    steps = 150
    log = tmp_path / "server.log"
    # A generous timeout: creating MLflow's schema in a new database takes a minute on a slow CI box.
    with MlflowServer(postgres_uri, tmp_path / "artifacts", log_file=log, timeout_s=300) as server:
        assert server.uri.startswith("http://127.0.0.1:")
        # The writers' URI carries credentials, as a URI copied from a password manager might.
        uri = server.uri.replace("http://", f"http://{HTTP_USER}:{HTTP_SECRET}@")
        writers = run_writers(uri, experiment, steps, tmp_path)
        counts = check_store(server.uri, postgres_uri, experiment, steps, writers)
        from mlflow import MlflowClient

        runs = MlflowClient(server.uri).search_runs(
            [MlflowClient(server.uri).get_experiment_by_name(experiment).experiment_id]
        )
    print(f"\nPostgreSQL via mlflow server: {counts}")
    logged = [v for r in runs for v in (*r.data.params.values(), *r.data.tags.values())]
    assert {r.data.params["tracking_uri"] for r in runs} == {server.uri}  # redacted
    server_log = log.read_text()
    for text in (*logged, *writers.outputs, server_log):
        assert HTTP_SECRET not in text and HTTP_USER not in text
    password = os.environ.get("PGPASSWORD")
    if password:
        assert password not in server_log
