"""The merging experiment runs end to end (shortened) and its merges help both tasks."""

from __future__ import annotations

from pathlib import Path

from core.merging.experiment import TASKS, markdown_table, run_experiment, summary_table


def test_experiment_end_to_end(tmp_path: Path) -> None:
    results = run_experiment(tmp_path, seed=0, epochs=10, log=lambda msg: None)
    rows = {r["model"]: r for r in results["rows"]}
    task_a, task_b = TASKS
    base, ft_a, ft_b = (
        rows["base (pre-trained)"],
        rows["LoRA fine-tuned on A"],
        rows["LoRA fine-tuned on B"],
    )
    assert ft_a[task_a] > base[task_a] and ft_b[task_b] > base[task_b]  # fine-tuning helps
    assert ft_a[task_b] < base[task_b] and ft_b[task_a] < base[task_a]  # ... and forgets
    ta = rows["task arithmetic"]
    assert ta["mean"] > max(ft_a["mean"], ft_b["mean"])  # the merge serves both tasks
    assert results["cli_max_abs_diff"] == 0.0  # CLI on disk == in-memory merge
    assert (tmp_path / "results.json").is_file()
    assert (tmp_path / "merged_ties" / "merge_manifest.json").is_file()
    assert "| task arithmetic |" in markdown_table(results)
    assert "±" in summary_table([results, results])
