"""results.stats: t intervals, the paired comparison and the bootstrap order probability,
against scipy and against cases computed by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from sslbench.results.stats import mean_ci, order_probability, paired_comparison


def test_mean_ci_hand_computed() -> None:
    # mean 2, s = 1, t_{0.975, 2} = 4.302652729911275 -> half width 4.3027 / sqrt(3) = 2.48414
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.n == 3 and ci.std == pytest.approx(1.0)
    assert ci.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert ci.lo == pytest.approx(2 - 2.484138) and ci.hi == pytest.approx(2 + 2.484138)
    assert ci.contains(0.0) and not ci.contains(4.5)


@pytest.mark.parametrize("values", [[85.1, 86.0], [70.2, 71.9, 70.5, 72.1, 71.0], [1e-3, 2e-3, 7e-3]])
def test_mean_ci_equals_scipy(values: list[float]) -> None:
    x = np.array(values)
    lo, hi = sps.t.interval(0.95, x.size - 1, loc=x.mean(), scale=sps.sem(x))
    ci = mean_ci(values)
    assert (ci.lo, ci.hi) == (pytest.approx(lo), pytest.approx(hi))
    lo90, hi90 = sps.t.interval(0.90, x.size - 1, loc=x.mean(), scale=sps.sem(x))
    assert mean_ci(values, 0.90).lo == pytest.approx(lo90) and mean_ci(values, 0.90).hi == pytest.approx(hi90)


def test_mean_ci_one_seed_and_none_and_nan() -> None:
    one = mean_ci([80.0])
    assert one.mean == 80.0 and one.n == 1 and math.isnan(one.lo) and math.isnan(one.hi)
    assert not one.contains(80.0)  # no interval: nothing is inside it
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2


def test_paired_comparison_hand_computed() -> None:
    # d = [1, 2, 3]: t = mean / (s / sqrt n) = 2 / (1 / sqrt 3) = 3.4641, df 2
    cmp = paired_comparison({0: 1.0, 1: 2.0, 2: 3.0, 7: 9.0}, {0: 0.0, 1: 0.0, 2: 0.0, 5: 1.0})
    assert cmp.seeds == (0, 1, 2) and cmp.n == 3  # seeds 5 and 7 are not shared
    assert cmp.t == pytest.approx(2 * math.sqrt(3))
    assert cmp.p_value == pytest.approx(2 * sps.t.sf(2 * math.sqrt(3), 2))
    assert cmp.p_value == pytest.approx(0.07417, abs=1e-5)
    assert cmp.diff.mean == 2.0


def test_paired_comparison_equals_scipy_ttest_rel() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(70, 1, 5), rng.normal(69, 1, 5)
    ref = sps.ttest_rel(a, b)
    cmp = paired_comparison(dict(enumerate(a)), dict(enumerate(b)))
    assert cmp.t == pytest.approx(ref.statistic) and cmp.p_value == pytest.approx(ref.pvalue)


def test_paired_comparison_degenerate_cases() -> None:
    same = paired_comparison({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.p_value == 1.0 and same.t == 0.0
    shifted = paired_comparison({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert shifted.p_value == 0.0 and shifted.t == math.inf
    single = paired_comparison({0: 2.0}, {0: 1.0, 1: 2.0})
    assert single.n == 1 and math.isnan(single.p_value) and single.diff.mean == 1.0


def _exact_order_probability(a: list[float], b: list[float]) -> float:
    """Every resample of both sides enumerated (each equally likely): the exact bootstrap value."""
    wins = total = 0.0
    for ra in itertools.product(a, repeat=len(a)):
        for rb in itertools.product(b, repeat=len(b)):
            ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
            wins += 1.0 if ma > mb else 0.5 if ma == mb else 0.0
            total += 1
    return wins / total


@pytest.mark.parametrize("a,b", [([1.0, 2.0, 4.0], [1.5, 2.5]), ([70.0, 71.0, 72.5], [70.5, 70.0, 69.0])])
def test_order_probability_matches_exact_enumeration(a: list[float], b: list[float]) -> None:
    exact = _exact_order_probability(a, b)
    assert order_probability(a, b, resamples=200_000) == pytest.approx(exact, abs=0.005)


def test_order_probability_limits_and_determinism() -> None:
    assert order_probability([90.0, 91.0], [10.0, 11.0]) == 1.0  # never overlaps
    assert order_probability([10.0, 11.0], [90.0, 91.0]) == 0.0
    assert order_probability([5.0, 5.0], [5.0, 5.0]) == 0.5  # all ties
    assert math.isnan(order_probability([90.0], [10.0, 11.0]))  # one seed: no spread, no answer
    assert order_probability([1.0, 2.0, 3.0], [2.0, 2.5]) == order_probability([1.0, 2.0, 3.0], [2.0, 2.5])
