"""Wilson score intervals and success summaries (apps/robotics/intervals.py).

The interval is checked three ways: as the roots of the score-test quadratic (solved here
with numpy, independently of the module's closed form), as the points where the score
statistic equals z, and against published values (Newcombe 1998, Table I) and statsmodels
where it is installed.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from apps.robotics.intervals import SuccessSummary, separated, wilson_interval

CASES = [(0, 1), (1, 1), (0, 20), (1, 29), (13, 50), (50, 50), (15, 148), (81, 263), (37, 100)]


def quadratic_roots(successes: int, trials: int, z: float) -> tuple[float, float]:
    """The rates p with (p̂ - p)² = z² p (1 - p) / n: the two ends of the Wilson interval."""
    p_hat, k = successes / trials, z * z / trials
    roots = np.roots([1 + k, -(2 * p_hat + k), p_hat * p_hat])
    return float(roots.real.min()), float(roots.real.max())


@pytest.mark.parametrize(("successes", "trials"), CASES)
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_interval_equals_the_roots_of_the_score_quadratic(successes, trials, confidence):
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    low, high = wilson_interval(successes, trials, confidence)
    want_low, want_high = quadratic_roots(successes, trials, z)
    assert low == pytest.approx(max(want_low, 0.0), abs=1e-9)
    assert high == pytest.approx(min(want_high, 1.0), abs=1e-9)
    # Each end that is not 0 or 1 is where the score test is exactly on the edge.
    p_hat = successes / trials
    for p in (low, high):
        if 0 < p < 1:
            score = abs(p_hat - p) / math.sqrt(p * (1 - p) / trials)
            assert score == pytest.approx(z, rel=1e-7)
    assert low <= p_hat <= high


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_published_values(successes, trials, low, high):
    """Newcombe (1998), 'Two-sided confidence intervals for the single proportion', Table I."""
    got = wilson_interval(successes, trials)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_the_issue_measurements():
    """The prototype's figures in issue #22: expert 50/50 (0.93-1.00), blind 13/50 (0.16-0.40)."""
    assert [round(x, 2) for x in wilson_interval(50, 50)] == [0.93, 1.0]
    assert [round(x, 2) for x in wilson_interval(13, 50)] == [0.16, 0.40]


def test_matches_scipy():
    """scipy's ``BinomTestResult.proportion_ci(method="wilson")`` is the peer reference."""
    from scipy.stats import binomtest

    for successes, trials in CASES:
        for confidence in (0.9, 0.95):
            want = binomtest(successes, trials).proportion_ci(confidence, method="wilson")
            got = wilson_interval(successes, trials, confidence)
            assert got == pytest.approx((want.low, want.high), abs=1e-12)


def test_edges_are_exact_and_intervals_behave():
    for n in (1, 7, 100, 10_000):
        assert wilson_interval(0, n)[0] == 0.0 and 0 < wilson_interval(0, n)[1] < 1
        assert wilson_interval(n, n)[1] == 1.0 and 0 < wilson_interval(n, n)[0] < 1
    # Symmetric in successes <-> failures; narrower with more trials; wider with confidence.
    low, high = wilson_interval(30, 100)
    assert wilson_interval(70, 100) == pytest.approx((1 - high, 1 - low), abs=1e-12)
    assert np.diff(wilson_interval(300, 1000)) < np.diff(wilson_interval(30, 100))
    assert np.diff(wilson_interval(30, 100, 0.99)) > np.diff(wilson_interval(30, 100, 0.95))


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((1, 0), ValueError, "trials must be at least 1"),
        ((5, 4), ValueError, r"successes must lie in \[0, trials=4\]"),
        ((-1, 4), ValueError, "successes must lie"),
        ((1.5, 4), TypeError, "successes must be an integer"),
        ((True, 4), TypeError, "boolean"),
        ((1, 4, 1.0), ValueError, "confidence must lie strictly between 0 and 1"),
    ],
)
def test_bad_counts_are_refused(args, error, message):
    with pytest.raises(error, match=message):
        wilson_interval(*args)


def test_numpy_integers_are_counts():
    assert wilson_interval(np.int64(3), np.int32(10)) == wilson_interval(3, 10)


def test_summary_from_outcomes():
    outcomes = [True, False, True, True, False]
    steps = [12, 120, 30, 18, 120]
    summary = SuccessSummary.from_outcomes(outcomes, steps)
    assert (summary.successes, summary.trials) == (3, 5)
    assert summary.rate == 0.6
    assert summary.mean_steps == pytest.approx(sum(steps) / 5)
    assert summary.mean_success_steps == pytest.approx(20.0)
    assert summary.interval == wilson_interval(3, 5)
    assert (summary.low, summary.high) == summary.interval
    record = summary.to_dict()
    assert record["success_rate"] == 0.6 and record["trials"] == 5
    assert (record["ci_low"], record["ci_high"]) == summary.interval
    assert str(summary).startswith("0.60 (3/5, 95% CI 0.23-0.88, ")
    none = SuccessSummary.from_outcomes([False, False], [120, 120], confidence=0.9)
    assert none.mean_success_steps is None and none.low == 0.0 and none.confidence == 0.9
    with pytest.raises(ValueError, match="one step count per episode"):
        SuccessSummary.from_outcomes([True], [1, 2])
    with pytest.raises(ValueError, match="no episodes"):
        SuccessSummary.from_outcomes([], [])
    with pytest.raises(ValueError, match="successes must lie"):
        SuccessSummary(successes=6, trials=5, mean_steps=10.0)


def test_separated_needs_the_lower_bound_above_the_other_upper_bound():
    strong = SuccessSummary(successes=70, trials=100, mean_steps=40.0)
    blind = SuccessSummary(successes=26, trials=100, mean_steps=100.0)
    close = SuccessSummary(successes=58, trials=100, mean_steps=45.0)
    assert separated(strong, blind) and not separated(blind, strong)
    assert strong.low > close.rate  # even a point estimate inside is not enough ...
    assert not separated(strong, close)  # ... when the intervals overlap
    assert strong.low < close.high
