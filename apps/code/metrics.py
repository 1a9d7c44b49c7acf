"""Metrics of the code app: exact per-task token means over an epoch, perplexity, the report.

Per-batch means averaged over batches are not the token mean of the epoch when batches
hold different numbers of a task's tokens; :class:`TaskLossMeter` keeps sums and counts so
the epoch figure is the exact mean over every target token of the task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .losses import per_task_means


class TaskLossMeter:
    """Sums and counts of per-token losses by task name, over any number of batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def update(self, token_losses: Tensor, task_ids: Tensor, task_names: Sequence[str]) -> None:
        """Add one batch (``task_ids`` index ``task_names``; ``-1`` is skipped)."""
        sums, counts, _ = per_task_means(token_losses.detach(), task_ids, len(task_names))
        for name, s, c in zip(task_names, sums.tolist(), counts.tolist(), strict=True):
            if c > 0:
                self.sums[name] = self.sums.get(name, 0.0) + s
                self.counts[name] = self.counts.get(name, 0.0) + c

    def means(self) -> dict[str, float]:
        """Token-mean loss per task seen."""
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}

    def reset(self) -> None:
        """Forget everything (start of an epoch)."""
        self.sums.clear()
        self.counts.clear()


def perplexity(mean_token_loss: float) -> float:
    """``exp(mean negative log-likelihood per token)``."""
    return math.exp(mean_token_loss) if math.isfinite(mean_token_loss) else math.inf


def task_vector(means: dict[str, float], task_names: Sequence[str]) -> Tensor:
    """Per-task losses as a tensor in ``task_names`` order (``nan`` for absent tasks)."""
    return torch.tensor([means.get(t, math.nan) for t in task_names], dtype=torch.float64)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def report_markdown(results: dict[str, Any]) -> str:
    """The evaluation table of one run as Markdown (what ``report.md`` holds)."""
    lines = ["# Code app: evaluation", ""]
    base = results.get("base")
    if base:
        lines += [f"Base: `{base['folder']}` ({base['params']:,} parameters, pre-trained on "
                  f"{base['tokens_seen']:,} tokens in {base['seconds']:.0f} s; held-out loss "
                  f"{base['held_out_loss']:.3f} nats/token).", ""]  # fmt: skip
    tasks = results.get("task_loss", {})
    if tasks:
        lines += ["## Per-task loss on held-out modules (test split)", "",
                  "| task | base | fine-tuned | change |", "|---|---|---|---|"]  # fmt: skip
        for task, row in tasks.items():
            before, after = row.get("base", math.nan), row["tuned"]
            change = after - before if math.isfinite(before) else math.nan
            lines.append(f"| {task} | {_fmt(before)} | {_fmt(after)} | {_fmt(change)} |")
        lines.append("")
    forgetting = results.get("forgetting")
    if forgetting:
        lines += ["## Forgetting: perplexity on held-out plain library code", "",
                  "| base | fine-tuned | ratio |", "|---|---|---|",
                  f"| {_fmt(forgetting['base_ppl'])} | {_fmt(forgetting['tuned_ppl'])} | "
                  f"{_fmt(forgetting['ratio'])} |", ""]  # fmt: skip
    for name in ("fim", "humaneval"):
        section = results.get(name)
        if not section:
            continue
        lines += [f"## {name}", "", "| metric | base | fine-tuned |", "|---|---|---|"]
        for key, value in section.get("tuned", {}).items():
            if isinstance(value, int | float):
                base = section.get("base", {}).get(key, math.nan)
                lines.append(f"| {key} | {_fmt(base)} | {_fmt(value)} |")
        lines.append("")
    return "\n".join(lines)
