"""Action and proprioception normalisation from a dataset's statistics (``meta/stats.json``).

Why these choices (OpenVLA's and LeRobot's): actions are mapped by their 1st and 99th
percentiles (``q01``/``q99``) to ``[-1, 1]`` and clipped, so a few extreme actions do not
squeeze the bulk of the distribution (and the 256-bin tokenizer's bins cover the actions
that actually occur); proprioception is mapped by its ``min``/``max`` to ``[-1, 1]`` (not
clipped: a position slightly outside the demonstrated range is still informative).

A dimension whose two bounds coincide (a constant) maps to 0 and back to the constant.

The :class:`Normalizer` is plain numbers: :meth:`Normalizer.to_dict` gives lists that a
checkpoint can hold and :meth:`Normalizer.from_dict` restores it, so a trained policy
de-normalises its actions with the statistics it was trained with. Every method takes numpy
arrays or torch tensors of shape ``(..., d)`` and returns the same kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["Normalizer", "check_within_stats"]

Array = TypeVar("Array", np.ndarray, torch.Tensor)

#: Half-ranges below this are treated as constant dimensions.
_EPS = 1e-8


def _entry(stats: Mapping[str, Mapping[str, Any]], key: str, stat: str, source: str) -> np.ndarray:
    if key not in stats:
        raise ValueError(
            f"{source}: the statistics have no entry for {key!r} (they cover {list(stats)}); "
            "recompute them with apps.robotics.dataset.recompute_stats(<dataset dir>)"
        )
    if stat not in stats[key]:
        raise ValueError(
            f"{source}: the statistics of {key!r} lack {stat!r} (they hold "
            f"{list(stats[key])}); recompute them with "
            "apps.robotics.dataset.recompute_stats(<dataset dir>)"
        )
    value = np.asarray(stats[key][stat], dtype=np.float64)
    if value.ndim != 1 or not np.isfinite(value).all():
        raise ValueError(
            f"{source}: statistic {key!r}/{stat!r} must be a finite vector, got shape "
            f"{value.shape}; recompute the statistics with "
            "apps.robotics.dataset.recompute_stats(<dataset dir>)"
        )
    return value


def check_within_stats(
    values: np.ndarray,
    stats: Mapping[str, Mapping[str, Any]],
    key: str,
    source: str = "the dataset",
) -> None:
    """Raise ``ValueError`` if ``values`` ``(N, d)`` leave ``stats[key]``'s ``[min, max]``.

    Statistics that do not bound their own data were computed on other data (or the data was
    edited afterwards): a policy normalised with them would see clipped actions. The message
    names the feature, the worst frame and the fix.
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = _entry(stats, key, "min", source), _entry(stats, key, "max", source)
    if values.ndim != 2 or values.shape[1] != len(low) or len(high) != len(low):
        raise ValueError(
            f"{source}: {key!r} has shape {values.shape[1:]} per frame but its statistics "
            f"have {len(low)} dimensions; recompute them with "
            "apps.robotics.dataset.recompute_stats(<dataset dir>)"
        )
    tol = 1e-5 * np.maximum(1.0, np.abs(np.concatenate([low, high])).max())
    outside = (values < low - tol) | (values > high + tol)
    if outside.any():
        frame, dim = (int(i) for i in np.argwhere(outside)[0])
        raise ValueError(
            f"{source}: {key!r} holds values outside its statistics' [min, max] "
            f"({int(outside.any(axis=1).sum())} frames; e.g. frame {frame}, dimension {dim}: "
            f"{values[frame, dim]:.6g} not in [{low[dim]:.6g}, {high[dim]:.6g}]). The "
            "statistics belong to other data: recompute them with "
            "apps.robotics.dataset.recompute_stats(<dataset dir>)"
        )


def _like(x: Any, params: np.ndarray) -> Any:
    """``params`` as the same kind (numpy / torch, dtype, device) as ``x``."""
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.as_tensor(params, dtype=dtype, device=x.device)
    return params.astype(np.float32)


