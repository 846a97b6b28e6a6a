"""What a finished pretraining run leaves in MLflow besides its metrics: its final checkpoint and a
plot of its training curves, so that a remote server's UI (and a colleague without access to the
training machine's disk) reaches them.

The checkpoint is uploaded as ``checkpoints/last.pt`` when it is not above
:func:`~sslbench.results.tracking.checkpoint_artifact_limit_mb` (200 MB unless
``SSLBENCH_CHECKPOINT_ARTIFACT_MB`` says otherwise); its path, size and sha256 are tags either
way. ``training_curves.png`` plots every per-epoch ``train/*`` metric (loss, learning rate,
throughput, method logs) and the online monitor's ``monitor/*`` metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results import tracking as T

#: Per-epoch metrics not worth a panel of their own (constant or covered by another).
_SKIPPED = frozenset({T.METRIC_TRAIN_EPOCH_TIME_S, "train/compile_time_s"})
_MAX_PANELS = 12


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of the file at ``path`` (read in 4 MiB pieces)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def log_checkpoint(run: T.TrackedRun, checkpoint: Path, *, limit_mb: float | None = None) -> bool:
    """Records ``checkpoint`` on ``run``: tags ``checkpoint_path``, ``checkpoint_bytes`` and
    ``checkpoint_sha256``, and the file itself as ``checkpoints/<name>`` when it is at most
    ``limit_mb`` MB (tag ``checkpoint_artifact``).

    Args:
        run: an open run.
        checkpoint: the checkpoint file.
        limit_mb: the largest file uploaded (default
            :func:`~sslbench.results.tracking.checkpoint_artifact_limit_mb`).

    Returns:
        Whether the file was uploaded.
    """
    limit = T.checkpoint_artifact_limit_mb() if limit_mb is None else limit_mb
    size = checkpoint.stat().st_size
    run.set_tags({T.TAG_CHECKPOINT_PATH: str(checkpoint.resolve()), T.TAG_CHECKPOINT_BYTES: str(size),
                  T.TAG_CHECKPOINT_SHA256: sha256_of(checkpoint)})
    if size > limit * 1e6:
        return False
    run.log_artifact(checkpoint, T.CHECKPOINT_ARTIFACT_DIR)
    run.set_tags({T.TAG_CHECKPOINT_ARTIFACT: f"{T.CHECKPOINT_ARTIFACT_DIR}/{checkpoint.name}"})
    return True


def curve_metrics(keys: Sequence[str]) -> list[str]:
    """The metrics :func:`training_curves_png` draws, in panel order: the loss, the learning
    rate, the other ``train/*`` metrics, then the monitor's ``monitor/*``."""
    train = [k for k in keys if k.startswith(T.TRAIN_METRIC_PREFIX) and k not in _SKIPPED]
    first = [k for k in (T.METRIC_TRAIN_LOSS, T.METRIC_TRAIN_LR) if k in train]
    rest = sorted(k for k in train if k not in first)
    monitor = sorted(k for k in keys if k.startswith("monitor/"))
    return [*first, *rest, *monitor][:_MAX_PANELS]


def training_curves_png(histories: Mapping[str, Sequence[tuple[int, float]]], title: str) -> bytes:
    """A PNG with one panel per metric: value against epoch (``train/*``) or step (``monitor/*``).

    Args:
        histories: metric name -> its ``(step, value)`` points, in panel order.
        title: the figure's title (the run's name).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; a no-op when a backend is already in use
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = [k for k, v in histories.items() if v]
    cols = min(3, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    try:
        for ax, name in zip(axes.flat, names, strict=False):
            steps, values = zip(*histories[name], strict=True)
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("step" if name.startswith("monitor/") else "epoch", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)


def log_training_curves(run: T.TrackedRun, title: str) -> bool:
    """Draws the run's per-epoch and monitor metrics into the artifact ``training_curves.png``.

    Returns:
        Whether there was anything to draw (a run of 0 epochs has no curves).
    """
    names = curve_metrics(run.metric_keys())
    histories = {k: run.metric_history(k) for k in names}
    if not any(histories.values()):
        return False
    run.log_image(training_curves_png(histories, title), T.TRAINING_CURVES_ARTIFACT)
    return True


def log_run_outputs(run: T.TrackedRun, checkpoint: Path, title: str) -> None:
    """The checkpoint (:func:`log_checkpoint`) and training curves (:func:`log_training_curves`)
    of a finished run. A failed upload is reported on stderr and does not fail the run: the
    training is done and its checkpoint is on disk, named in the tags."""
    try:
        if checkpoint.exists():
            log_checkpoint(run, checkpoint)
        log_training_curves(run, title)
    except (SSLBenchError, OSError) as exc:
        print(f"warning: MLflow run {run.run_id}: could not store its checkpoint or plots "
              f"({str(exc).splitlines()[0][:300]}).", file=sys.stderr)


@contextlib.contextmanager
def finishing(run: T.TrackedRun, checkpoint: Path, title: str) -> Iterator[T.TrackedRun]:
    """``run`` as a context manager that, when its body ends without an exception and without
    setting ``run.end_status`` (a run stopped early ends KILLED, to be resumed), stores the run's
    outputs (:func:`log_run_outputs`) before the run is marked FINISHED.

    Args:
        run: the (not yet entered) pretraining run.
        checkpoint: where the final checkpoint will be when the body is done.
        title: the plots' title (the run's name).
    """
    with run as tracked:
        yield tracked
        if tracked.end_status is None:
            log_run_outputs(tracked, checkpoint, title)
