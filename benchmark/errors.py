"""User-facing errors.

Every error a user can cause (an unknown name, a bad config key, a missing dataset, a corrupt
checkpoint, a diverging loss) is an :class:`SSLBenchError`: one short paragraph that names the
problem and the fix. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SSLBenchError(Exception):
    """An error caused by user input, with the problem and how to fix it.

    Args:
        problem: what is wrong, naming the offending value.
        fix: what the user should do about it.
    """

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem.strip()
        self.fix = fix.strip()
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.problem} {self.fix}".strip()


class ConfigError(SSLBenchError):
    """An unknown or wrongly typed configuration key or value."""


class UnknownNameError(ConfigError):
    """A name (method, dataset, backbone, recipe, protocol) that no registry knows."""


class DatasetError(SSLBenchError):
    """A dataset that cannot be found or read."""


class CheckpointError(SSLBenchError):
    """A checkpoint that is corrupt, truncated or belongs to another configuration."""


class NonFiniteLossError(SSLBenchError):
    """The training loss became NaN or infinite."""


def unknown_name(kind: str, name: str, valid: Iterable[str], hint: str = "") -> UnknownNameError:
    """Builds the standard error for an unknown registry name.

    Args:
        kind: what kind of name it is ("method", "dataset", ...).
        name: the name the user gave.
        valid: the names that exist.
        hint: an extra sentence (e.g. the CLI command that lists them).
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    maybe = f" Did you mean '{close[0]}'?" if close else ""
    return UnknownNameError(
        f"Unknown {kind} '{name}'.{maybe}",
        f"Valid {kind}s: {', '.join(valid)}. {hint}".strip(),
    )
