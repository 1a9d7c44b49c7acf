"""Feature statistics in LeRobot's ``meta/stats.json`` layout, computed exactly.

LeRobot stores, per feature, ``min``, ``max``, ``mean``, ``std`` (population), ``count`` and
the quantiles ``q01``, ``q10``, ``q50``, ``q90``, ``q99``; a policy normalises its inputs and
actions with them (OpenVLA-style action bins use ``q01``/``q99``). Vector features get one
value per dimension (shape ``(d,)``); images get one value per channel, shape ``(C, 1, 1)``,
on a 0-1 scale (uint8 / 255); ``count`` is the number of frames, shape ``(1,)``.

LeRobot estimates quantiles from a 5,000-bin histogram and averages per-episode quantiles when
it merges episodes. Here they are exact (numpy's default linear interpolation): vectors are
small enough to keep whole, and uint8 images take only 256 values, so a per-channel count of
each value gives every statistic of every pixel exactly, streaming, in 256 numbers a channel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Quantile keys and levels, in LeRobot's naming (``f"q{int(q * 100):02d}"``).
QUANTILES: dict[str, float] = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
#: Every statistic a feature gets, in ``meta/stats.json`` order.
STAT_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "count", *QUANTILES)
#: Feature dtypes holding pictures (LeRobot stores ``video`` as MP4 files, ``image`` inline).
VISUAL_DTYPES = ("image", "video")

Stats = dict[str, dict[str, np.ndarray]]


def channel_count(feature: Mapping[str, Any]) -> int:
    """Channels of an image feature: the axis its ``names`` call ``channels`` (or ``channel``),
    else the last axis (LeRobot records images as ``(height, width, channels)``)."""
    shape = tuple(feature["shape"])
    names = feature.get("names") or []
    for axis, name in enumerate(names):
        if name in ("channels", "channel") and axis < len(shape):
            return int(shape[axis])
    return int(shape[-1])


def stat_shape(feature: Mapping[str, Any], stat: str) -> tuple[int, ...]:
    """The shape ``stat`` must have for ``feature`` (an ``info.json`` feature entry)."""
    if stat == "count":
        return (1,)
    if feature["dtype"] in VISUAL_DTYPES:
        return (channel_count(feature), 1, 1)
    return tuple(int(s) for s in feature["shape"])


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over the frames (axis 0) of a numeric feature, one value per element.

    Args:
        values: ``(frames, *shape)`` numbers or booleans (booleans count as 0/1).
    """
    values = np.asarray(values)
    if values.ndim == 0 or len(values) == 0:
        raise ValueError("statistics need at least one frame: got an empty array")
    data = values.astype(np.float64)
    stats = {
        "min": data.min(axis=0),
        "max": data.max(axis=0),
        "mean": data.mean(axis=0),
        "std": data.std(axis=0),
        "count": np.array([len(data)], dtype=np.int64),
    }
    levels = np.quantile(data, list(QUANTILES.values()), axis=0)
    for key, level in zip(QUANTILES, levels, strict=True):
        stats[key] = np.asarray(level)
    return {key: np.atleast_1d(stats[key]) for key in STAT_KEYS}


def histogram_quantile(counts: np.ndarray, level: float) -> float:
    """The ``level`` quantile of the values ``0..len(counts)-1`` repeated ``counts`` times.

    Equal to ``np.quantile`` (linear interpolation) on the expanded array: the sorted
    position ``h = (n - 1) * level`` falls between the values at ``floor(h)`` and the next.
    """
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    position = (total - 1) * level
    below = int(np.floor(position))
    above = min(below + 1, total - 1)
    # The value at sorted position k is the first value whose cumulative count exceeds k.
    low_value, high_value = np.searchsorted(cumulative, [below, above], side="right")
    return float(low_value + (position - below) * (high_value - low_value))


class ImageStats:
    """Per-channel statistics of uint8 images, accumulated frame batch by frame batch.

    Keeps a 256-bin count per channel, from which min, max, mean, std and every quantile
    follow exactly; results are on LeRobot's 0-1 scale with shape ``(C, 1, 1)``.
    """

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.counts = np.zeros((channels, 256), dtype=np.int64)
        self.frames = 0

    def update(self, images: np.ndarray) -> None:
        """Add ``(frames, H, W, C)`` uint8 images (channels last)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != self.channels:
            raise ValueError(
                f"image statistics take (frames, H, W, {self.channels}) uint8 arrays; "
                f"got {images.dtype} {images.shape}"
            )
        for c in range(self.channels):
            self.counts[c] += np.bincount(images[..., c].ravel(), minlength=256)
        self.frames += len(images)

    def merge(self, other: ImageStats) -> None:
        """Add another accumulator's counts (an episode's into the dataset's)."""
        self.counts += other.counts
        self.frames += other.frames

    def result(self) -> dict[str, np.ndarray]:
        """The statistics, each ``(C, 1, 1)`` on a 0-1 scale, and ``count`` (frames)."""
        if self.frames == 0:
            raise ValueError("image statistics need at least one frame")
        values = np.arange(256, dtype=np.float64)
        out: dict[str, list[float]] = {key: [] for key in STAT_KEYS if key != "count"}
        for counts in self.counts:
            seen = np.flatnonzero(counts)
            total = counts.sum()
            mean = float((counts * values).sum() / total)
            out["min"].append(float(seen[0]))
            out["max"].append(float(seen[-1]))
            out["mean"].append(mean)
            out["std"].append(float(np.sqrt((counts * (values - mean) ** 2).sum() / total)))
            for key, level in QUANTILES.items():
                out[key].append(histogram_quantile(counts, level))
        stats = {key: np.asarray(v).reshape(self.channels, 1, 1) / 255.0 for key, v in out.items()}
        stats["count"] = np.array([self.frames], dtype=np.int64)
        return {key: stats[key] for key in STAT_KEYS}