def _as_input(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    return np.asarray(x, dtype=np.float32)


def _clip(x: Any) -> Any:
    return x.clamp(-1.0, 1.0) if isinstance(x, torch.Tensor) else np.clip(x, -1.0, 1.0)


@dataclass
class Normalizer:
    """Affine maps of actions (``q01``/``q99`` -> ``[-1, 1]``, clipped) and proprioception
    (``min``/``max`` -> ``[-1, 1]``), built from a dataset's statistics.

    Attributes:
        action_low / action_high: ``q01`` / ``q99`` of the action, per dimension.
        state_low / state_high: ``min`` / ``max`` of the proprioception, per dimension.
        action_key / state_key: The features the bounds came from (for messages).
    """

    action_low: np.ndarray
    action_high: np.ndarray
    state_low: np.ndarray
    state_high: np.ndarray
    action_key: str = "action"
    state_key: str = "observation.state"

    def __post_init__(self) -> None:
        for name in ("action_low", "action_high", "state_low", "state_high"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        for kind in ("action", "state"):
            low, high = getattr(self, f"{kind}_low"), getattr(self, f"{kind}_high")
            if low.shape != high.shape or not len(low):
                raise ValueError(
                    f"Normalizer: {kind} bounds have shapes {low.shape} and {high.shape}; "
                    "they must be equal non-empty vectors"
                )
            if not (np.isfinite(low).all() and np.isfinite(high).all()) or (low > high).any():
                raise ValueError(
                    f"Normalizer: {kind} bounds must be finite with low <= high; got "
                    f"{low.tolist()} and {high.tolist()}"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_stats(
        cls,
        stats: Mapping[str, Mapping[str, Any]],
        action_key: str = "action",
        state_key: str = "observation.state",
        action_dim: int | None = None,
        state_dim: int | None = None,
        source: str = "the dataset statistics",
    ) -> Normalizer:
        """Bounds from ``{feature: {stat: array}}`` (``meta/stats.json``'s layout).

        ``action_dim`` / ``state_dim`` (the features' declared sizes) are checked against the
        statistics' shapes; a mismatch raises ``ValueError`` naming the fix.
        """
        bounds = {}
        for kind, key, dim, stats_pair in (
            ("action", action_key, action_dim, ("q01", "q99")),
            ("state", state_key, state_dim, ("min", "max")),
        ):
            low, high = (_entry(stats, key, s, source) for s in stats_pair)
            for stat, value in zip(stats_pair, (low, high), strict=True):
                if dim is not None and value.shape != (dim,):
                    raise ValueError(
                        f"{source}: statistic {key!r}/{stat!r} has shape {value.shape}, but "
                        f"the feature {key!r} has {dim} dimensions. The statistics belong to "
                        "other data: recompute them with "
                        "apps.robotics.dataset.recompute_stats(<dataset dir>)"
                    )
            bounds[kind] = (low, high)
        return cls(*bounds["action"], *bounds["state"], action_key, state_key)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and strings (for a checkpoint or JSON)."""
        return {
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "state_low": self.state_low.tolist(),
            "state_high": self.state_high.tolist(),
            "action_key": self.action_key,
            "state_key": self.state_key,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Normalizer:
        """The normaliser :meth:`to_dict` described."""
        missing = [
            k for k in ("action_low", "action_high", "state_low", "state_high") if k not in payload
        ]
        if missing:
            raise ValueError(
                f"normalizer entry lacks {missing}; it must come from Normalizer.to_dict()"
            )
        return cls(
            payload["action_low"],
            payload["action_high"],
            payload["state_low"],
            payload["state_high"],
            payload.get("action_key", "action"),
            payload.get("state_key", "observation.state"),
        )

    # ------------------------------------------------------------------ maps
    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @property
    def state_dim(self) -> int:
        return len(self.state_low)

    @staticmethod
    def _centre_half(
        low: np.ndarray, high: np.ndarray, safe: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Centre and half-range; ``safe`` replaces a constant dimension's 0 by 1 (to divide)."""
        half = (high - low) / 2.0
        return (high + low) / 2.0, np.where(half < _EPS, 1.0, half) if safe else half

    def _check(self, x: Any, dim: int, what: str) -> None:
        if tuple(x.shape)[-1:] != (dim,):
            raise ValueError(f"{what} must have shape (..., {dim}); got {tuple(x.shape)}")

    def normalize_action(self, action: Array) -> Array:
        """Env units -> ``[-1, 1]`` (``q01`` -> -1, ``q99`` -> 1, clipped)."""
        x = _as_input(action)
        self._check(x, self.action_dim, "action")
        centre, half = self._centre_half(self.action_low, self.action_high)
        return _clip((x - _like(x, centre)) / _like(x, half))

    def denormalize_action(self, action: Array) -> Array:
        """``[-1, 1]`` -> env units (inputs are clipped to ``[-1, 1]`` first, so a head's
        overshoot never commands more than the ``q01``/``q99`` range)."""
        x = _as_input(action)
        self._check(x, self.action_dim, "normalised action")
        centre, half = self._centre_half(self.action_low, self.action_high, safe=False)
        return _clip(x) * _like(x, half) + _like(x, centre)

    def normalize_state(self, state: Array) -> Array:
        """Proprioception -> ``[-1, 1]`` over the dataset's ``min``/``max`` (not clipped)."""
        x = _as_input(state)
        self._check(x, self.state_dim, "proprio")
        centre, half = self._centre_half(self.state_low, self.state_high)
        return (x - _like(x, centre)) / _like(x, half)
