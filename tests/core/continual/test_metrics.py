"""Metrics against hand-computed values, on full and partial (non-square) matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.continual import metrics

# R[i][j]: accuracy on task j after training task i.
R = [
    [0.9, 0.2, 0.1],
    [0.7, 0.8, 0.3],
    [0.6, 0.75, 0.95],
]
BASELINE = [0.1, 0.1, 0.2]


def test_full_matrix_by_hand() -> None:
    assert metrics.average_accuracy(R) == pytest.approx((0.6 + 0.75 + 0.95) / 3)
    # BWT: ((0.6 - 0.9) + (0.75 - 0.8)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.175)
    # forgetting: task0 max(0.9, 0.7) - 0.6 = 0.3; task1 max(0.2, 0.8) - 0.75 = 0.05
    assert metrics.forgetting(R) == pytest.approx(0.175)
    assert metrics.forgetting_last(R) == pytest.approx(0.175)
    # FWT: ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.2 - 0.1) + (0.3 - 0.2)) / 2
    assert metrics.forward_transfer(R, BASELINE) == pytest.approx(0.1)
    # AIA: mean(0.9, (0.7 + 0.8)/2, (0.6 + 0.75 + 0.95)/3)
    assert metrics.average_incremental_accuracy(R) == pytest.approx((0.9 + 0.75 + 2.3 / 3) / 3)


def test_max_based_and_last_based_forgetting_differ_when_accuracy_peaks_later() -> None:
    peaked = [[0.5, 0.1], [0.9, 0.8]]  # task 0 improves while task 1 trains
    m = [[0.5, 0.1, 0.0], [0.9, 0.8, 0.0], [0.6, 0.7, 0.9]]
    assert metrics.forgetting(m) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)
    assert metrics.forgetting_last(m) == pytest.approx(((0.5 - 0.6) + (0.8 - 0.7)) / 2)
    assert metrics.backward_transfer(peaked) == pytest.approx(0.4)


def test_partial_matrices_during_a_run() -> None:
    after_two = R[:2]  # 2 x 3: two tasks trained, three evaluated
    assert metrics.average_accuracy(after_two) == pytest.approx(0.75)
    assert metrics.backward_transfer(after_two) == pytest.approx(-0.2)
    assert metrics.forgetting(after_two) == pytest.approx(0.2)
    assert metrics.forgetting_last(after_two) == pytest.approx(0.2)
    assert metrics.forward_transfer(after_two, BASELINE) == pytest.approx(0.1)  # (0.2-0.1, 0.3-0.2)
    assert metrics.average_incremental_accuracy(after_two) == pytest.approx((0.9 + 0.75) / 2)

    after_one = R[:1]
    assert metrics.average_accuracy(after_one) == pytest.approx(0.9)
    assert math.isnan(metrics.backward_transfer(after_one))
    assert math.isnan(metrics.forgetting(after_one))
    assert math.isnan(metrics.forgetting_last(after_one))
    assert metrics.forward_transfer(after_one, BASELINE) == pytest.approx(0.1)

    seen_only = [[0.9, float("nan")], [0.7, 0.8]]  # square k x k, unseen cells nan
    assert metrics.backward_transfer(seen_only) == pytest.approx(-0.2)


def test_summary_and_array_input() -> None:
    out = metrics.summary(np.array(R), BASELINE)
    assert out["forgetting"] == pytest.approx(0.175)
    assert set(out) == {
        "average_accuracy",
        "backward_transfer",
        "forgetting",
        "forgetting_last",
        "average_incremental_accuracy",
        "forward_transfer",
    }
    assert "forward_transfer" not in metrics.summary(R)
    assert math.isnan(metrics.forward_transfer([[0.5]], [0.1]))  # one task: nothing to transfer to


def test_bad_matrices_are_named() -> None:
    with pytest.raises(ValueError, match="3 rows but 2 columns"):
        metrics.average_accuracy([[1, 0], [1, 1], [0, 0]])
    with pytest.raises(ValueError, match="ragged"):
        metrics.average_accuracy([[1.0], [1.0, 0.5]])
    with pytest.raises(ValueError, match="2-D"):
        metrics.average_accuracy([0.5, 0.5])
    with pytest.raises(ValueError, match="one accuracy per task"):
        metrics.forward_transfer(R, [0.1, 0.1])
