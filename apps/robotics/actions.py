"""Continuous actions as discrete tokens, one per dimension (OpenVLA's action head).

OpenVLA turns each action dimension into one of 256 tokens: the action is normalised with
the dataset's 1st and 99th percentiles (q01/q99, robust to outliers), clipped, and cut into
uniform bins; a language model then predicts the tokens like words. Here each dimension
``i`` has ``bins`` equal bins spanning ``[low[i], high[i]]``; :meth:`ActionTokenizer.encode`
clips an action into that range and returns its bin, :meth:`ActionTokenizer.decode` returns
the bin centre, so a round trip moves an in-range action by at most half a bin width.

(OpenVLA places 256 bin *edges* over ``[-1, 1]``, which makes 255 bins; ``bins`` uniform bins
with their centres as outputs is the cleaner reading of the same idea. The policy maps these
indices ``0..bins-1`` onto its own vocabulary.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class ActionTokenizer:
    """Per-dimension uniform binning of actions between ``low`` and ``high``.

    Args:
        low: ``(action_dim,)`` lower bounds (typically the dataset's ``q01``).
        high: ``(action_dim,)`` upper bounds (typically ``q99``); ``high >= low``. A
            dimension with ``high == low`` (an action that never varies) has one value: every
            action encodes to bin 0 and decodes to ``low``.
        bins: Bins per dimension (256 in OpenVLA).
    """

    def __init__(self, low: Any, high: Any, bins: int = 256) -> None:
        low = np.asarray(low, dtype=np.float64).reshape(-1)
        high = np.asarray(high, dtype=np.float64).reshape(-1)
        if low.shape != high.shape or low.size == 0:
            raise ValueError(
                f"low and high must be 1-D with one bound per action dimension and the same "
                f"length; got shapes {low.shape} and {high.shape}"
            )
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError("low and high must be finite; recompute the action statistics")
        if (high < low).any():
            dims = np.flatnonzero(high < low).tolist()
            raise ValueError(
                f"high < low in action dimension(s) {dims}: low={low[dims].tolist()}, "
                f"high={high[dims].tolist()}; pass the q01 bound as low and q99 as high"
            )
        if not isinstance(bins, int | np.integer) or bins < 2:
            raise ValueError(f"bins must be an integer of at least 2; got {bins!r}")
        self.low, self.high, self.bins = low, high, int(bins)

    @property
    def action_dim(self) -> int:
        """Number of action dimensions (tokens per action)."""
        return self.low.size

    @property
    def bin_width(self) -> np.ndarray:
        """``(action_dim,)`` width of one bin per dimension."""
        return (self.high - self.low) / self.bins

    @classmethod
    def from_stats(
        cls,
        stats: Mapping[str, Mapping[str, Any]],
        key: str = "action",
        bins: int = 256,
        low: str = "q01",
        high: str = "q99",
    ) -> ActionTokenizer:
        """A tokenizer over ``stats[key][low]``..``stats[key][high]`` (LeRobot's stats.json).

        Args:
            stats: ``{feature: {stat: array}}``, e.g. ``read_dataset(path).stats``.
            key: The action feature.
            bins: Bins per dimension.
            low: The statistic used as the lower bound.
            high: The statistic used as the upper bound.
        """
        if key not in stats:
            raise KeyError(
                f"the statistics have no {key!r} entry (they cover {sorted(stats)}); pass the "
                "dataset's action key, or recompute meta/stats.json with "
                "apps.robotics.dataset.recompute_stats"
            )
        entry = stats[key]
        missing = [s for s in (low, high) if s not in entry]
        if missing:
            raise KeyError(
                f"stats[{key!r}] has no {missing} (it has {sorted(entry)}); recompute "
                "meta/stats.json with apps.robotics.dataset.recompute_stats, which writes "
                "q01/q10/q50/q90/q99"
            )
        return cls(entry[low], entry[high], bins=bins)

    def config(self) -> dict[str, Any]:
        """The constructor arguments as plain lists (to save with a checkpoint)."""
        return {"low": self.low.tolist(), "high": self.high.tolist(), "bins": self.bins}

    def _check_actions(self, actions: Any) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim == 0 or actions.shape[-1] != self.action_dim:
            raise ValueError(
                f"actions must have {self.action_dim} values on their last axis, "
                f"(..., {self.action_dim}); got shape {actions.shape}"
            )
        if not np.isfinite(actions).all():
            raise ValueError("actions hold NaN or infinite values, which have no bin")
        return actions

    def out_of_range(self, actions: Any) -> np.ndarray:
        """Boolean mask, same shape as ``actions``: the values that encoding clips."""
        actions = self._check_actions(actions)
        return (actions < self.low) | (actions > self.high)

    def encode(self, actions: Any, strict: bool = False) -> np.ndarray:
        """Bin indices of ``actions``, ``(..., action_dim)`` int64 in ``[0, bins)``.

        Values outside ``[low, high]`` are clipped to the nearest end bin (OpenVLA clips the
        1% tails the same way).

        Args:
            actions: ``(..., action_dim)`` continuous actions.
            strict: Raise ``ValueError`` on an out-of-range value instead of clipping it
                (to catch actions recorded on another scale than the statistics).
        """
        actions = self._check_actions(actions)
        if strict:
            outside = (actions < self.low) | (actions > self.high)
            if outside.any():
                dims = sorted(set(np.nonzero(outside)[-1].tolist()))
                raise ValueError(
                    f"{int(outside.sum())} action value(s) in dimension(s) {dims} lie outside "
                    f"[low, high] = [{self.low[dims].tolist()}, {self.high[dims].tolist()}]; "
                    "use statistics of the same data (recompute_stats) or encode with "
                    "strict=False to clip them"
                )
        clipped = np.clip(actions, self.low, self.high)
        width = np.where(self.high > self.low, self.high - self.low, 1.0)
        scaled = (clipped - self.low) / width * self.bins
        return np.minimum(np.floor(scaled), self.bins - 1).astype(np.int64)

    def decode(self, tokens: Any) -> np.ndarray:
        """Bin centres of ``tokens``, ``(..., action_dim)`` float32 actions.

        Args:
            tokens: ``(..., action_dim)`` integers in ``[0, bins)``.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim == 0 or tokens.shape[-1] != self.action_dim:
            raise ValueError(
                f"tokens must have {self.action_dim} values on their last axis; got shape "
                f"{tokens.shape}"
            )
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"tokens must be integers; got dtype {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.bins):
            raise ValueError(
                f"tokens must lie in [0, {self.bins}); got values from {tokens.min()} to "
                f"{tokens.max()}"
            )
        return (self.low + (tokens + 0.5) * self.bin_width).astype(np.float32)

    def __repr__(self) -> str:
        return f"ActionTokenizer(action_dim={self.action_dim}, bins={self.bins})"
