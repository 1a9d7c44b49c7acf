"""Parameter checks shared by the merge methods; each error names the method, the value and
the valid range."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: A merge method's ``check(params, model_params)`` (see ``registry.MergeMethod``).
Check = Callable[[dict[str, Any], list[dict[str, Any]]], None]


def number(method: str, name: str, value: Any) -> float:
    """``value`` as a float, or a ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{method}: {name}={value!r} must be a number.")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{method}: {name}={value!r} must be finite.")
    return value


def numbers(method: str, *names: str) -> Check:
    """The ``check`` of a method whose only constraint is that the parameters ``names`` are
    finite numbers (each checked with :func:`number`, in order)."""

    def check(params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
        for name in names:
            number(method, name, params[name])

    return check


def in_range(
    method: str,
    name: str,
    value: Any,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` within [low, high] (with open ends where asked), or a ``ValueError``."""
    v = number(method, name, value)
    bad = v < low or v > high or (low_open and v == low) or (high_open and v == high)
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{method}: {name}={value!r} must lie in {lo}{low}, {high}{hi}.")
    return v


def per_model_in_range(
    method: str, name: str, model_params: list[dict[str, Any]], low: float, high: float
) -> list[float]:
    """Every model's own ``name`` within [low, high]; an error names the model
    (``density of model 1``)."""
    return [
        in_range(method, f"{name} of model {i}", p[name], low, high)
        for i, p in enumerate(model_params)
    ]


def positive_weights(method: str, model_params: list[dict[str, Any]]) -> None:
    """Methods that average (disjoint means, Fisher, soups) need weights > 0."""
    for i, p in enumerate(model_params):
        if number(method, f"weight of model {i}", p["weight"]) <= 0:
            raise ValueError(
                f"{method}: weight of model {i} is {p['weight']!r}; this method averages the "
                "models, so weights must be > 0 (use task_arithmetic for negative weights)."
            )
