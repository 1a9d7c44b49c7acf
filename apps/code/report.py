"""The code app's test results and how ``report.md`` shows them.

At the end of ``test`` :class:`apps.code.module.CodeModule` gathers one ``results`` dict
(also written as ``eval.json``)::

    {"task_loss": {task: {"base": ..., "tuned": ...}},
     "forgetting": {"base_ppl": ..., "tuned_ppl": ..., "ratio": ...},
     "base": {"folder": ..., "params": ..., "tokens_seen": ..., ...},
     "fim": {"tuned": {...}, "base": {...}}, "humaneval": {"tuned": {...}, "base": {...}},
     "doctests": {"tuned": {...}, "base": {...}}}

(each part only where it was measured); :func:`report_sections` turns it into the
sections of the run's :class:`core.training.report.TestReport`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .metrics import perplexity

#: Title of the code app's ``report.md``.
REPORT_TITLE = "Code app: evaluation"
#: Keys of ``pretrain.json`` shown in the report's base section.
BASE_STATS = ("params", "tokens_seen", "held_out_loss", "seconds")


def forgetting(base_loss: float, tuned_loss: float) -> dict[str, float]:
    """Perplexity of plain held-out code before and after fine-tuning, and their ratio; the
    base's perplexity and the ratio are ``nan`` when the base was not scored (a benchmark
    scores it once, with its first variant), not ``inf``, which would read as a broken base."""
    measured = math.isfinite(base_loss)
    before, after = perplexity(base_loss) if measured else math.nan, perplexity(tuned_loss)
    ratio = after / before if measured else math.nan
    return {"base_ppl": before, "tuned_ppl": after, "ratio": ratio}


def base_summary(folder: str | Path) -> dict[str, Any] | None:
    """The embedded base's pre-training figures (its ``pretrain.json``); ``None`` for a base
    that was not pre-trained here (``model.pretrained``)."""
    stats_file = Path(folder) / "pretrain.json"
    if not stats_file.is_file():
        return None
    stats = json.loads(stats_file.read_text())
    return {"folder": str(folder), **{k: stats[k] for k in BASE_STATS}}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def report_sections(results: dict[str, Any]) -> dict[str, str]:
    """``{heading: markdown}`` of the evaluation tables of one run, in report order."""
    sections: dict[str, str] = {}
    base = results.get("base")
    if base:
        sections["Base model"] = (
            f"Base: `{base['folder']}` ({base['params']:,} parameters, pre-trained on "
            f"{base['tokens_seen']:,} tokens in {base['seconds']:.0f} s; held-out loss "
            f"{base['held_out_loss']:.3f} nats/token)."
        )
    tasks = results.get("task_loss", {})
    if tasks:
        lines = ["| task | base | fine-tuned | change |", "|---|---|---|---|"]
        for task, row in tasks.items():
            before, after = row.get("base", math.nan), row["tuned"]
            change = after - before if math.isfinite(before) else math.nan
            lines.append(f"| {task} | {_fmt(before)} | {_fmt(after)} | {_fmt(change)} |")
        sections["Per-task loss on held-out modules (test split)"] = "\n".join(lines)
    lost = results.get("forgetting")
    if lost:
        sections["Forgetting: perplexity on held-out plain library code"] = "\n".join(
            [
                "| base | fine-tuned | ratio |",
                "|---|---|---|",
                f"| {_fmt(lost['base_ppl'])} | {_fmt(lost['tuned_ppl'])} | {_fmt(lost['ratio'])} |",
            ]
        )
    for name in ("fim", "humaneval", "doctests"):
        section = results.get(name)
        if not section:
            continue
        lines = ["| metric | base | fine-tuned |", "|---|---|---|"]
        for key, value in section.get("tuned", {}).items():
            if isinstance(value, int | float):
                before = section.get("base", {}).get(key, math.nan)
                lines.append(f"| {key} | {_fmt(before)} | {_fmt(value)} |")
        sections[name] = "\n".join(lines)
    return sections
