"""Base vs fine-tuned on all of HumanEval, held-out doctests and FIM; LoRA vs DoRA vs per-task.

    python -m apps.code.benchmark [--variants lora dora per_task] [--humaneval 164]
        [--doctests -1] [--samples 10 --temperature 0.8] [--out runs/code_benchmark] [--resume]
        [any train option, e.g. --trainer.max_epochs 2]

Each variant fine-tunes the default model (SmolLM2-135M-Instruct unless ``--model.pretrained``
says otherwise) with the default recipe plus its own config (``lora``: the default LoRA;
``dora``: ``configs/dora.yaml``; ``per_task``: one LoRA per task in an ``AdapterBank``,
``configs/per_task_adapters.yaml``), then scores the fitted model: HumanEval pass@1
(greedy; sampled pass@k with ``--samples N``), the held-out standard-library doctests
(:mod:`apps.code.doctest_bench`), FIM exact match and the per-task validation losses. The
base model (adapters off) is scored once, with the first variant. Writes
``<out>/results.json`` (every figure, per problem included), ``summary.md`` (the table and
the command) and ``summary.png`` (the plot); ``--resume`` keeps variants already in
``results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text
from core.benchmarking import write_summary

from .train import DEFAULT_CONFIG, main

CONFIGS = Path(__file__).parent / "configs"
#: Each variant's recipe, laid over the default config.
VARIANTS = {
    "lora": [],
    "dora": [str(CONFIGS / "dora.yaml")],
    "per_task": [str(CONFIGS / "per_task_adapters.yaml")],
}
#: Result rows shown in the table and the plot: (section, key, label).
FIGURES = (
    ("humaneval", "pass@1", "HumanEval pass@1"),
    ("doctests", "pass@1", "held-out doctests pass@1"),
    ("fim", "exact_match", "FIM exact match"),
)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--humaneval", type=int, default=164, help="HumanEval problems (first N)")
    parser.add_argument(
        "--doctests", type=int, default=-1, help="held-out doctest problems (-1: all, 0: off)"
    )
    parser.add_argument("--fim", type=int, default=40, help="held-out FIM examples (0: off)")
    parser.add_argument(
        "--samples", type=int, default=1,
        help="samples per HumanEval problem (1: greedy pass@1; more: sampled pass@k)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.8, help="with --samples > 1")
    parser.add_argument("--out", default="runs/code_benchmark")
    parser.add_argument("--resume", action="store_true", help="keep variants already measured")
    return parser.parse_known_args(argv)


def evaluation_args(args: argparse.Namespace, compare_base: bool) -> list[str]:
    """The ``--model.evaluation.*`` options of one variant's run."""
    sampled = args.samples > 1
    values = {
        "humaneval_problems": args.humaneval,
        "samples_per_problem": args.samples,
        "temperature": args.temperature if sampled else 0.0,
        "doctest_problems": args.doctests,
        "fim_examples": args.fim,
        "compare_base": str(compare_base).lower(),
    }
    return [x for k, v in values.items() for x in (f"--model.evaluation.{k}", str(v))]


def run_variant(
    name: str, args: argparse.Namespace, extra: Sequence[str], compare_base: bool
) -> dict[str, Any]:
    """Fit one variant, then test it (losses and every generation metric)."""
    root = Path(args.out) / name
    start = time.time()
    cli = main(
        [
            "fit",
            "--config", str(DEFAULT_CONFIG),
            *(x for cfg in VARIANTS[name] for x in ("--config", cfg)),
            "--trainer.default_root_dir", str(root),
            *extra,  # before the benchmark's own evaluation options, which win
            *evaluation_args(args, compare_base),
        ]
    )  # fmt: skip
    fit_seconds = time.time() - start
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    results = dict(cli.model.eval_results)
    results.update(
        variant=name,
        fit_seconds=fit_seconds,
        test_seconds=time.time() - start - fit_seconds,
        trainable_parameters=sum(p.numel() for _, p in cli.model.optimizer_parameters()),
        run_dir=str(cli.trainer.log_dir),
    )
    return results


def _value(result: dict[str, Any], section: str, key: str, who: str) -> float | None:
    value = result.get(section, {}).get(who, {}).get(key)
    return float(value) if value is not None else None


def _count(result: dict[str, Any], section: str, who: str) -> str:
    part = result.get(section, {}).get(who, {})
    solved = part.get("solved", part.get("passed"))
    return f" ({solved}/{part['problems']})" if solved is not None and "problems" in part else ""


def rows(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], str]]:
    """``(label, result, who)`` rows: the base model (from the first result that has it),
    then each variant."""
    out = []
    base = next((r for r in results if r.get("humaneval", {}).get("base")), None)
    if base is not None:
        out.append(("base (no fine-tuning)", base, "base"))
    out += [(r["variant"], r, "tuned") for r in results]
    return out


def summary_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: every figure per row, with problems solved, and the mean task loss."""
    head = "| model | " + " | ".join(label for _, _, label in FIGURES)
    lines = [head + " | mean test task loss | fit min |", "|---" * (len(FIGURES) + 3) + "|"]
    for label, result, who in rows(results):
        cells = []
        for section, key, _ in FIGURES:
            value = _value(result, section, key, who)
            cell = "-" if value is None else f"{value:.3f}{_count(result, section, who)}"
            cells.append(cell)
        losses = [v[who] for v in result.get("task_loss", {}).values() if who in v]
        loss = f"{sum(losses) / len(losses):.3f}" if losses else "-"
        minutes = "-" if who == "base" else f"{result['fit_seconds'] / 60:.1f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {loss} | {minutes} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: each figure for the base and every variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = rows(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(FIGURES))
    for i, (label, result, who) in enumerate(table):
        values = [_value(result, s, k, who) or 0.0 for s, k, _ in FIGURES]
        bars = ax.bar(x + i * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x + width * (len(table) - 1) / 2, [label for _, _, label in FIGURES])
    ax.set_ylabel("share of problems")
    ax.set_title("Code app: base vs fine-tuned (greedy)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def run(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; return the path of ``summary.md``."""
    args, extra = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    if args.resume and (out / "results.json").is_file():
        done = json.loads((out / "results.json").read_text())
    results: list[dict[str, Any]] = []
    start = time.time()
    for name in args.variants:
        kept = [r for r in done if r["variant"] == name]
        if kept:
            results.append(kept[0])
            continue
        print(f"[benchmark] {name}", flush=True)
        has_base = any(r.get("humaneval", {}).get("base") for r in results)
        results.append(run_variant(name, args, extra, compare_base=not has_base))
        atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    plot(results, out / "summary.png")
    minutes = (time.time() - start) / 60
    lines = [
        "# Code app: base vs fine-tuned, adapter variants",
        "",
        "Greedy decoding; HumanEval's problems run in the sandbox with their tests; held-out "
        "doctests: standard-library functions never trained on, their own doctests as tests; "
        "FIM exact match on held-out functions. (solved/problems) after each share.",
        "",
        summary_table(results),
        "",
        "![figures](summary.png)",
        "",
        f"{len(results)} variants ({minutes:.1f} min in this invocation).",
    ]
    return write_summary(out / "summary.md", lines, "apps.code.benchmark", argv)


if __name__ == "__main__":
    run()
