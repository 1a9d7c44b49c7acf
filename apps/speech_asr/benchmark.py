"""``python -m apps.speech_asr.benchmark``: the paper's comparison over seeds.

Runs, for each seed (``seed_everything``: adapter initialisation, batch order, SpecAugment;
the embedded corpus and the cached foundation stay fixed), the default recipe (one adapter per
tail language; its test also scores the frozen foundation and the best-step assembled bank),
full fine-tuning and one shared adapter, and writes under ``--out`` (default
``runs/speech_asr_benchmark``):

* ``results.json``: one record per (recipe, seed): every ``test/*`` metric and the run folder;
* ``summary.md``: per tail language, CER mean ± std over the seeds for the foundation, the
  adapters (last step and assembled), the shared adapter and full fine-tuning, the relative
  reduction against the foundation and the gap to full fine-tuning; head-language CER and
  forgetting per method; assembly against last step per seed; the acceptance checks;
* ``cer_per_language.png``: the CER table as grouped bars.

Extra arguments go to every run's command line (e.g. ``--trainer.max_steps 300``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text
from core.benchmarking import mean_std, write_summary

from .train import CONFIG_DIR, main

#: name -> recipe file (None: the default config alone).
RECIPES: dict[str, str | None] = {
    "adapters": None,
    "shared_adapter": "shared_adapter.yaml",
    "full_finetune": "full_finetune.yaml",
}
#: Rows of the CER table: (label, recipe, metric prefix).
METHODS = [
    ("frozen foundation", "adapters", "foundation/"),
    ("per-language adapters (last step)", "adapters", ""),
    ("per-language adapters (assembled)", "adapters", "assembled/"),
    ("shared adapter", "shared_adapter", ""),
    ("full fine-tuning", "full_finetune", ""),
]
#: Acceptance (issue #21): relative CER reduction per tail language, gap to full FT.
MIN_REDUCTION, MAX_GAP = 0.25, 0.04


def run_one(recipe: str, seed: int, out: Path, extra: Sequence[str]) -> dict[str, Any]:
    """Fit and test one recipe with one seed; return its test metrics and run folder."""
    config = RECIPES[recipe]
    args = ["--config", str(CONFIG_DIR / config)] if config else []
    root = out / recipe / f"seed{seed}"
    cli = main([*args, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root),
                *extra])  # fmt: skip
    return {"recipe": recipe, "seed": seed, **run_record(cli)}


def test_metrics_of(run_dir: str | Path) -> dict[str, float]:
    """A finished run's test metrics (``metrics.json``), without the ``test/`` prefix."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())["test"]
    return {k.removeprefix("test/"): v for k, v in metrics.items()}


def run_record(cli: Any) -> dict[str, Any]:
    """What a benchmark keeps of a finished run: its languages, test metrics and folder."""
    run_dir = Path(cli.trainer.log_dir)
    return {
        "languages": list(cli.datamodule.languages),
        "head_languages": list(cli.datamodule.head_languages),
        "metrics": test_metrics_of(run_dir),
        "run_dir": str(run_dir),
    }


def _values(records: list[dict], recipe: str, key: str) -> list[float]:
    return [r["metrics"].get(key, math.nan) for r in records if r["recipe"] == recipe]


