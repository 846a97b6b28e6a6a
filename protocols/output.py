"""What the semi-supervised, detection and diagnostics runners return to :func:`~sslbench.protocols.evaluate`."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ProtocolOutput"]


@dataclass(frozen=True)
class ProtocolOutput:
    """One protocol's numbers on one encoder, before they are wrapped into a ``ProtocolResult``.

    Args:
        metrics: the reported numbers (top-1 in percent, AP in percent, diagnostics as they are).
        params: values resolved at run time (chosen lr, subset hash, dataset sizes, ...).
        artifacts: extra files for the evaluation run, file name -> text (e.g. a covariance
            spectrum as JSON, the chosen labelled subset).
    """

    metrics: dict[str, float]
    params: dict[str, float | str]
    artifacts: dict[str, str] = field(default_factory=dict)
