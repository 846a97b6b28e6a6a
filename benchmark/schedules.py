"""Schedules as pure functions of the global step (DINO's ``cosine_scheduler``, lightly's
``cosine_schedule``): nothing here keeps state, so a resumed run gets the same values."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``final``.

    ``lr(s) = peak * (s + 1) / warmup`` for ``s < warmup``; afterwards
    ``final + (peak - final) * (1 + cos(pi * t)) / 2`` with ``t = (s - warmup) / (total - warmup)``.

    Args:
        step: 0-based global optimisation step.
        total_steps: steps in the whole run.
        warmup_steps: warm-up length in steps (0: none).
        peak: value at the end of warm-up.
        final: value at the last step.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """EMA momentum increased from ``base`` to 1 on a cosine (BYOL §3.2).

    ``tau(k) = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2``.
    """
    t = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0
