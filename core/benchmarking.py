"""What every app's ``benchmark`` shares: mean ± standard deviation over seeds and the
summary file that ends with the command reproducing it."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.atomic import atomic_write_text

__all__ = ["mean_std", "write_summary"]


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of finite values."""
    vals = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if vals.size == 0:
        return float("nan"), float("nan")
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0


def write_summary(
    path: Path, lines: Sequence[str], module: str, argv: Sequence[str] | None
) -> Path:
    """Write a markdown summary atomically, ending with the command that reproduces it (the
    real command line when ``argv`` is None), print it and its path; return the path."""
    command = " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([*lines, f"Command: python -m {module} {command}".rstrip(), ""])
    atomic_write_text(path, text)
    print(text)
    print(f"summary: {path.resolve()}")
    return path
