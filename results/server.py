"""Start and stop a local ``mlflow server``, the tracking server of the cluster recipe.

On a cluster, processes on many nodes log to one MLflow server whose backend store is
PostgreSQL (README, "Running sweeps"); SQLite is for one machine. :class:`MlflowServer` starts
such a server as a child process, bound to ``127.0.0.1`` on a free port unless told otherwise,
waits until its ``/health`` endpoint answers and gives its URI. The tests use it, and so can a
user who wants a server for the length of one script::

    with MlflowServer("postgresql+psycopg2://sslbench_mlflow@127.0.0.1:5432/sslbench_mlflow",
                      artifacts_destination="/shared/mlartifacts") as server:
        os.environ["MLFLOW_TRACKING_URI"] = server.uri
        ...

Credentials come from the environment. Leave the password out of the backend URI and export
``PGPASSWORD`` (or keep it in ``~/.pgpass``): libpq, under MLflow's PostgreSQL driver psycopg2,
reads both. A password that is in a ``postgresql://`` URI anyway is moved out of the server's
command line (which ``ps`` shows to every user of the machine) into ``PGPASSWORD`` in the
server's environment. Nothing here prints a URI unredacted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit, urlunsplit

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results.tracking import _redact_text, redact_uri

_WILDCARD_HOSTS = ("0.0.0.0", "::")


def _move_password_out(backend_store_uri: str) -> tuple[str, str | None]:
    """(the URI without its password, the password) for a ``postgresql`` URI with one, else
    (``backend_store_uri``, None)."""
    parts = urlsplit(backend_store_uri)
    if not parts.scheme.startswith("postgresql") or "@" not in parts.netloc:
        return backend_store_uri, None
    userinfo, hostport = parts.netloc.rsplit("@", 1)
    user, colon, password = userinfo.partition(":")
    if not colon:
        return backend_store_uri, None
    netloc = f"{user}@{hostport}" if user else hostport
    return urlunsplit(parts._replace(netloc=netloc)), unquote(password)


def _free_port(host: str) -> int:
    """A TCP port nothing listens on at ``host`` now (the OS's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """An ``mlflow server`` child process; a context manager that starts and stops it.

    Args:
        backend_store_uri: the SQLAlchemy URI of the runs database, e.g.
            ``postgresql+psycopg2://user@127.0.0.1:5432/db`` (password from ``PGPASSWORD``).
        artifacts_destination: where the server stores artifacts it is sent (a folder or a URI
            such as ``s3://bucket/path``); clients upload through the server.
        host: the interface to bind. ``127.0.0.1`` serves this machine only; on a cluster,
            bind the head node's internal address, never a public one. MLflow's server has no
            authentication of its own.
        port: the port; a free one when None.
        workers: the server's worker processes (MLflow's default, 4, when None).
        log_file: where the server's output goes (a new temporary file when None).
        timeout_s: how long :meth:`start` waits for ``/health`` (creating the schema of a new
            database takes a while).
    """

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        workers: int | None = None,
        log_file: Path | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._backend_store_uri = backend_store_uri
        destination = str(artifacts_destination)
        self._artifacts_destination = (
            destination if "://" in destination else str(Path(destination).resolve())
        )
        self._host = host
        self._port = port
        self._workers = workers
        self._timeout_s = timeout_s
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._uri: str | None = None

    @property
    def uri(self) -> str:
        """The tracking URI, ``http://<host>:<port>`` (``127.0.0.1`` for a wildcard host)."""
        if self._uri is None:
            raise RuntimeError("MlflowServer.uri is only known once start() has been called.")
        return self._uri

    def start(self) -> str:
        """Starts the server and waits until ``/health`` answers.

        Returns:
            The tracking URI (:attr:`uri`).

        Raises:
            SSLBenchError: the server exited or did not answer within ``timeout_s``; the message
                ends with the last lines of its log.
        """
        if self._process is not None:
            raise RuntimeError("This MlflowServer has already been started.")
        if self._port is None:
            self._port = _free_port(self._host)
        host = "127.0.0.1" if self._host in _WILDCARD_HOSTS else self._host
        host = f"[{host}]" if ":" in host else host
        self._uri = f"http://{host}:{self._port}"
        backend, password = _move_password_out(self._backend_store_uri)
        env = dict(os.environ)
        if password is not None:
            env["PGPASSWORD"] = password
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", backend,
            "--artifacts-destination", self._artifacts_destination,
            "--host", self._host,
            "--port", str(self._port),
        ]  # fmt: skip
        if self._workers is not None:
            command += ["--workers", str(self._workers)]
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        with open(self.log_file, "ab") as log:
            # A session of its own, so that stop() ends the server's workers with it.
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.uri

    def _wait_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._timeout_s
        url = f"{self.uri}/health"
        while True:
            if self._process.poll() is not None:
                raise self._failure(f"exited with status {self._process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise self._failure(f"did not answer {url} within {self._timeout_s:.0f} s")
            time.sleep(0.25)

    def _failure(self, what: str) -> SSLBenchError:
        tail = ""
        if self.log_file is not None and self.log_file.exists():
            lines = self.log_file.read_text(errors="replace").splitlines()[-15:]
            tail = _redact_text("\n".join(lines), self._backend_store_uri)
        return SSLBenchError(
            f"The MLflow server for {redact_uri(self._backend_store_uri)} {what}. "
            f"Its log ({self.log_file}) ends:\n{tail}\n",
            "Check that the database is reachable with these credentials (PGPASSWORD or "
            "~/.pgpass for PostgreSQL), that its driver is installed and named in the URI "
            "(`pip install sslbench[cluster]` installs psycopg2, for postgresql+psycopg2://...; "
            "SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3), and that the port is free.",
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the server and its workers (SIGTERM, then SIGKILL after ``timeout_s``)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)  # the session start() created: the server's own
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
