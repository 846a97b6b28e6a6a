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


class CheckpointWriter:
    """Writes checkpoints synchronously, or in a background thread while training goes on.

    An asynchronous save first waits for the previous write (one at a time), then snapshots every
    tensor of ``state`` into host memory (pinned and reused between saves for CUDA tensors, so the
    copy is one pass over the weights and a single synchronisation), and hands the write (save,
    fsync, atomic rename; :func:`save_checkpoint`) to a thread. A synchronous save waits for any
    write in flight and writes on the calling thread. :meth:`wait` returns once every write is on
    disk and re-raises a failed background write.

    Attributes:
        durable_epoch: the ``epoch`` of the last checkpoint known to be on disk (-1: none yet).
    """

    def __init__(self, asynchronous: bool) -> None:
        self.asynchronous = asynchronous
        self.durable_epoch = -1
        self._thread: Any = None
        self._error: BaseException | None = None
        self._in_flight = -1
        self._buffers: list[torch.Tensor] = []

    def save(self, path: str | Path, state: dict[str, Any], *, sync: bool = False) -> None:
        """Writes ``state`` (its ``epoch`` key marks it) to ``path``; see the class docstring."""
        import threading

        self.wait()
        epoch = int(state.get("epoch", 0))
        if sync or not self.asynchronous:
            save_checkpoint(path, state)
            self.durable_epoch = epoch
            return
        snapshot = self._snapshot(state)
        self._in_flight = epoch
        self._thread = threading.Thread(target=self._write, args=(Path(path), snapshot),
                                        name="sslbench-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Blocks until the write in flight (if any) is on disk.

        Raises:
            CheckpointError: the background write failed (the previous checkpoint is intact).
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                error, self._error = self._error, None
                raise CheckpointError(f"Writing the checkpoint in the background failed ({error}).",
                                      "Check the disk (space, permissions); the previous checkpoint "
                                      "is intact, so --resume continues from it.") from error
            self.durable_epoch = self._in_flight

    def _write(self, path: Path, state: dict[str, Any]) -> None:
        try:
            save_checkpoint(path, state)
        except BaseException as exc:  # noqa: BLE001 - reported by wait()
            self._error = exc

    def _snapshot(self, state: Any) -> Any:
        tensors: list[torch.Tensor] = []
        _collect(state, tensors)
        reuse = len(self._buffers) == len(tensors) and all(
            b.shape == t.shape and b.dtype == t.dtype for b, t in zip(self._buffers, tensors))
        if not reuse:
            self._buffers = [torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda)
                             for t in tensors]
        for buffer, t in zip(self._buffers, tensors):
            buffer.copy_(t.detach(), non_blocking=t.is_cuda)
        if any(t.is_cuda for t in tensors):
            torch.cuda.synchronize()
        copies = iter(self._buffers)
        return _replace(state, copies)


def _collect(obj: Any, out: list[torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect(v, out)


def _replace(obj: Any, copies: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return next(copies)
    if isinstance(obj, dict):
        return {k: _replace(v, copies) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, copies) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_replace(v, copies) for v in obj)
    return obj
