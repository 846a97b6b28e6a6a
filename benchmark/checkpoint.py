"""Atomic, safe checkpoints.

Checkpoints are written to a temporary file in the same folder, flushed to disk, then renamed
over the target (``os.replace`` is atomic on POSIX), so a killed job leaves either the old or the
new file, never a truncated one. They are loaded with ``torch.load(weights_only=True)``: a
checkpoint holds tensors, numbers, strings, lists and dicts only, and a downloaded file can never
run code when it is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sslbench.benchmark.errors import CheckpointError
from sslbench.benchmark.files import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes ``state`` to ``path`` atomically (write, fsync, rename)."""
    state = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda f: torch.save(state, f))


def read_tensor_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Reads a ``torch.save`` file safely (``weights_only=True``): tensors and plain data only.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or holds other objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.",
                              "Check the path, or run the pretraining first.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read: it is corrupt, truncated, or holds objects "
            f"that are not plain tensors ({first}).",
            "Delete it (or move it away) and resume from another checkpoint or start the run "
            "again; sslbench never unpickles arbitrary objects.",
        ) from None


def is_sslbench_checkpoint(state: object) -> bool:
    """Whether a loaded file is an sslbench checkpoint (rather than e.g. a plain state dict)."""
    return isinstance(state, dict) and "format_version" in state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, not an sslbench checkpoint, or
            contains objects other than tensors and plain data.
    """
    return check_checkpoint(read_tensor_file(path, map_location), path)


def check_checkpoint(state: Any, path: str | Path) -> dict[str, Any]:
    """Checks that a loaded file is an sslbench checkpoint this version understands.

    Raises:
        CheckpointError: not an sslbench checkpoint, or written by a newer sslbench.
    """
    if not is_sslbench_checkpoint(state):
        raise CheckpointError(f"'{path}' is not an sslbench checkpoint (no format_version).",
                              "Pass a checkpoint written by `sslbench pretrain`.")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint '{path}' has format {state['format_version']}, newer than this "
            f"sslbench understands ({FORMAT_VERSION}).", "Upgrade sslbench.")
    return dict(state)