def _cell(values: list[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def cer_table(records: list[dict], languages: list[str]) -> str:
    """CER per tail language (mean ± std over seeds) for every method, and the average."""
    header = "| method | " + " | ".join(languages) + " | tail mean |"
    rows = [header, "|---" * (len(languages) + 2) + "|"]
    for label, recipe, prefix in METHODS:
        cells = [_cell(_values(records, recipe, f"{prefix}cer/{lang}")) for lang in languages]
        cells.append(_cell(_values(records, recipe, f"{prefix}cer_tail")))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def head_table(records: list[dict]) -> str:
    """Head-language CER, forgetting and trainable parameters per recipe."""
    rows = [
        "| recipe | head CER | foundation head CER | forgetting | trainable parameters |",
        "|---|---|---|---|---|",
    ]
    for recipe in RECIPES:
        if not any(r["recipe"] == recipe for r in records):
            continue
        trainable = _values(records, recipe, "parameters/trainable")
        rows.append(
            f"| {recipe} | {_cell(_values(records, recipe, 'cer_head'))} | "
            f"{_cell(_values(records, recipe, 'foundation/cer_head'))} | "
            f"{_cell(_values(records, recipe, 'forgetting_head'), 4)} | "
            f"{int(trainable[0]):,} |"
        )
    return "\n".join(rows)


def assembly_table(records: list[dict]) -> str:
    """Tail-mean CER of the assembled bank against the last step, per seed."""
    rows = ["| seed | last step | assembled | difference |", "|---|---|---|---|"]
    for r in (r for r in records if r["recipe"] == "adapters"):
        last, best = r["metrics"].get("cer_tail"), r["metrics"].get("assembled/cer_tail")
        if last is None or best is None:
            continue
        rows.append(f"| {r['seed']} | {last:.4f} | {best:.4f} | {best - last:+.4f} |")
    return "\n".join(rows)


def acceptance(records: list[dict], languages: list[str]) -> list[str]:
    """The issue's acceptance checks, each with its measured numbers and PASS/FAIL."""
    lines = []
    for lang in languages:
        base = mean_std(_values(records, "adapters", f"foundation/cer/{lang}"))[0]
        tuned = mean_std(_values(records, "adapters", f"cer/{lang}"))[0]
        full = mean_std(_values(records, "full_finetune", f"cer/{lang}"))[0]
        reduction = (base - tuned) / base if base > 0 else math.nan
        gap = tuned - full
        ok = reduction >= MIN_REDUCTION and gap <= MAX_GAP
        lines.append(
            f"- {lang}: CER {base:.3f} -> {tuned:.3f} ({100 * reduction:.1f}% reduction, "
            f"need >= {100 * MIN_REDUCTION:.0f}%); full fine-tuning {full:.3f} (gap "
            f"{gap:+.3f}, need <= {MAX_GAP}): {'PASS' if ok else 'FAIL'}"
        )
    return lines


def cer_figure(records: list[dict], languages: list[str], path: Path) -> Path:
    """Grouped bars: CER per tail language per method, error bars one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.training.report import write_figure

    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(METHODS)
    for i, (label, recipe, prefix) in enumerate(METHODS):
        stats = [mean_std(_values(records, recipe, f"{prefix}cer/{lang}")) for lang in languages]
        xs = [j + (i - (len(METHODS) - 1) / 2) * width for j in range(len(languages))]
        axis.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=label)
    axis.set_xticks(range(len(languages)), languages)
    axis.set_ylabel("test CER (streaming)")
    axis.set_title("Tail-language CER, mean ± std over seeds")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return write_figure(figure, path)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", default="runs/speech_asr_benchmark")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the runs already in <out>/results.json (same recipe and seed)",
    )  # fmt: skip
    return parser.parse_known_args(argv)


def run(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; return the path of ``summary.md``."""
    args, extra = parse_args(argv)
    out = Path(args.out)
    done: list[dict] = []
    if args.resume and (out / "results.json").is_file():
        done = json.loads((out / "results.json").read_text())
    records: list[dict] = []
    start = time.time()
    for recipe in args.recipes:
        for seed in args.seeds:
            kept = [r for r in done if (r["recipe"], r["seed"]) == (recipe, seed)]
            if kept:
                records.append(kept[0])
                continue
            print(f"[benchmark] {recipe}, seed {seed}", flush=True)
            records.append(run_one(recipe, seed, out, extra))
            atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    # Kept runs after the last new one are in the file too.
    atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    languages = records[0]["languages"]
    cer_figure(records, languages, out / "cer_per_language.png")
    minutes = (time.time() - start) / 60
    lines = [
        "# Streaming tail-language ASR: per-language adapters vs full fine-tuning",
        "",
        "Embedded corpus (espeak-ng voices reading real words; test speakers unseen in "
        "training), one cached foundation pre-trained on the head languages; test CER of "
        f"streaming decoding, mean ± std over seeds {args.seeds}.",
        "",
        "## CER per tail language",
        "",
        cer_table(records, languages),
        "",
        "![CER per language](cer_per_language.png)",
        "",
        "## Head languages (forgetting) and parameters",
        "",
        head_table(records),
        "",
        "## Best-checkpoint assembly against the last step",
        "",
        assembly_table(records),
        "",
        "## Acceptance (issue #21)",
        "",
        *acceptance(records, languages),
        "",
        f"{len(records)} runs ({minutes:.1f} min in this invocation).",
    ]
    return write_summary(out / "summary.md", lines, "apps.speech_asr.benchmark", argv)


if __name__ == "__main__":
    run()
