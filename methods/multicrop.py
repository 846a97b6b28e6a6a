"""Multi-crop handling shared by every method: which (target view, prediction view) pairs a loss
compares when the augmentation gives 2 global views and N local ones.

Multi-crop (Caron et al., SwAV §3.2, NeurIPS 2020) feeds the network ``num_global`` views at full
resolution and ``num_local`` smaller views; targets (codes, teacher outputs, EMA projections) are
computed from global views only, and every view predicts the targets of the *other* global views.
The augmentation side is any recipe whose views list the global views first (``multicrop-small``,
or ``<recipe>+<N>x<size>`` to add N local views of ``size`` px to any recipe); the forward side is
:func:`sslbench.methods.base.forward_views`, which batches views of equal resolution.
"""

from __future__ import annotations

import torch


def count_global(views: list[torch.Tensor]) -> int:
    """The number of leading views at the first view's resolution (the global views)."""
    n = 1
    while n < len(views) and views[n].shape[-2:] == views[0].shape[-2:]:
        n += 1
    return n


def crop_pairs(num_global: int, num_views: int) -> list[tuple[int, int]]:
    """``(target, prediction)`` index pairs: every global view as target, every other view as
    prediction (``i != j``), as DINO's and SwAV's losses sum them.

    With 2 global views and no local ones this is ``[(0, 1), (1, 0)]``: the symmetric two-view
    loss. With 2 global + N local: ``2 * (N + 1)`` pairs.

    Raises:
        ValueError: fewer than 2 views, or ``num_global`` outside ``[1, num_views]``.
    """
    if num_views < 2 or not 1 <= num_global <= num_views:
        raise ValueError(f"need >= 2 views with 1 <= num_global <= num_views, got "
                         f"num_global={num_global}, num_views={num_views}")
    return [(i, j) for i in range(num_global) for j in range(num_views) if i != j]