def aggregate_stats(parts: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> Stats:
    """Merge per-episode statistics into dataset statistics, as LeRobot does.

    Min and max are exact, mean and std are exact (count-weighted means and the parallel
    variance formula), and quantiles are the count-weighted mean of the parts' quantiles (an
    approximation: quantiles do not merge exactly). Used to read v2.1 datasets, which store
    only per-episode statistics (``meta/episodes_stats.jsonl``).
    """
    merged: Stats = {}
    for key in dict.fromkeys(k for part in parts for k in part):
        items = [part[key] for part in parts if key in part]
        counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in items])
        total = counts.sum()

        def weighted(values: list[np.ndarray], counts: np.ndarray = counts) -> np.ndarray:
            stacked = np.stack(values).astype(np.float64)
            weights = counts.reshape(-1, *([1] * (stacked.ndim - 1)))
            return (stacked * weights).sum(axis=0) / weights.sum()

        mean = weighted([np.asarray(s["mean"]) for s in items])
        second = weighted(
            [np.asarray(s["std"]) ** 2 + (np.asarray(s["mean"]) - mean) ** 2 for s in items]
        )
        out = {
            "min": np.min(np.stack([np.asarray(s["min"]) for s in items]), axis=0),
            "max": np.max(np.stack([np.asarray(s["max"]) for s in items]), axis=0),
            "mean": mean,
            "std": np.sqrt(np.maximum(second, 0.0)),
            "count": np.array([int(total)], dtype=np.int64),
        }
        for q in QUANTILES:
            if all(q in s for s in items):
                out[q] = weighted([np.asarray(s[q]) for s in items])
        merged[key] = out
    return merged


def conform_stats(
    stats: Mapping[str, Mapping[str, Any]], features: Mapping[str, Mapping[str, Any]], source: str
) -> Stats:
    """``stats`` as arrays of the shapes their features imply; ``ValueError`` where they differ.

    Image statistics written flat, ``(C,)``, are the same numbers and are reshaped to
    ``(C, 1, 1)``; any other mismatch means the statistics belong to other data.

    Args:
        stats: ``{feature: {stat: array-like}}``.
        features: ``info.json``'s features.
        source: The file the statistics came from, named in the error.
    """
    out: Stats = {}
    for key, entry in stats.items():
        spec = features.get(key)
        if spec is None or spec["dtype"] == "string":
            out[key] = {stat: np.asarray(value) for stat, value in entry.items()}
            continue
        out[key] = {}
        for stat, value in entry.items():
            value = np.asarray(value)
            expected = stat_shape(spec, stat)
            if value.shape != expected and not (
                stat != "count" and _broadcastable_vector(value.shape, expected)
            ):
                raise ValueError(
                    f"{source}: statistic {key!r}/{stat!r} has shape {value.shape}, but "
                    f"meta/info.json declares {key!r} with shape {tuple(spec['shape'])}, so it "
                    f"must be {expected}. The statistics belong to other data: recompute them "
                    "with apps.robotics.dataset.recompute_stats(<dataset dir>)."
                )
            out[key][stat] = value.reshape(expected)
    return out


def _broadcastable_vector(got: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Image statistics written flat, ``(C,)`` instead of ``(C, 1, 1)``, are the same numbers."""
    return len(expected) == 3 and expected[1:] == (1, 1) and got == expected[:1]


def stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """``meta/stats.json`` text: nested lists, LeRobot's layout."""
    payload = {
        key: {stat: np.asarray(value).tolist() for stat, value in entry.items()}
        for key, entry in stats.items()
    }
    return json.dumps(payload, indent=4) + "\n"


def stats_from_json(payload: Mapping[str, Mapping[str, Any]]) -> Stats:
    """Arrays from parsed ``meta/stats.json`` (image statistics kept as ``(C, 1, 1)``)."""
    return {
        key: {stat: np.asarray(value) for stat, value in entry.items()}
        for key, entry in payload.items()
    }
