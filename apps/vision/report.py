"""What a vision run's ``report.md`` says after ``test``: the ID / OOD table and two plots.

:func:`add_robustness` adds the sections and figures of a
:class:`apps.vision.robust.RobustnessResult` to the core's
:class:`core.training.report.TestReport` (which the core's ``ReportWriter`` writes):

- "ID / OOD accuracy": zero-shot, the fine-tuned model and WiSE-FT's choice, on ID test,
  the mean over the shifts and each shift, with ECE (:func:`format_table`);
- "WiSE-FT": ID validation, ID test and OOD accuracy at every alpha;
- ``frontier.png`` (ID vs mean OOD with the WiSE-FT curve) and ``reliability.png``
  (reliability diagrams on ID test of the zero-shot and the fine-tuned model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.training.report import TestReport

from .plots import frontier_figure, reliability_figure
from .robust import RobustnessResult

__all__ = ["add_robustness", "format_table", "wiseft_table"]


def format_table(rows: Sequence[dict[str, Any]], shifts: Sequence[str]) -> str:
    """A Markdown table: model, ID, OOD average, each shift, ECE (ID / OOD)."""
    head = ["model", "ID", "OOD avg", *shifts, "ECE ID", "ECE OOD"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], f"{r['id']:.3f}", f"{r['ood']:.3f}"]
        cells += [f"{r['acc'][s]:.3f}" for s in shifts]
        cells += [f"{r['ece_id']:.3f}", f"{r['ece_ood']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wiseft_table(curve: Sequence[dict[str, Any]], best_alpha: float | None) -> str:
    """A Markdown table of the WiSE-FT sweep: alpha, ID val, ID test, OOD (chosen marked)."""
    lines = ["| alpha | ID val | ID | OOD avg |", "|---|---|---|---|"]
    for r in curve:
        mark = " (chosen)" if r["alpha"] == best_alpha else ""
        lines.append(
            f"| {r['alpha']:.1f}{mark} | {r['id_val']:.3f} | {r['id']:.3f} | {r['ood']:.3f} |"
        )
    return "\n".join(lines)


def add_robustness(report: TestReport, result: RobustnessResult) -> TestReport:
    """Add the ID / OOD table, the WiSE-FT sweep and the two figures to ``report``."""
    table = format_table(result.summary_rows(), result.shifts)
    note = f"ID = ID test; OOD avg = mean over {len(result.shifts)} shifts."
    report.sections["ID / OOD accuracy"] = f"{table}\n\n{note}\n\n![frontier](frontier.png)"
    if result.curve:
        report.sections["WiSE-FT"] = (
            f"`core.merging.wise_ft` between the zero-shot and the {result.method} weights; "
            f"alpha chosen on ID validation accuracy: {result.best_alpha:.1f}.\n\n"
            + wiseft_table(result.curve, result.best_alpha)
        )
    report.sections["Calibration"] = "![reliability](reliability.png)"
    points = [{"name": r["name"], "id": r["id"], "ood": r["ood"]} for r in result.rows[:2]]
    report.figures["frontier"] = frontier_figure(points, curve=result.curve)
    report.figures["reliability"] = reliability_figure(result.calibration)
    return report
