"""Robustness metrics: accuracy with class-subset projection, ECE, effective robustness and
a JSONL results database (the plots are in :mod:`apps.vision.plots`).

- :func:`expected_calibration_error`: equal-width confidence bins (``n_bins=15``), the
  L1 gap ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|``; it matches torchmetrics'
  ``MulticlassCalibrationError(norm="l1")`` (tested).
- :class:`EffectiveRobustness`: the linear fit ``logit(OOD) = a * logit(ID) + b`` over
  baseline models (Taori et al., 2020); a model's effective robustness is its OOD accuracy
  minus the fit's prediction at its ID accuracy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.atomic import atomic_write_text

__all__ = [
    "EffectiveRobustness",
    "ResultsDB",
    "accuracy",
    "expected_calibration_error",
    "project_logits",
    "reliability_bins",
]


def project_logits(
    logits: Tensor, labels: Tensor, classes: Sequence[int] | None
) -> tuple[Tensor, Tensor]:
    """Keep only the logit columns of ``classes`` and relabel into that subset.

    ``classes=None`` returns the inputs. A label outside ``classes`` is an error naming it.
    """
    if classes is None:
        return logits, labels
    classes_t = torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)
    lookup = torch.full((logits.shape[-1],), -1, dtype=torch.long, device=logits.device)
    lookup[classes_t] = torch.arange(len(classes_t), device=logits.device)
    new = lookup[labels]
    if (new < 0).any():
        bad = sorted({int(v) for v in labels[new < 0].tolist()})
        raise ValueError(
            f"labels {bad} are not in the evaluated class subset {list(classes)}; the shift's "
            "class list must cover every label in it."
        )
    return logits[:, classes_t], new


def accuracy(logits: Tensor, labels: Tensor, classes: Sequence[int] | None = None) -> float:
    """Top-1 accuracy, with the logits projected onto ``classes`` when given."""
    logits, labels = project_logits(logits, labels, classes)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined.")
    return float((logits.argmax(-1) == labels).float().mean())


def _check_probs(probs: Tensor, labels: Tensor, n_bins: int) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or len(probs) != len(labels):
        raise ValueError(
            f"probs must be (N, C) and labels (N,); got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be >= 1.")


def reliability_bins(
    probs: Tensor, labels: Tensor, n_bins: int = 15
) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width confidence bin: (count, accuracy, mean confidence).

    Bin b holds the confidences in ``(b/n, (b+1)/n]`` (a confidence of exactly 0 falls in
    the first bin), as torchmetrics bins them.
    """
    _check_probs(probs, labels, n_bins)
    conf, pred = probs.float().max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins).index_add_(0, idx, torch.ones_like(conf))
    acc_sum = torch.zeros(n_bins).index_add_(0, idx, correct)
    conf_sum = torch.zeros(n_bins).index_add_(0, idx, conf)
    safe = count.clamp(min=1)
    return count, acc_sum / safe, conf_sum / safe


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width bins: sum_b (|B_b| / N) |acc(B_b) - conf(B_b)|."""
    count, acc, conf = reliability_bins(probs, labels, n_bins)
    return float((count / count.sum() * (acc - conf).abs()).sum())


# ----------------------------------------------------------------------------- eff. robustness
def _logit(p: float, eps: float = 1e-4) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


@dataclass
class EffectiveRobustness:
    """``logit(OOD) = slope * logit(ID) + intercept``, fitted on baseline models."""

    slope: float
    intercept: float
    n_models: int

    @classmethod
    def fit(cls, id_acc: Sequence[float], ood_acc: Sequence[float]) -> EffectiveRobustness:
        """Least-squares fit in logit space; needs two baselines with different ID accuracy."""
        if len(id_acc) != len(ood_acc) or len(id_acc) < 2:
            raise ValueError(
                "effective robustness needs at least two baseline models (ID, OOD) pairs; got "
                f"{len(id_acc)} and {len(ood_acc)}."
            )
        x = torch.tensor([_logit(v) for v in id_acc], dtype=torch.float64)
        y = torch.tensor([_logit(v) for v in ood_acc], dtype=torch.float64)
        if float(x.var()) == 0:
            raise ValueError("baseline models all have the same ID accuracy; cannot fit a line.")
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
        return cls(slope, float(y.mean() - slope * x.mean()), len(x))

    def predict(self, id_acc: float) -> float:
        """The OOD accuracy the baseline fit expects at ID accuracy ``id_acc``."""
        z = self.slope * _logit(id_acc) + self.intercept
        return 1 / (1 + math.exp(-z))

    def __call__(self, id_acc: float, ood_acc: float) -> float:
        """Effective robustness: ``ood_acc - predict(id_acc)``."""
        return ood_acc - self.predict(id_acc)

    def save(self, path: str | Path) -> Path:
        """Write the fit as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EffectiveRobustness:
        return cls(**json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------- results db
class ResultsDB:
    """Append-only JSONL file, one row per evaluated model (or WiSE-FT alpha).

    Every append rewrites the file atomically (old content + new rows), so a reader never
    sees a half-written line.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        lines = [json.dumps(r, sort_keys=True) for r in [*self.rows(), *rows]]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
