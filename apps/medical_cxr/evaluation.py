"""Evaluation outputs of a report-generation run: files, figures and the ``report.md`` text.

An :class:`Evaluation` holds one test's generated reports and scores. Per split and seed,
:func:`write_eval_files` writes ``<run_dir>/eval/<split>_seed<seed>/``:
``refs.txt`` and ``hyps.txt`` (one report per line, same order, study ids in ``ids.txt``),
``metrics.json`` and ``per_label.csv``, each atomically. :func:`evaluation_report` describes
``report.md`` (metrics table, per-observation table, generated reports beside their
references) and its figures (training curves, per-observation F1, the examples' images) as
a :class:`~core.training.report.TestReport`, which ``run_cli``'s ``ReportWriter`` writes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from core.atomic import atomic_write_text
from core.training.callbacks import append_manifest
from core.training.report import TestReport

from .labeler import CHEXPERT_LABELS, label_report, label_vector
from .metrics import precision_recall_f1
from .plots import curves_figure, examples_figure, per_label_figure

SYNTHETIC_NOTE = (
    "**Data:** the reports are real (the 3,955 IU X-ray reports shipped in the "
    "`torchxrayvision` package); the images are **synthetic** phantoms drawn from each "
    "report's labeled findings. Scores here measure the pipeline, not clinical performance."
)


@dataclass
class IntroReport(TestReport):
    """A :class:`TestReport` with a paragraph between its title and its first section.

    (``TestReport`` has no such paragraph; this keeps the report's data note and study count
    where they stood before reports were written by ``ReportWriter``.)
    """

    intro: str = ""

    def markdown(self) -> str:
        """The report's text, with :attr:`intro` right below the title."""
        text = super().markdown()
        if not self.intro:
            return text
        title, _, rest = text.partition("\n\n")
        return f"{title}\n\n{self.intro.rstrip()}\n\n{rest}"


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
    """A two-column markdown table of the metrics, in their given order (NLG, then CE)."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    return "\n".join(lines)


@dataclass
class Evaluation:
    """One test of a report generator: the generated reports and their scores.

    Args:
        run_dir: The run directory (its ``metrics.csv`` gives the training curves).
        split: Names the test (``"test"``) and, with ``seed``, its folder (:attr:`folder`).
        seed: The run's seed.
        records: Per study ``study_id``, ``reference``, ``hypothesis`` and optionally
            ``image`` (shown for the examples).
        metrics: NLG and clinical-efficacy metrics, in the order of the report's table.
        uncertain_as: How uncertain labels counted.
    """

    run_dir: Path
    split: str
    seed: int
    records: list[dict[str, Any]]
    metrics: dict[str, float]
    uncertain_as: int = 0

    @property
    def folder(self) -> Path:
        """``<run_dir>/eval/<split>_seed<seed>``: where :func:`write_eval_files` writes."""
        return Path(self.run_dir) / "eval" / f"{self.split}_seed{self.seed}"

    @property
    def refs(self) -> list[str]:
        """The reference reports, in test order."""
        return [r["reference"] for r in self.records]

    @property
    def hyps(self) -> list[str]:
        """The generated reports, in test order."""
        return [r["hypothesis"] for r in self.records]

    @cached_property
    def per_label(self) -> list[dict]:
        """:func:`per_label_table` of the references and generated reports."""
        return per_label_table(self.refs, self.hyps, self.uncertain_as)


def write_eval_files(ev: Evaluation) -> Path:
    """Write the references, generated reports, ids, metrics and per-observation table of a
    test into :attr:`Evaluation.folder` (each file atomically); return the folder."""
    out = ev.folder
    atomic_write_text(out / "refs.txt", "".join(f"{t}\n" for t in ev.refs))
    atomic_write_text(out / "hyps.txt", "".join(f"{t}\n" for t in ev.hyps))
    atomic_write_text(out / "ids.txt", "".join(f"{r['study_id']}\n" for r in ev.records))
    payload = {"split": ev.split, "seed": ev.seed, "n": len(ev.records)}
    payload["distinct_reports"] = len(set(ev.hyps))
    payload["uncertain_as"] = ev.uncertain_as
    text = json.dumps({**payload, **ev.metrics}, indent=2) + "\n"
    atomic_write_text(out / "metrics.json", text)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ev.per_label[0]))
    writer.writeheader()
    writer.writerows(ev.per_label)
    atomic_write_text(out / "per_label.csv", buf.getvalue())
    append_manifest(Path(ev.run_dir), "evaluation", out, split=ev.split, seed=ev.seed)
    return out


def example_order(refs: Sequence[str]) -> list[int]:
    """Indices of the reports to show, abnormal studies first: one study per finding in
    turn (the first reference positive for it; findings in :data:`CHEXPERT_LABELS` order,
    "No Finding" last), then the remaining studies in test order."""
    labels = [label_report(text) for text in refs]
    chosen: list[int] = []
    for name in [*CHEXPERT_LABELS[1:], CHEXPERT_LABELS[0]]:
        first = next(
            (i for i, lab in enumerate(labels) if lab.get(name) == 1 and i not in chosen), None
        )
        if first is not None:
            chosen.append(first)
    return chosen + [i for i in range(len(refs)) if i not in set(chosen)]


def evaluation_report(
    ev: Evaluation, num_examples: int = 6, source: str | None = None
) -> IntroReport:
    """``report.md`` of a report-generation test: the text and figures (not yet written).

    Args:
        ev: The test.
        num_examples: Generated reports shown beside their references.
        source: ``data.source``; ``"embedded"`` adds the note that the images are synthetic.
    """
    refs, hyps, records, split = ev.refs, ev.hyps, ev.records, ev.split
    figures: dict[str, Figure] = {}
    curves = curves_figure(Path(ev.run_dir) / "metrics.csv")
    if curves is not None:
        figures["curves"] = curves
    figures[f"per_label_{split}"] = per_label_figure(ev.per_label)
    shown = example_order(refs)[: max(0, num_examples)]
    if shown and all("image" in records[i] for i in shown):
        figures[f"examples_{split}"] = examples_figure([records[i]["image"] for i in shown])
    intro = [SYNTHETIC_NOTE] if source == "embedded" else []
    intro.append(
        f"{len(records)} studies, {len(set(hyps))} distinct generated reports; uncertain "
        f"labels count as {ev.uncertain_as}."
    )
    per_label = [
        "| observation | ref + | hyp + | P | R | F1 |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['observation']} | {r['ref_positives']} | {r['hyp_positives']} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |"
            for r in ev.per_label
        ),
    ]
    examples = []
    for k, i in enumerate(shown):
        examples += [
            f"**#{k + 1} {records[i]['study_id']}**",
            "",
            f"- reference: {refs[i]}",
            f"- generated: {hyps[i]}",
            "",
        ]
    files = ev.folder.relative_to(ev.run_dir)
    examples.append(f"Files: `{files}/` (refs.txt, hyps.txt, metrics.json).")
    return IntroReport(
        title=f"Chest X-ray report generation: {split} split, seed {ev.seed}",
        intro="\n\n".join(intro),
        sections={
            "Metrics": metrics_table(ev.metrics),
            "Per observation": "\n".join(per_label),
            "Plots": "\n".join(f"![{n.removesuffix('_' + split)}]({n}.png)" for n in figures),
            "Generated reports beside their references": "\n".join(examples),
        },
        figures=figures,
    )
