"""Parameter checks name the method, the value and the range."""

from __future__ import annotations

import pytest

from core.merging import checks


def test_number() -> None:
    assert checks.number("m", "x", 2) == 2.0
    for bad in ("2", True, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="m: x="):
            checks.number("m", "x", bad)


def test_in_range_with_open_ends() -> None:
    assert checks.in_range("m", "p", 0.0, 0.0, 1.0) == 0.0
    with pytest.raises(ValueError, match=r"\(0.0, 1.0\]"):
        checks.in_range("m", "p", 0.0, 0.0, 1.0, low_open=True)
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\)"):
        checks.in_range("m", "p", 1.0, 0.0, 1.0, high_open=True)


def test_positive_weights() -> None:
    checks.positive_weights("m", [{"weight": 1.0}])
    with pytest.raises(ValueError, match="weight of model 1"):
        checks.positive_weights("m", [{"weight": 1.0}, {"weight": -1.0}])
