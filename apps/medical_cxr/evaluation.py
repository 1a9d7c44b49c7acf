"""Evaluation outputs of a report-generation run: files, plots and ``report.md``.

Per split and seed, ``<run_dir>/eval/<split>_seed<seed>/`` gets ``refs.txt`` and
``hyps.txt`` (one report per line, same order, study ids in ``ids.txt``), ``metrics.json``
and ``per_label.csv``. The run directory gets ``report.md`` (metrics table, per-observation
table, generated reports beside their references) and PNG plots: the training curves, the
per-observation F1 and the images of the shown examples. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write, atomic_write_text
from core.training.callbacks import append_manifest

from .labeler import CHEXPERT_LABELS, label_report, label_vector
from .metrics import precision_recall_f1

SYNTHETIC_NOTE = (
    "**Data:** the reports are real (the 3,955 IU X-ray reports shipped in the "
    "`torchxrayvision` package); the images are **synthetic** phantoms drawn from each "
    "report's labeled findings. Scores here measure the pipeline, not clinical performance."
)


def per_label_table(refs: Sequence[str], hyps: Sequence[str], uncertain_as: int) -> list[dict]:
    """Per observation: positives in references and hypotheses, precision, recall, F1."""
    true = np.array([label_vector(label_report(t), uncertain_as=uncertain_as) for t in refs])
    pred = np.array([label_vector(label_report(t), uncertain_as=uncertain_as) for t in hyps])
    rows = []
    for j, name in enumerate(CHEXPERT_LABELS):
        scores = precision_recall_f1(true[:, j : j + 1], pred[:, j : j + 1])
        rows.append(
            {
                "observation": name,
                "ref_positives": int(true[:, j].sum()),
                "hyp_positives": int(pred[:, j].sum()),
                "precision": scores["ce_precision_macro"],
                "recall": scores["ce_recall_macro"],
                "f1": scores["ce_f1_macro"],
            }
        )
    return rows


def metrics_table(metrics: dict[str, float]) -> str:
    """A two-column markdown table of the metrics, in a fixed order."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    return "\n".join(lines)


def _save_png(path: Path, fig: Any) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(run_dir: Path, out: Path) -> Path | None:
    """Train/val loss per epoch from the CSV log (``metrics.csv``), if there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = run_dir / "metrics.csv"
    if not log.is_file():
        return None
    series: dict[str, dict[int, float]] = {}
    with open(log) as f:
        for row in csv.DictReader(f):
            for key in ("train/token_loss_epoch", "val/token_loss", "train/loss_epoch", "val/loss"):
                if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
                    series.setdefault(key, {})[int(float(row["epoch"]))] = float(row[key])
    if not series:
        return None
    if "train/token_loss_epoch" in series:  # the report's cross-entropy, without aux losses
        series = {k: v for k, v in series.items() if "token_loss" in k}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("token cross-entropy")
    ax.legend()
    ax.set_title("training curves")
    _save_png(out, fig)
    return out


def plot_per_label(rows: list[dict], out: Path) -> Path:
    """Bar chart of the per-observation F1 and positive counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["observation"] for r in rows]
    x = np.arange(len(rows))
    ax.bar(x, [r["f1"] for r in rows], color="tab:blue")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("clinical F1 (test)")
    for i, r in enumerate(rows):
        ax.text(i, 0.02, f"{r['ref_positives']}", ha="center", fontsize=6, color="white")
    ax.set_title("per-observation F1 (white: positives in the references)")
    _save_png(out, fig)
    return out


def plot_factuality(records: list[dict], per_label: dict[str, dict[str, float]], out: Path) -> Path:
    """SFT vs SFT + DPO: clinical F1 micro and macro per seed (left) and each observation's
    F1 averaged over the seeds (right; ``per_label`` maps stage -> observation -> F1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2.4]}
    )
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
    _save_png(out, fig)
    return out


def plot_examples(images: list[np.ndarray], out: Path) -> Path:
    """The input images of the examples shown in the report, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(1.8 * len(images), 2.0))
    for i, (ax, img) in enumerate(zip(np.atleast_1d(axes), images, strict=True)):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"#{i + 1}", fontsize=8)
        ax.axis("off")
    _save_png(out, fig)
    return out


def write_evaluation(
    run_dir: Path,
    split: str,
    seed: int,
    records: list[dict[str, Any]],
    metrics: dict[str, float],
    uncertain_as: int = 0,
    num_examples: int = 6,
    dataset: str | None = None,
    echo: bool = True,
) -> Path:
    """Write the evaluation files, plots and ``report.md``; print the table; return its path."""
    run_dir = Path(run_dir)
    out = run_dir / "eval" / f"{split}_seed{seed}"
    refs = [r["reference"] for r in records]
    hyps = [r["hypothesis"] for r in records]
    atomic_write_text(out / "refs.txt", "".join(f"{t}\n" for t in refs))
    atomic_write_text(out / "hyps.txt", "".join(f"{t}\n" for t in hyps))
    atomic_write_text(out / "ids.txt", "".join(f"{r['study_id']}\n" for r in records))
    payload = {"split": split, "seed": seed, "n": len(records), "uncertain_as": uncertain_as}
    atomic_write_text(out / "metrics.json", json.dumps({**payload, **metrics}, indent=2) + "\n")
    rows = per_label_table(refs, hyps, uncertain_as)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "per_label.csv", buf.getvalue())

    plots = {"curves": plot_curves(run_dir, run_dir / "curves.png")}
    plots["per_label"] = plot_per_label(rows, run_dir / f"per_label_{split}.png")
    # Examples: the first few studies with a positive finding in the reference, then others.
    order = sorted(range(len(records)), key=lambda i: "no acute" in refs[i] or len(refs[i]) < 60)
    shown = order[: max(0, num_examples)]
    if shown and all("image" in records[i] for i in shown):
        plots["examples"] = plot_examples(
            [records[i]["image"] for i in shown], run_dir / f"examples_{split}.png"
        )

    lines = [f"# Chest X-ray report generation: {split} split, seed {seed}", ""]
    if dataset == "embedded":
        lines += [SYNTHETIC_NOTE, ""]
    lines += [f"{len(records)} studies; uncertain labels count as {uncertain_as}.", ""]
    lines += ["## Metrics", "", metrics_table(metrics), ""]
    lines += [
        "## Per observation",
        "",
        "| observation | ref + | hyp + | P | R | F1 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['observation']} | {r['ref_positives']} | {r['hyp_positives']} | "
        f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |"
        for r in rows
    ]
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({p.name})" for name, p in plots.items() if p is not None]
    lines += ["", "## Generated reports beside their references", ""]
    for k, i in enumerate(shown):
        lines += [
            f"**#{k + 1} {records[i]['study_id']}**",
            "",
            f"- reference: {refs[i]}",
            f"- generated: {hyps[i]}",
            "",
        ]
    lines += [f"Files: `{out.relative_to(run_dir)}/` (refs.txt, hyps.txt, metrics.json).", ""]
    report = atomic_write_text(run_dir / "report.md", "\n".join(lines))
    append_manifest(run_dir, "evaluation", out, split=split, seed=seed)
    append_manifest(run_dir, "report", report, split=split, seed=seed)
    if echo:
        print(f"\n{split} metrics (seed {seed}, {len(records)} studies):")
        print(metrics_table(metrics))
        print(f"report: {report.resolve()}\n")
    return report
