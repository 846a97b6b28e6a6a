"""Statistics over seeds: confidence intervals, paired comparisons, and ranking confidence.

Seeds are few (1-5), so every interval is Student's t, never a normal approximation, and every
function says what it does with one seed (no interval, no p-value) instead of inventing one.

- :func:`mean_ci`: mean ± t₀.₉₇₅,ₙ₋₁ · s/√n.
- :func:`paired_comparison`: two configurations over the seeds they share; a paired t-test
  (``scipy.stats.ttest_rel``) on the per-seed differences.
- :func:`order_probability`: P(mean A > mean B) when each configuration's seeds are resampled
  with replacement (a percentile bootstrap over seeds), for adjacent leaderboard entries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanCI:
    """A mean over seeds with its t confidence interval (``lo``/``hi`` NaN when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    std: float  # sample standard deviation (ddof=1); NaN when n < 2

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (False when there is none)."""
        return bool(self.lo <= value <= self.hi)


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    return x[np.isfinite(x)]


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """The mean of ``values`` and its two-sided Student-t confidence interval.

    ``mean ± t_{(1+c)/2, n-1} · s / √n`` with ``s`` the sample standard deviation (ddof=1).
    NaN values are dropped. With one value the interval is (NaN, NaN); with none, all NaN.

    Args:
        values: one number per seed.
        confidence: the interval's coverage, in (0, 1).
    """
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, 1, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, std)


@dataclass(frozen=True)
class PairedComparison:
    """A − B over shared seeds: the mean difference, its t interval and the paired t-test."""

    seeds: tuple[int, ...]
    diff: MeanCI  # of the per-seed differences A − B
    t: float  # NaN when n < 2; ±inf when every difference is the same non-zero number
    p_value: float  # two-sided; NaN when n < 2

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_comparison(a: Mapping[int, float], b: Mapping[int, float]) -> PairedComparison:
    """Compares two configurations on the seeds both have, pairing the runs by seed.

    The per-seed differences ``d_s = a_s − b_s`` get :func:`mean_ci`; the p-value is the paired
    t-test's (``scipy.stats.ttest_rel``, two-sided): ``t = mean(d) / (s_d / √n)``, n − 1 degrees
    of freedom. Identical differences (s_d = 0) give p = 1 when they are all 0 and p = 0
    otherwise, the limits of the test, instead of scipy's NaN. Seeds only one side has are
    ignored; fewer than two shared seeds give NaN t and p.

    Args:
        a: seed → metric of configuration A.
        b: seed → metric of configuration B.
    """
    seeds = tuple(sorted(s for s in set(a) & set(b) if np.isfinite(a[s]) and np.isfinite(b[s])))
    xa = np.array([a[s] for s in seeds], dtype=float)
    xb = np.array([b[s] for s in seeds], dtype=float)
    diff = mean_ci(xa - xb)
    if len(seeds) < 2:
        return PairedComparison(seeds, diff, math.nan, math.nan)
    if diff.std == 0:
        if diff.mean == 0:
            return PairedComparison(seeds, diff, 0.0, 1.0)
        return PairedComparison(seeds, diff, math.copysign(math.inf, diff.mean), 0.0)
    result = stats.ttest_rel(xa, xb)
    return PairedComparison(seeds, diff, float(result.statistic), float(result.pvalue))


def order_probability(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> float:
    """The bootstrap probability that A's mean is above B's (ties count one half).

    Each side's seed values are resampled with replacement, independently, ``resamples``
    times; the result is the fraction of resamples with ``mean(A*) > mean(B*)`` plus half the
    ties. It answers "if we reran these seeds, how often would this order hold?" for adjacent
    leaderboard entries. Needs at least two values on each side (NaN otherwise): one seed says
    nothing about its own spread. Deterministic for a given ``seed``.

    Args:
        a: one metric per seed of the entry ranked higher.
        b: one metric per seed of the entry ranked lower.
        resamples: bootstrap replicates.
        seed: the generator's seed.
    """
    xa, xb = _finite(a), _finite(b)
    if xa.size < 2 or xb.size < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    ma = xa[rng.integers(0, xa.size, (resamples, xa.size))].mean(axis=1)
    mb = xb[rng.integers(0, xb.size, (resamples, xb.size))].mean(axis=1)
    return float(np.mean(ma > mb) + 0.5 * np.mean(ma == mb))
