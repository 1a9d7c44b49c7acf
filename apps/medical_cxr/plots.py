"""Figures of the chest X-ray app, as matplotlib ``Figure`` objects (no pyplot, no files).

``report.md``'s figures go to a :class:`~core.training.report.TestReport`, whose writer saves
them; the factuality comparison saves its own with :func:`core.training.report.write_figure`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

#: Logged series the training-curves figure reads from ``metrics.csv``.
CURVE_KEYS = ("train/token_loss_epoch", "val/token_loss", "train/loss_epoch", "val/loss")


def curves_figure(metrics_csv: Path) -> Figure | None:
    """Train/val loss per epoch from a CSV log, or ``None`` when there is nothing to plot.

    Where the report's token cross-entropy was logged, only it is shown (not the auxiliary
    label loss that ``loss`` adds).
    """
    if not metrics_csv.is_file():
        return None
    series: dict[str, dict[int, float]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for key in CURVE_KEYS:
                if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
                    series.setdefault(key, {})[int(float(row["epoch"]))] = float(row[key])
    if not series:
        return None
    if "train/token_loss_epoch" in series:
        series = {k: v for k, v in series.items() if "token_loss" in k}
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    for key, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("token cross-entropy")
    ax.legend()
    ax.set_title("training curves")
    return fig


def per_label_figure(rows: list[dict]) -> Figure:
    """Bar chart of the per-observation F1, with the references' positive counts."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    names = [r["observation"] for r in rows]
    x = np.arange(len(rows))
    ax.bar(x, [r["f1"] for r in rows], color="tab:blue")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("clinical F1 (test)")
    for i, r in enumerate(rows):
        ax.text(i, 0.02, f"{r['ref_positives']}", ha="center", fontsize=6, color="white")
    ax.set_title("per-observation F1 (white: positives in the references)")
    return fig


def examples_figure(images: list[np.ndarray]) -> Figure:
    """The input images of the examples shown in the report, side by side."""
    fig = Figure(figsize=(1.8 * len(images), 2.0))
    axes = fig.subplots(1, len(images))
    for i, (ax, img) in enumerate(zip(np.atleast_1d(axes), images, strict=True)):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"#{i + 1}", fontsize=8)
        ax.axis("off")
    return fig


def factuality_figure(records: list[dict], per_label: dict[str, dict[str, float]]) -> Figure:
    """SFT vs SFT + DPO: clinical F1 micro and macro per seed (left) and each observation's
    F1 averaged over the seeds (right; ``per_label`` maps stage -> observation -> F1)."""
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.4]})
    stages = (("sft", "SFT", "tab:gray"), ("preference", "SFT + DPO", "tab:blue"))
    groups = [(r["seed"], key) for key in ("ce_f1_micro", "ce_f1_macro") for r in records]
    x = np.arange(len(groups))
    for offset, (stage, label, color) in zip((-0.2, 0.2), stages, strict=True):
        values = [next(r for r in records if r["seed"] == s)[stage][k] for s, k in groups]
        left.bar(x + offset, values, 0.4, label=label, color=color)
    left.set_xticks(x, [f"{k.removeprefix('ce_f1_')}\ns{s}" for s, k in groups], fontsize=7)
    left.set_ylabel("clinical-efficacy F1 (test)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    names = list(per_label.get("sft", {}))
    x = np.arange(len(names))
    for offset, (stage, label, color) in zip((-0.2, 0.2), stages, strict=True):
        values = [per_label.get(stage, {}).get(n, float("nan")) for n in names]
        right.bar(x + offset, values, 0.4, label=label, color=color)
    right.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    right.set_ylim(0, 1)
    right.set_ylabel(f"F1, mean over {len(records)} seed(s)")
    left.set_title("micro / macro, per seed (s)", fontsize=9)
    right.set_title("per observation", fontsize=9)
    fig.suptitle("factuality preference tuning: SFT vs SFT + DPO (held-out test split)", y=1.02)
    return fig
