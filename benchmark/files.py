"""Atomic file writes, without torch (checkpoints, cell files and reports all use them).

A file is written to a temporary file in the same folder, flushed to disk, then renamed over the
target (``os.replace`` is atomic on POSIX), so a killed job leaves the old file or the new one,
never a truncated one. The file gets the permissions of any new file (``0o666`` less the umask:
``0644`` under the usual ``022``, ``0664`` under a group's ``002``), not ``tempfile.mkstemp``'s
owner-only ``0600``, so colleagues sharing a sweep or results folder can read what it holds.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_NEW_FILE_MODE = 0o666  # the kernel applies the umask to it, as for open(path, "w")


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty file beside ``name`` in ``folder`` (exclusive create, the umask's mode)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {folder / name}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Calls ``write(file)`` on a temporary file beside ``path``, fsyncs it and renames it over
    ``path``: readers and a later run see the old file or the new one, never a torn one. The
    file's permissions follow the umask, as a new file's do (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text.encode()))
