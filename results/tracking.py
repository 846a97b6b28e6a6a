"""MLflow access: the run schema, tracking-URI resolution, provenance and :class:`TrackedRun`.

Every training and evaluation run is one MLflow run whose tags identify it (method, recipe,
dataset, seed, config hash, git SHA, versions) so that results are data. The schema is written
down in ``docs/mlflow-schema.md``; the names below are its single definition in code.

Credentials for a remote tracking server come from the environment
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN``) and
are never logged: any URI shown to the user or written anywhere goes through :func:`redact_uri`.

Several processes on one machine may share the default SQLite store: :func:`get_client` opens it
under a file lock (MLflow's first-open schema migration is not safe to run twice at once) and in
WAL journal mode, and :class:`TrackedRun` retries a write that SQLite refuses with "database is
locked". Several machines need an MLflow server instead (README, "Running sweeps";
:mod:`sslbench.results.server`).

``mlflow`` is imported lazily (inside functions) because importing it takes about a second and
the CLI imports this module only to read the constants.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import json
import os
import platform as _platform
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sslbench.benchmark.errors import SSLBenchError

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_EXPERIMENT = "sslbench"
DEFAULT_SQLITE_FILE = "mlruns.db"
DEFAULT_ARTIFACT_DIR = "mlruns"

# --- Tags -------------------------------------------------------------------------------------
TAG_KIND = "kind"
KIND_PRETRAIN = "pretrain"
KIND_EVAL = "eval"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own nested-run link
TAG_RUN_NAME = "mlflow.runName"

TAG_METHOD = "method"
TAG_RECIPE = "recipe"
TAG_AUGMENT = "augment"
TAG_DATASET = "dataset"
TAG_BACKBONE = "backbone"
TAG_BATCH_SIZE = "batch_size"
TAG_EPOCHS = "epochs"
TAG_SEED = "seed"
TAG_CONFIG_HASH = "config_hash"
TAG_GIT_COMMIT = "git_commit"
TAG_DEVICE = "device"
TAG_SSLBENCH_VERSION = "sslbench_version"
TAG_TORCH_VERSION = "torch_version"
TAG_TORCHVISION_VERSION = "torchvision_version"
TAG_TIMM_VERSION = "timm_version"
TAG_MLFLOW_VERSION = "mlflow_version"
TAG_PYTHON_VERSION = "python_version"
TAG_PLATFORM = "platform"

TAG_PROTOCOL = "protocol"
TAG_PROTOCOL_VERSION = "protocol_version"
TAG_PROTOCOL_SPEC = "protocol_spec"
TAG_EVAL_DATASET = "eval_dataset"
TAG_ERROR = "error"  # first line of the exception that FAILED a run
MAX_ERROR_TAG_LENGTH = 500
TAG_RUN_DIR = "run_dir"  # where a pretraining run's checkpoint lives
TAG_SWEEP = "sweep"  # the sweep (name) a run was launched by
TAG_SWEEP_CELL = "sweep_cell"  # the cell's id inside its sweep
# The final checkpoint of a finished pretraining run (run_artifacts.log_checkpoint).
TAG_CHECKPOINT_PATH = "checkpoint_path"  # where it is on the training machine's disk
TAG_CHECKPOINT_SHA256 = "checkpoint_sha256"
TAG_CHECKPOINT_BYTES = "checkpoint_bytes"
TAG_CHECKPOINT_ARTIFACT = "checkpoint_artifact"  # its artifact path, only when it was uploaded

# MLflow's own system tags (mlflow.utils.mlflow_tags), which its UI shows as User, Source and
# Version; sslbench sets them itself because it does not use MLflow's fluent API (system_tags).
TAG_MLFLOW_USER = "mlflow.user"
TAG_MLFLOW_SOURCE_NAME = "mlflow.source.name"
TAG_MLFLOW_SOURCE_TYPE = "mlflow.source.type"
TAG_MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"

#: Tags written by :func:`provenance_tags`.
PROVENANCE_TAGS: tuple[str, ...] = (
    TAG_GIT_COMMIT,
    TAG_SSLBENCH_VERSION,
    TAG_TORCH_VERSION,
    TAG_TORCHVISION_VERSION,
    TAG_TIMM_VERSION,
    TAG_MLFLOW_VERSION,
    TAG_PYTHON_VERSION,
    TAG_PLATFORM,
    TAG_DEVICE,
)
#: Tags that identify a pretraining run; an evaluation run copies them from its parent.
IDENTITY_TAGS: tuple[str, ...] = (
    TAG_METHOD,
    TAG_RECIPE,
    TAG_AUGMENT,
    TAG_DATASET,
    TAG_BACKBONE,
    TAG_BATCH_SIZE,
    TAG_EPOCHS,
    TAG_SEED,
    TAG_CONFIG_HASH,
    *PROVENANCE_TAGS,
)
#: Tags only an evaluation run has.
EVAL_TAGS: tuple[str, ...] = (
    TAG_PROTOCOL,
    TAG_PROTOCOL_VERSION,
    TAG_PROTOCOL_SPEC,
    TAG_EVAL_DATASET,
)
#: Tags stored as strings that hold integers (``load_runs`` turns them back into ints).
INT_TAGS: tuple[str, ...] = (TAG_BATCH_SIZE, TAG_EPOCHS, TAG_SEED)

#: The method name of the untrained baseline (``epochs`` 0).
RANDOM_INIT_METHOD = "random-init"
RAW_PIXELS_METHOD = "raw-pixels"
#: The untrained reference points: not methods, kept out of method curves.
BASELINE_METHODS = frozenset({RANDOM_INIT_METHOD, RAW_PIXELS_METHOD})

# --- Params and artifacts ---------------------------------------------------------------------
DERIVED_PARAM_PREFIX = "derived."
CONFIG_ARTIFACT = "config.json"
CHECKPOINT_ARTIFACT_DIR = "checkpoints"  # the final checkpoint, when not above the size limit
TRAINING_CURVES_ARTIFACT = "training_curves.png"
#: The environment variable that sets the largest checkpoint uploaded as an artifact (MB).
CHECKPOINT_ARTIFACT_MB_ENV = "SSLBENCH_CHECKPOINT_ARTIFACT_MB"
DEFAULT_CHECKPOINT_ARTIFACT_MB = 200.0

# --- Metrics ----------------------------------------------------------------------------------
# Pretraining, per epoch (step = epoch, 1-based).
METRIC_TRAIN_LOSS = "train/loss"
METRIC_TRAIN_LR = "train/lr"
METRIC_TRAIN_IMAGES_PER_S = "train/images_per_s"
METRIC_TRAIN_EPOCH_TIME_S = "train/epoch_time_s"
METRIC_TRAIN_PEAK_MEMORY_MB = "train/peak_memory_mb"  # CUDA peak allocation, or CPU process peak RSS
TRAIN_METRIC_PREFIX = "train/"  # method logs (e.g. "ema_momentum") go under this prefix
# Pretraining, once at the end.
METRIC_FINAL_TRAIN_LOSS = "final/train_loss"
METRIC_FINAL_WALL_TIME_S = "final/wall_time_s"
METRIC_FINAL_IMAGES_PER_S = "final/images_per_s"
METRIC_FINAL_PEAK_MEMORY_MB = "final/peak_memory_mb"
# Evaluation (percent, final-epoch numbers only).
METRIC_TOP1 = "top1"
METRIC_TOP5 = "top5"
METRIC_VAL_TOP1 = "val_top1"  # on the held-out part of the train set used for model selection
METRIC_BEST_EPOCH_TOP1 = "best_epoch/top1"  # never reported as the result
METRIC_EVAL_SECONDS = "eval_seconds"
#: An evaluation's metrics that its pretraining run carries too (as ``eval/{protocol}/{metric}``).
HEADLINE_METRICS: tuple[str, ...] = (METRIC_TOP1, METRIC_TOP5, "AP")
EVAL_METRIC_PREFIX = "eval/"
_METRIC_NAME_BAD = re.compile(r"[^/\w.\- ]")

# MLflow's own limits (mlflow.utils.validation).
MAX_PARAM_VALUE_LENGTH = 6000
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

# SQLite, the single-machine store. SQLite answers "database is locked" (SQLITE_BUSY) when MLflow's
# own 20 s busy wait (`PRAGMA busy_timeout` in mlflow/store/db/utils.py) runs out, and at once,
# without waiting, when a transaction that has already read must write after another process
# wrote. Such a write is retried after these pauses (jittered x1-2, at most ~13 s in all).
_SQLITE_RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
_SQLITE_LOCKED = re.compile(r"database (table )?is locked", re.IGNORECASE)
# WAL keeps its index in shared memory, so every process using the database must be on one
# machine; on these network filesystems (where one file may be shared by several nodes) the
# database keeps SQLite's default rollback journal.
_NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "afs", "lustre", "gpfs", "beegfs", "ceph",
     "glusterfs", "9p", "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.beegfs"}
)

_P = ParamSpec("_P")
_R = TypeVar("_R")

_SECRET_QUERY_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|credential", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=//)[^/\s@]+@")


def pretrain_run_name(
    recipe: str, seed: int | str, *, dataset: str | None = None, batch_size: int | None = None,
    epochs: int | None = None,
) -> str:
    """The run name of a pretraining run: what ran, e.g. ``simclr-cifar10 s0``.

    The recipe (a baseline's method, e.g. ``random-init``) and the seed; the dataset, batch
    size and epochs are added only where the run departs from its recipe
    (``simclr-cifar10@cifar100 b512 e100 s0``), so that the runs of a sweep have distinct names.
    The full identity is in the tags; nothing reads a run back by its name.

    Args:
        recipe: the recipe name (or a baseline's method).
        seed: the training seed.
        dataset: the pretraining dataset, when it is not the recipe's.
        batch_size: the batch size, when it is not the recipe's.
        epochs: the epochs, when they are not the recipe's.
    """
    name = f"{recipe}@{dataset}" if dataset else recipe
    budget = [f"b{batch_size}"] if batch_size is not None else []
    budget += [f"e{epochs}"] if epochs is not None else []
    return " ".join([name, *budget, f"s{seed}"])


def eval_run_name(protocol: str, of: str | None = None, *, eval_dataset: str | None = None) -> str:
    """The run name of an evaluation run, e.g. ``linear ← simclr-cifar10 s0``.

    Args:
        protocol: the protocol spec name.
        of: the name of what was evaluated (the pretraining run's name); None: the protocol only.
        eval_dataset: the dataset evaluated on, for a transfer (``linear@cifar100 ← ...``).
    """
    name = f"{protocol}@{eval_dataset}" if eval_dataset else protocol
    return f"{name} \N{LEFTWARDS ARROW} {of}" if of else name


def run_label(tags: Mapping[str, str]) -> str:
    """A short name for what a set of identity tags describes (``simclr-cifar10 s0``): the name an
    evaluation run gives its encoder when no pretraining run of this store is its parent."""
    recipe = str(tags.get(TAG_RECIPE) or "")
    if not recipe or recipe == "baseline":
        recipe = str(tags.get(TAG_METHOD) or "encoder")
    seed = tags.get(TAG_SEED)
    return f"{recipe} s{seed}" if seed not in (None, "") else recipe


def eval_metric_name(protocol: str, metric: str, eval_dataset: str | None = None) -> str:
    """The name under which a pretraining run carries one of its evaluations' headline metrics:
    ``eval/{protocol}/{metric}``, ``eval/{protocol}/{eval_dataset}/{metric}`` for a transfer.

    Characters MLflow does not allow in metric names become ``_``.
    """
    parts = [protocol, *([eval_dataset] if eval_dataset else []), metric]
    return EVAL_METRIC_PREFIX + "/".join(_METRIC_NAME_BAD.sub("_", p) for p in parts)


def identity_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The identity tags (:data:`IDENTITY_TAGS`) among ``tags``, e.g. to copy onto an eval run."""
    return {k: str(tags[k]) for k in IDENTITY_TAGS if k in tags}


# --- URIs -------------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use.

    Order: ``uri`` if given, else ``MLFLOW_TRACKING_URI``, else the SQLite database
    ``sqlite:///<cwd>/mlruns.db`` (its artifacts then go to ``<cwd>/mlruns/``).

    Args:
        uri: an explicit URI (e.g. from ``--tracking-uri``).
    """
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_SQLITE_FILE}"


def redact_uri(uri: str) -> str:
    """``uri`` without credentials, safe to print or log.

    Removes the ``user:password@`` part and blanks query parameters that look like secrets
    (``password=``, ``token=``, ...).

    Args:
        uri: a tracking URI, possibly with credentials in it.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _USERINFO.sub("", uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*/:"
        )
    redacted = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if parts.scheme and not parts.netloc and uri.startswith(f"{parts.scheme}://"):
        # urlunsplit drops an empty authority ("sqlite:////abs" -> "sqlite:/abs"); keep it.
        redacted = f"{parts.scheme}://{redacted[len(parts.scheme) + 1 :]}"
    return _USERINFO.sub("", redacted)


def _redact_text(text: str, uri: str) -> str:
    """``text`` (e.g. an MLflow error message) with ``uri`` and any ``//user:pw@`` removed."""
    return _USERINFO.sub("", text.replace(uri, redact_uri(uri)))


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem that holds ``path`` (e.g. ``"ext4"``, ``"nfs4"``), from Linux's
    ``/proc/self/mounts``; None where that cannot be read."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, fstype = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        # Mount points escape blanks as octal ("\040" for a space).
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, fields[2]
    return fstype


@contextlib.contextmanager
def _sqlite_open_lock(db: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``<db>-lock`` (next to the database, like SQLite's ``-wal``).

    MLflow creates and migrates the schema of a new or old database when it first opens it,
    without a lock: processes opening the same fresh database at once corrupt each other's
    migration. Without ``fcntl`` (Windows) or a writable folder this lock is skipped.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(f"{db}-lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only folder: MLflow cannot migrate there either
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _use_wal(db: Path) -> None:
    """Switches SQLite database ``db`` (created if missing) to WAL journal mode, once.

    WAL lets readers and the one writer work at the same time and makes a commit one append, so
    parallel local workers wait for each other far less than with the default rollback journal.
    The mode is stored in the file. Skipped on a network filesystem (see
    :data:`_NETWORK_FILESYSTEMS`); a database that cannot be switched keeps its mode.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    if _filesystem_type(db.parent) in _NETWORK_FILESYSTEMS:
        return
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # e.g. read-only; MLflow's own open reports what matters


def _retry_if_locked(uri: str, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``fn(*args, **kwargs)``, called again after a pause when a SQLite store is locked.

    Only for calls that are safe to repeat. A "database is locked" error means SQLite rolled the
    transaction back, so a single-transaction write (``create_run``, ``set_terminated``) did
    nothing. ``log_batch`` writes params, metrics and tags in separate transactions, each
    idempotent for the same arguments: a param already there with the same value is skipped, a
    tag is overwritten, and a metric row's primary key is (run, key, timestamp, step, value), so
    MLflow drops a row that a first attempt already wrote (``SqlAlchemyStore._log_metrics_once``).
    Other stores (a server) are called once: their client has its own retries.
    """
    if _sqlite_path(uri) is None:
        return fn(*args, **kwargs)
    for delay in _SQLITE_RETRY_DELAYS_S:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if not _SQLITE_LOCKED.search(str(exc)):
                raise
        # Jitter: writers that collided do not all come back at the same moment.
        time.sleep(delay * (1.0 + random.random()))
    return fn(*args, **kwargs)


# --- Provenance -------------------------------------------------------------------------------
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the repository root is the sslbench package


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=True
    )
    return out.stdout.strip()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the sslbench source tree, ``<sha>-dirty`` with uncommitted changes.

    "Dirty" follows ``git describe --dirty``: changes to tracked files count, untracked files do
    not. Returns ``"unknown"`` when the package is not inside its own git checkout (e.g. an
    installed wheel, or no git binary).
    """
    try:
        toplevel = Path(_git("rev-parse", "--show-toplevel")).resolve()
        if toplevel != _PACKAGE_DIR:  # some other repository that happens to contain the package
            return "unknown"
        sha = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _version(dist: str) -> str:
    """The version of ``dist``: the imported module's ``__version__`` when it is already loaded
    (torch's carries the CUDA build, e.g. ``2.4.0+cu121``, which the metadata lacks), else the
    installed distribution's metadata (importing timm alone takes seconds)."""
    module = sys.modules.get(dist)
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def provenance_tags(device: str) -> dict[str, str]:
    """The tags that say what code ran where: git SHA, library versions, Python, platform, device.

    A library already imported gives its ``__version__`` (in a training or evaluation process
    torch, torchvision and timm are loaded, so torch's version includes its CUDA build); one not
    imported is read from its installed metadata rather than imported.

    Args:
        device: the device the run used (e.g. ``"cuda:0 (NVIDIA H100)"`` or ``"cpu"``).
    """
    return {
        TAG_GIT_COMMIT: git_commit(),
        TAG_SSLBENCH_VERSION: _version("sslbench"),  # the package's own __version__
        TAG_TORCH_VERSION: _version("torch"),
        TAG_TORCHVISION_VERSION: _version("torchvision"),
        TAG_TIMM_VERSION: _version("timm"),
        TAG_MLFLOW_VERSION: _version("mlflow"),
        TAG_PYTHON_VERSION: _platform.python_version(),
        TAG_PLATFORM: _platform.platform(),
        TAG_DEVICE: str(device),
    }


def _source_name() -> str:
    """What started this process, e.g. ``sslbench pretrain``: the program's name and its
    subcommand, never its other arguments (they may hold a URI with credentials)."""
    argv = sys.argv or [""]
    prog = Path(argv[0]).name if argv[0] not in ("", "-c", "-") else "python"
    try:
        if Path(argv[0]).is_file() and Path(argv[0]).resolve().is_relative_to(_PACKAGE_DIR):
            prog = "sslbench"  # python -m sslbench.benchmark.cli
    except (OSError, ValueError):
        pass
    if prog == "__main__.py":  # python -m pkg
        prog = Path(argv[0]).parent.name
    sub = argv[1] if len(argv) > 1 and re.fullmatch(r"[a-z][a-z0-9_-]{0,40}", argv[1]) else ""
    return _USERINFO.sub("", f"{prog} {sub}".strip())


def system_tags() -> dict[str, str]:
    """MLflow's own system tags for a new run, which its UI shows as User, Source and Version:
    ``mlflow.user``, ``mlflow.source.name`` (e.g. ``sslbench pretrain``), ``mlflow.source.type``
    (``LOCAL``) and ``mlflow.source.git.commit`` (the commit of the sslbench tree, without the
    ``-dirty`` mark that the ``git_commit`` tag keeps; absent outside a git checkout).

    MLflow's fluent API would also record the repository URL; sslbench does not, because a
    remote's URL may carry a token.
    """
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name (e.g. a container without passwd entry)
        user = "unknown"
    tags = {TAG_MLFLOW_USER: user, TAG_MLFLOW_SOURCE_NAME: _source_name(), TAG_MLFLOW_SOURCE_TYPE: "LOCAL"}
    sha = git_commit().removesuffix("-dirty")
    if sha != "unknown":
        tags[TAG_MLFLOW_GIT_COMMIT] = sha
    return tags


def checkpoint_artifact_limit_mb() -> float:
    """The largest final checkpoint (MB, 10**6 bytes) uploaded as a run artifact:
    ``SSLBENCH_CHECKPOINT_ARTIFACT_MB``, default 200; 0 uploads none. A larger one is recorded by
    its path, size and sha256 only.

    Raises:
        SSLBenchError: the variable is not a number >= 0.
    """
    raw = os.environ.get(CHECKPOINT_ARTIFACT_MB_ENV, "").strip()
    if not raw:
        return DEFAULT_CHECKPOINT_ARTIFACT_MB
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise SSLBenchError(
            f"{CHECKPOINT_ARTIFACT_MB_ENV}={raw!r} is not a size in MB.",
            f"Set it to a number >= 0 (0: never upload checkpoints), or unset it for "
            f"{DEFAULT_CHECKPOINT_ARTIFACT_MB:.0f} MB.",
        )
    return value


# --- Params -----------------------------------------------------------------------------------
def param_value(value: Any) -> Any:
    """``value`` as it should read in MLflow's string params: a whole float (``256.0``, as
    protocols report counts) becomes an int (``256``); everything else is unchanged."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _same_number(a: str, b: str) -> bool:
    """Whether two param strings are the same number written differently (``256.0``, ``256``)."""
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as one level of dotted keys with string values.

    Dataclass values are expanded like mappings; an empty mapping becomes ``"{}"``; other values
    are ``str()``-ed (as MLflow does) and cut to MLflow's 6000-character limit.

    Args:
        d: e.g. ``{"optim": {"base_lr": 0.3}}``, giving ``{"optim.base_lr": "0.3"}``.
        prefix: prepended to every key (e.g. ``"derived."``).
    """
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, prefix=f"{name}."))
            else:
                out[name] = "{}"
        else:
            out[name] = str(value)[:MAX_PARAM_VALUE_LENGTH]
    return out


# --- Client -----------------------------------------------------------------------------------
def _unreachable(uri: str, exc: BaseException) -> SSLBenchError:
    cause = _redact_text(f"{type(exc).__name__}: {exc}", uri)
    if len(cause) > 300:
        cause = cause[:300] + "..."
    where = redact_uri(uri)
    sqlite = _sqlite_path(uri)
    if sqlite is not None:
        fix = (
            f"Check that {sqlite} is an MLflow database and its folder is writable, or point "
            "MLFLOW_TRACKING_URI (or --tracking-uri) at another store."
        )
        return SSLBenchError(f"Cannot open the MLflow store {where} ({cause}).", fix)
    return SSLBenchError(
        f"Cannot reach the MLflow tracking server at {where} ({cause}).",
        "Start the server (e.g. `mlflow server --host 127.0.0.1 --port 5000`) and check the "
        "credentials in MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD/MLFLOW_TRACKING_TOKEN, "
        "or unset MLFLOW_TRACKING_URI to log to the local SQLite file ./mlruns.db.",
    )


@contextlib.contextmanager
def _guard(uri: str, action: str) -> Iterator[None]:
    """Turns a failing MLflow call into an :class:`SSLBenchError` whose text has no credentials.

    MLflow's own messages contain the full server URL (``user:password@`` included, if the URI
    has them), so they are never let through unredacted.
    """
    try:
        yield
    except SSLBenchError:
        raise
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "error_code", None) == "INVALID_PARAMETER_VALUE":
            cause = _redact_text(str(exc), uri)[:500]
            raise SSLBenchError(
                f"MLflow at {redact_uri(uri)} rejected {action}: {cause}",
                "Check the names and values logged (MLflow keys: at most 250 characters of "
                "letters, digits, and _ - . / space).",
            ) from None
        raise _unreachable(uri, exc) from None


@contextlib.contextmanager
def _redacted_stdout(uri: str) -> Iterator[None]:
    """Passes on what is printed to stdout meanwhile with the credentials of ``uri`` removed.

    For a server, ``MlflowClient.set_terminated`` prints "View run ... at: <URL>" with the URL's
    ``user:password@`` in it (``_log_url`` in mlflow/tracking/_tracking_service/client.py).
    """
    if not _USERINFO.search(uri):
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        sys.stdout.write(_redact_text(captured.getvalue(), uri))


@functools.lru_cache(maxsize=16)
def get_client(uri: str) -> MlflowClient:
    """One cached :class:`mlflow.MlflowClient` per resolved URI.

    Opening a SQLite store checks (and on first creation migrates) its schema, which takes one
    to a few seconds; the cache makes that happen once per process. A SQLite store is opened
    under a lock on ``<database>-lock`` so that parallel processes do not migrate one new
    database at once, and is switched to WAL journal mode (see :func:`_use_wal`).

    Args:
        uri: a resolved tracking URI (see :func:`resolve_tracking_uri`).
    """
    import logging

    from mlflow import MlflowClient

    # MLflow and alembic announce schema creation/migration at INFO on stderr; not our user's news.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sqlite = _sqlite_path(uri)
    if sqlite is None:
        return MlflowClient(tracking_uri=uri)
    with _sqlite_open_lock(sqlite):
        _use_wal(sqlite)
        return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, uri: str, name: str, create: bool) -> str | None:
    """The id of experiment ``name``; created if missing and ``create`` (race-safe)."""
    from mlflow.exceptions import MlflowException

    with _guard(uri, f"opening experiment '{name}'"):
        exp = client.get_experiment_by_name(name)
        if exp is None and create:
            sqlite = _sqlite_path(uri)
            # Keep artifacts next to the database, not in whatever the cwd happens to be.
            location = str(sqlite.resolve().parent / DEFAULT_ARTIFACT_DIR) if sqlite else None
            try:
                return str(
                    _retry_if_locked(uri, client.create_experiment, name, artifact_location=location)
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(name)  # another process created it first
    if exp is None:
        return None
    if exp.lifecycle_stage == "deleted":
        raise SSLBenchError(
            f"MLflow experiment '{name}' at {redact_uri(uri)} is deleted.",
            f"Restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
            "or name another experiment.",
        )
    return str(exp.experiment_id)


def _open(
    tracking_uri: str | None, experiment: str, create: bool
) -> tuple[MlflowClient, str, str | None]:
    """(client, resolved uri, experiment id or None when missing and not created)."""
    uri = resolve_tracking_uri(tracking_uri)
    with _guard(uri, "opening the tracking store"):
        client = get_client(uri)
    return client, uri, _experiment_id(client, uri, experiment, create)


def _get_run(client: MlflowClient, uri: str, run_id: str) -> Any:
    with _guard(uri, f"reading run {run_id}"):
        try:
            return client.get_run(run_id)
        except Exception as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
    raise SSLBenchError(
        f"No MLflow run with id '{run_id}' at {redact_uri(uri)}.",
        "Check the run id (`mlflow runs list --experiment-id ...`) and that MLFLOW_TRACKING_URI "
        "points at the store the run was logged to.",
    )


def run_tags(run_id: str, *, tracking_uri: str | None = None) -> dict[str, str]:
    """All tags of run ``run_id`` (e.g. to copy a pretraining run's identity onto its evals).

    Args:
        run_id: the MLflow run id.
        tracking_uri: see :func:`resolve_tracking_uri`.
    """
    return dict(_fetch_run(run_id, tracking_uri).data.tags)


def run_status(run_id: str, *, tracking_uri: str | None = None) -> str:
    """The status of run ``run_id``: RUNNING, FINISHED, FAILED, KILLED or SCHEDULED."""
    return str(_fetch_run(run_id, tracking_uri).info.status)


def _fetch_run(run_id: str, tracking_uri: str | None) -> Any:
    uri = resolve_tracking_uri(tracking_uri)
    with _guard(uri, "opening the tracking store"):
        client = get_client(uri)
    return _get_run(client, uri, run_id)


def run_name(run_id: str, *, tracking_uri: str | None = None) -> str:
    """The name of run ``run_id`` (e.g. to name its evaluation runs after it)."""
    return str(_fetch_run(run_id, tracking_uri).info.run_name or "")


def log_metrics_to_run(
    run_id: str, metrics: Mapping[str, float], *, tracking_uri: str | None = None, step: int = 0
) -> None:
    """Logs ``metrics`` on the existing run ``run_id`` without reopening it (its status and end
    time stay): how a pretraining run comes to carry its evaluations' headline metrics.

    Args:
        run_id: the MLflow run id (e.g. a FINISHED pretraining run).
        metrics: name -> value.
        tracking_uri: see :func:`resolve_tracking_uri`.
        step: the step of every value.
    """
    from mlflow.entities import Metric

    uri = resolve_tracking_uri(tracking_uri)
    with _guard(uri, "opening the tracking store"):
        client = get_client(uri)
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
    with _guard(uri, f"logging metrics on run {run_id}"):
        for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
            _retry_if_locked(uri, client.log_batch, run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH],
                             synchronous=True)


# --- TrackedRun -------------------------------------------------------------------------------
class TrackedRun:
    """A context manager around one MLflow run, addressed by its run id.

    It talks to MLflow through :class:`mlflow.MlflowClient` with explicit run ids, never through
    the fluent active-run stack, so a parent and a child run can be open at once. Every failing
    MLflow call becomes an :class:`SSLBenchError` with the credentials stripped from its text.

    On exit the run is FINISHED, FAILED when an exception escaped, or KILLED on
    ``KeyboardInterrupt``; the exception always propagates. Setting :attr:`end_status` (e.g.
    ``"KILLED"`` for a training stopped before its last epoch, to be resumed) overrides FINISHED.

    Args:
        run_name: e.g. :func:`pretrain_run_name` (ignored when resuming).
        tags: tags set when the run starts (also when resuming).
        experiment: the experiment, created if missing.
        tracking_uri: see :func:`resolve_tracking_uri`.
        parent_run_id: makes this a nested (child) run of that run.
        run_id: resume this existing run (e.g. after ``--resume``) instead of creating one; it
            goes back to RUNNING and keeps its params, metric history, start time and system tags.
        start_time_ms: the run's start (ms since the epoch) when it began before it was created
            (an evaluation logged after its protocol ran); default now. Not used when resuming.
        end_time_ms: the run's end (ms since the epoch) when it ended before this context exits;
            default the exit.

    A new run gets MLflow's system tags (:func:`system_tags`: user, source, git commit) beside
    ``tags``; ``tags`` win where both name one.

    Example::

        with TrackedRun(run_name=pretrain_run_name("byol", "cifar10", 256, 0), tags=tags) as run:
            run.log_params(config)
            run.log_metrics({METRIC_TRAIN_LOSS: 1.2}, step=1)
    """

    def __init__(
        self,
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        tracking_uri: str | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        start_time_ms: int | None = None,
        end_time_ms: int | None = None,
    ) -> None:
        self._run_name = run_name
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._experiment = experiment
        self._tracking_uri = tracking_uri
        self._parent_run_id = parent_run_id
        self._resume_id = run_id
        self._start_time_ms = start_time_ms
        self._end_time_ms = end_time_ms
        self._run_id: str | None = None
        self._client: MlflowClient | None = None
        self._uri = ""
        self._params: dict[str, str] | None = None  # params already on the run, fetched lazily
        #: status on a clean exit instead of FINISHED (e.g. "KILLED" for a preempted training)
        self.end_status: str | None = None

    @property
    def run_id(self) -> str:
        """The MLflow run id (available inside the ``with`` block)."""
        if self._run_id is None:
            raise RuntimeError("TrackedRun.run_id is only available inside the `with` block.")
        return self._run_id

    @property
    def tracking_uri(self) -> str:
        """The tracking URI in use, without credentials."""
        return redact_uri(self._uri or resolve_tracking_uri(self._tracking_uri))

    def __enter__(self) -> TrackedRun:
        client, uri, experiment_id = _open(self._tracking_uri, self._experiment, create=True)
        assert experiment_id is not None
        self._client, self._uri = client, uri
        tags = dict(self._tags)
        if self._parent_run_id is not None:
            _get_run(client, uri, self._parent_run_id)  # fail early on a wrong parent id
            tags[TAG_PARENT_RUN_ID] = self._parent_run_id
        if self._resume_id is not None:
            _get_run(client, uri, self._resume_id)  # a clear error for a wrong run id
            self._run_id = self._resume_id
            with _guard(uri, f"resuming run {self._run_id}"):
                _retry_if_locked(uri, client.update_run, self._run_id, status="RUNNING")
            self.set_tags(tags)
        else:
            tags = {**system_tags(), **tags}
            with _guard(uri, "creating a run"):
                run = _retry_if_locked(
                    uri, client.create_run, experiment_id, tags=tags, run_name=self._run_name,
                    start_time=self._start_time_ms,
                )
            self._run_id = run.info.run_id
            self._params = {}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is None or self._run_id is None:
            return
        if exc_type is None:
            status = self.end_status or "FINISHED"
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            status = "KILLED"  # Ctrl-C, or a job that exits to be requeued (SLURM preemption)
        else:
            status = "FAILED"
        try:
            with _guard(self._uri, f"ending run {self._run_id}"):
                if status == "FAILED" and exc is not None:  # `sslbench sweep status` shows it
                    first = (str(exc).strip().splitlines() or [""])[0]
                    self.set_tags({TAG_ERROR: _redact_text(
                        f"{type(exc).__name__}: {first}"[:MAX_ERROR_TAG_LENGTH], self._uri)})
                with _redacted_stdout(self._uri):
                    _retry_if_locked(
                        self._uri, self._client.set_terminated, self._run_id, status=status,
                        end_time=self._end_time_ms,
                    )
        except SSLBenchError:
            if exc_type is None:
                raise
            # Never mask the exception that ended the run.

    def _require(self) -> tuple[MlflowClient, str]:
        if self._client is None or self._run_id is None:
            raise RuntimeError(
                "Use TrackedRun as a context manager: `with TrackedRun(...) as run:`."
            )
        return self._client, self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs ``params`` flattened to dotted keys (see :func:`flatten`).

        Keys already on the run with the same value are skipped, so a resumed run can log its
        config again. MLflow cannot change a param; a different value is an error.

        Args:
            params: e.g. the resolved config as a (nested) dict.

        Raises:
            SSLBenchError: a key was logged before with another value.
        """
        from mlflow.entities import Param

        client, run_id = self._require()
        if self._params is None:
            self._params = dict(_get_run(client, self._uri, run_id).data.params)
        new: dict[str, str] = {}
        for key, value in flatten(params).items():
            old = self._params.get(key)
            if old is None:
                new[key] = value
            elif old != value and not _same_number(old, value):  # "256.0" logged by older code
                raise SSLBenchError(
                    f"Param '{key}' of MLflow run {run_id} was logged as '{old}' and is now "
                    f"'{value}'; MLflow cannot change a param.",
                    "Resume only with the configuration the run started with, or start a new run.",
                )
        items = [Param(k, v) for k, v in new.items()]
        with _guard(self._uri, "logging params"):
            for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                batch = items[i : i + _MAX_PARAMS_PER_BATCH]
                _retry_if_locked(self._uri, client.log_batch, run_id, params=batch, synchronous=True)
        self._params.update(new)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Logs ``metrics`` at ``step`` (0 when not given).

        Args:
            metrics: name -> value (anything ``float()`` accepts, e.g. a 0-d tensor).
            step: the epoch for per-epoch metrics (1-based).
        """
        from mlflow.entities import Metric

        client, run_id = self._require()
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        with _guard(self._uri, "logging metrics"):
            for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
                batch = items[i : i + _MAX_METRICS_PER_BATCH]
                # The retry repeats the same Metric objects (same timestamp), so MLflow drops
                # rows a failed attempt already wrote instead of storing them twice.
                _retry_if_locked(self._uri, client.log_batch, run_id, metrics=batch, synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Sets (or overwrites) tags; values are stringified.

        Args:
            tags: name -> value.
        """
        from mlflow.entities import RunTag

        client, run_id = self._require()
        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        with _guard(self._uri, "setting tags"):
            for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                batch = items[i : i + _MAX_PARAMS_PER_BATCH]
                _retry_if_locked(self._uri, client.log_batch, run_id, tags=batch, synchronous=True)

    def metric_steps(self, key: str) -> set[int]:
        """The steps at which metric ``key`` is already logged on this run (e.g. on resume)."""
        return {step for step, _ in self.metric_history(key)}

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """Every ``(step, value)`` of metric ``key`` on this run, by step (the latest value per
        step where one was logged twice)."""
        client, run_id = self._require()
        with _guard(self._uri, f"reading metric {key}"):
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        return sorted({int(m.step): float(m.value) for m in points}.items())

    def metric_keys(self) -> list[str]:
        """The names of the metrics logged on this run so far."""
        client, run_id = self._require()
        return sorted(_get_run(client, self._uri, run_id).data.metrics)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Uploads the file ``local_path`` into the run's artifacts (under ``artifact_path``),
        e.g. the final checkpoint; a file already there under that name is replaced."""
        client, run_id = self._require()
        name = f"{artifact_path}/{Path(local_path).name}" if artifact_path else Path(local_path).name
        with _guard(self._uri, f"uploading artifact {name}"):
            client.log_artifact(run_id, str(local_path), artifact_path)

    def log_image(self, data: bytes, artifact_file: str) -> None:
        """Writes the image bytes ``data`` (e.g. a PNG) as the artifact ``artifact_file``."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(path, None if parent == "." else parent)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Writes ``text`` as an artifact (e.g. a protocol's ``covariance_spectrum.json``)."""
        client, run_id = self._require()
        with _guard(self._uri, f"writing artifact {artifact_file}"):
            client.log_text(run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Writes ``obj`` as a JSON (or YAML, by extension) artifact, e.g. ``config.json``.

        Args:
            obj: a JSON-serialisable object (a dataclass is converted with ``asdict``).
            artifact_file: the artifact's path inside the run.
        """
        client, run_id = self._require()
        if is_dataclass(obj) and not isinstance(obj, type):
            obj = asdict(obj)
        # Values JSON lacks (Path, enum, tuple) are written as their str() / list form.
        obj = json.loads(json.dumps(obj, default=str))
        with _guard(self._uri, f"writing artifact {artifact_file}"):
            client.log_dict(run_id, obj, artifact_file)
