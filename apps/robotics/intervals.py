"""Success rates with Wilson score intervals, and when two of them differ.

Closed-loop evaluation gives a count of successes out of a few dozen or hundred episodes, so
a success rate is only meaningful with its uncertainty. The Wilson score interval (Wilson
1927) is the set of true rates ``p`` that a two-sided score test at the given confidence
would not reject; unlike the normal-approximation (Wald) interval it stays inside [0, 1] and
keeps close to its nominal coverage near 0 and 1 and at small ``n`` (Brown, Cai & DasGupta
2001). For ``s`` successes in ``n`` trials, ``p̂ = s / n`` and ``z`` the normal quantile::

    centre = (p̂ + z²/(2n)) / (1 + z²/n)
    half   = z / (1 + z²/n) * sqrt(p̂(1 - p̂)/n + z²/(4n²))

Two policies are called apart (:func:`separated`) only when one's interval lies wholly above
the other's, a deliberately conservative test.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any


def _count(name: str, value: Any) -> int:
    """``value`` as an ``int`` (numpy integers too); booleans and floats are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer count; got the boolean {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer count; got {value!r}") from None


def _check_counts(successes: Any, trials: Any, confidence: float) -> tuple[int, int]:
    s, n = _count("successes", successes), _count("trials", trials)
    if n < 1:
        raise ValueError(f"trials must be at least 1 (no episodes, no rate); got {n}")
    if not 0 <= s <= n:
        raise ValueError(f"successes must lie in [0, trials={n}]; got {s}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    return s, n


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` for ``successes`` out of ``trials``.

    ``0/n`` gives a lower bound of exactly 0 and ``n/n`` an upper bound of exactly 1.

    Args:
        successes: Successful episodes.
        trials: All episodes (at least 1).
        confidence: Two-sided confidence level, e.g. 0.95.
    """
    s, n = _check_counts(successes, trials, confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = s / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if s == 0 else max(0.0, centre - half)
    high = 1.0 if s == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class SuccessSummary:
    """An evaluation's outcome: successes out of trials, its interval and episode lengths.

    Attributes:
        successes: Successful episodes.
        trials: All episodes.
        mean_steps: Mean episode length over all episodes (failures run to the step limit).
        mean_success_steps: Mean length of the successful episodes (``None`` without any).
        confidence: Level of :attr:`interval`.
    """

    successes: int
    trials: int
    mean_steps: float
    mean_success_steps: float | None = None
    confidence: float = 0.95

    def __post_init__(self) -> None:
        _check_counts(self.successes, self.trials, self.confidence)

    @classmethod
    def from_outcomes(
        cls, successes: Sequence[bool], steps: Sequence[int], confidence: float = 0.95
    ) -> SuccessSummary:
        """Summarise per-episode outcomes: ``successes[i]`` and ``steps[i]`` of episode ``i``."""
        if len(successes) != len(steps):
            raise ValueError(
                f"one step count per episode: got {len(successes)} outcomes and "
                f"{len(steps)} step counts"
            )
        if not successes:
            raise ValueError("no episodes to summarise")
        wins = [int(n) for ok, n in zip(successes, steps, strict=True) if ok]
        return cls(
            successes=len(wins),
            trials=len(successes),
            mean_steps=sum(int(n) for n in steps) / len(steps),
            mean_success_steps=sum(wins) / len(wins) if wins else None,
            confidence=confidence,
        )

    @property
    def rate(self) -> float:
        """The success rate ``successes / trials``."""
        return self.successes / self.trials

    @property
    def interval(self) -> tuple[float, float]:
        """The Wilson interval at :attr:`confidence`."""
        return wilson_interval(self.successes, self.trials, self.confidence)

    @property
    def low(self) -> float:
        """Lower end of :attr:`interval`."""
        return self.interval[0]

    @property
    def high(self) -> float:
        """Upper end of :attr:`interval`."""
        return self.interval[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for ``metrics.json`` and reports."""
        low, high = self.interval
        return {
            "success_rate": self.rate,
            "ci_low": low,
            "ci_high": high,
            "confidence": self.confidence,
            "successes": self.successes,
            "trials": self.trials,
            "mean_steps": self.mean_steps,
            "mean_success_steps": self.mean_success_steps,
        }

    def __str__(self) -> str:
        low, high = self.interval
        return (
            f"{self.rate:.2f} ({self.successes}/{self.trials}, {self.confidence:.0%} CI "
            f"{low:.2f}-{high:.2f}, {self.mean_steps:.1f} steps)"
        )


def separated(a: SuccessSummary, b: SuccessSummary) -> bool:
    """Whether ``a`` is credibly better than ``b``: ``a``'s lower bound above ``b``'s upper."""
    return a.low > b.high
