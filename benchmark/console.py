"""What sslbench prints while it works: progress bars on a terminal, plain lines everywhere.

Bars (tqdm, on stderr) are drawn only when stderr is a terminal and the caller asked for them;
a log file or a pipe never receives a carriage return. Whatever the bars, one line per finished
epoch and one per finished evaluation go to stdout, so a log shows what happened and when::

    simclr epoch 3/22: loss 5.1234, lr 0.0300, 1,234 images/s, 8.1 s, ETA 2m50s
      knn-k200-t0.1 on fashion-mnist: top1 81.20, top5 99.10 (0.4 s)

No torch here: the CLI and the sweep driver import it before anything heavy.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sslbench.protocols.run import ProtocolResult


def bars_enabled(progress: bool) -> bool:
    """Whether to draw progress bars: asked for, and stderr (where tqdm draws) is a terminal."""
    if not progress:
        return False
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def say(line: str) -> None:
    """Prints one line to stdout at once (a log file shows it before the next epoch ends)."""
    print(line, flush=True)


def duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    h, rem = divmod(int(round(max(0.0, seconds))), 3600)
    if h:
        return f"{h}h{rem // 60:02d}m"
    return f"{rem // 60}m{rem % 60:02d}s" if rem >= 60 else f"{rem}s"


def epoch_line(name: str, epoch: int, epochs: int, metrics: Mapping[str, float],
               eta_s: float | None) -> str:
    """One finished epoch: ``<name> epoch i/N: loss, lr, images/s, epoch time, ETA``.

    Args:
        name: what trains (the method).
        epoch: the finished epoch, 1-based.
        epochs: the run's epochs.
        metrics: the engine's epoch metrics (``train/loss``, ``train/lr``,
            ``train/images_per_s``, ``train/epoch_time_s``).
        eta_s: seconds left for this call's remaining epochs (None: not known).
    """
    parts = [f"loss {metrics['train/loss']:.4f}", f"lr {metrics['train/lr']:.4g}",
             f"{metrics['train/images_per_s']:,.0f} images/s", f"{metrics['train/epoch_time_s']:.1f} s"]
    if eta_s is not None:
        parts.append(f"ETA {duration(eta_s)}")
    return f"{name} epoch {epoch}/{epochs}: " + ", ".join(parts)


def metrics_text(metrics: Mapping[str, float]) -> str:
    """``top1 81.20, top5 99.10, ...``: top-1 first, the rest in their order."""
    keys = sorted(metrics, key=lambda k: k != "top1")
    return ", ".join(f"{k} {metrics[k]:.2f}" for k in keys)


def eval_line(result: ProtocolResult) -> str:
    """One finished evaluation: ``  <protocol> on <dataset>: top1 .., top5 .. (<seconds> s)``."""
    return (f"  {result.spec.name} on {result.eval_dataset}: {metrics_text(result.metrics)} "
            f"({result.seconds:.1f} s)")
