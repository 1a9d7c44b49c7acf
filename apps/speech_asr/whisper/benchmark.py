"""``python -m apps.speech_asr.whisper.benchmark``: the Whisper recipe over seeds, and its checks.

Three parts, each optional, written under ``--out`` (default ``runs/whisper_benchmark``):

* ``--seeds 0 1 2``: the recipe (``configs/whisper.yaml``: per-language LoRA on Whisper base,
  mixed-language batches) fitted and tested once per seed; per language, zero-shot against
  adapted WER and CER, mean ± std over the seeds (zero-shot is the same for every seed).
* ``--alone 0``: for those seeds, each tail language of the recipe trained alone (its own
  data, the same steps and batch size) against the mixed run of the same seed.
* ``--windows 30``: zero-shot Whisper tested (no fit) at other encoder windows than the
  recipe's, the cost of trimming the 30 s input in WER and CER.

``results.json`` keeps every run's ``test/*`` metrics (``--resume`` skips runs already there),
``summary.md`` the tables and the command, ``wer_per_language.png`` the seeds' bars. Extra
arguments go to every run (e.g. ``--trainer.max_steps 300``).
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

from ..benchmark import run_record
from ..train import CONFIG_DIR, main

RECIPE = CONFIG_DIR / "whisper.yaml"
UNITS = ("wer", "cer")


def run_one(
    kind: str, seed: int, out: Path, args: Sequence[str], subcommand: str | None = None
) -> dict[str, Any]:
    """One run of the recipe (fit + test, or ``subcommand`` alone, e.g. ``test``: the
    recipe's model with untrained adapters) with ``args`` after it; returns its test metrics
    and run folder."""
    root = out / kind / f"seed{seed}"
    command = [subcommand] if subcommand else []
    cli = main([*command, "--config", str(RECIPE), "--seed_everything", str(seed),
                "--trainer.default_root_dir", str(root), *args])  # fmt: skip
    return {"kind": kind, "seed": seed, **run_record(cli)}


def planned_runs(
    args: argparse.Namespace, languages: list[str]
) -> list[tuple[str, int, list[str], str | None]]:
    """(kind, seed, arguments, subcommand) of every run the options ask for, in order. An
    alone run keeps the training counts in effect and names one language."""
    runs: list[tuple[str, int, list[str], str | None]] = []
    for seed in args.seeds:
        runs.append(("mixed", seed, [], None))
    for seed in args.alone:
        for lang in languages:
            runs.append((f"alone_{lang}", seed, ["--data.languages", f"[{lang}]"], None))
    for window in args.windows:
        runs.append((f"window_{window:g}", 0, ["--data.window_seconds", str(window)], "test"))
    return runs


def _values(records: list[dict], kind: str, key: str) -> list[float]:
    return [r["metrics"].get(key, math.nan) for r in records if r["kind"] == kind]


def _cell(values: list[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def seeds_table(records: list[dict], languages: list[str], head: list[str]) -> str:
    """Per language: zero-shot and adapted WER/CER, mean ± std over the mixed runs."""
    rows = [
        "| language | role | zero-shot WER | adapted WER | zero-shot CER | adapted CER |",
        "|---|---|---|---|---|---|",
    ]
    for lang in [*languages, *head]:
        role = "tail" if lang in languages else "head (adapters off)"
        cells = [
            _cell(_values(records, "mixed", f"{variant}/{unit}/{lang}"))
            for unit in UNITS
            for variant in ("zero_shot", "adapted")
        ]
        rows.append(f"| {lang} | {role} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def acceptance(records: list[dict], languages: list[str]) -> list[str]:
    """Issue #24: adapters lower each tail language's WER and CER (mean over seeds)."""
    lines = []
    for lang in languages:
        for unit in UNITS:
            zero, adapted = (
                mean_std(_values(records, "mixed", f"{v}/{unit}/{lang}"))[0]
                for v in ("zero_shot", "adapted")
            )
            ok = adapted < zero
            lines.append(
                f"- {lang} {unit.upper()}: adapted {adapted:.3f} vs zero-shot {zero:.3f}: "
                f"{'lower' if ok else 'NOT lower'}"
            )
    unchanged = _values(records, "mixed", "head_unchanged")
    if unchanged:
        lines.append(
            f"- head languages unchanged with adapters off in {sum(v == 1.0 for v in unchanged)}"
            f" of {len(unchanged)} runs"
        )
    return lines


def alone_table(records: list[dict], languages: list[str], seeds: list[int]) -> str:
    """Adapted WER/CER per tail language: mixed batches against the language alone."""
    rows = [
        "| language | mixed WER | alone WER | mixed CER | alone CER |",
        "|---|---|---|---|---|",
    ]
    mixed = [r for r in records if r["kind"] == "mixed" and r["seed"] in seeds]
    for lang in languages:
        cells = []
        for unit in UNITS:
            cells.append(
                _cell([r["metrics"].get(f"adapted/{unit}/{lang}", math.nan) for r in mixed])
            )
            cells.append(_cell(_values(records, f"alone_{lang}", f"adapted/{unit}/{lang}")))
        rows.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def window_table(records: list[dict], languages: list[str], windows: list[str]) -> str:
    """Zero-shot WER/CER per language at each encoder window."""
    names = [w.removeprefix("window_") + " s" for w in windows]
    header = " | ".join(f"{w} WER | {w} CER" for w in names)
    rows = [f"| language | {header} |", "|---|" + "---|---|" * len(windows)]
    for lang in languages:
        cells = []
        for kind in windows:
            for unit in UNITS:
                cells.append(_cell(_values(records, kind, f"zero_shot/{unit}/{lang}")))
        rows.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def wer_figure(records: list[dict], languages: list[str], path: Path) -> Path:
    """Grouped bars: WER per language, zero-shot and adapted, error bars one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.training.report import write_figure

    figure, axis = plt.subplots(figsize=(8, 4))
    for i, variant in enumerate(("zero_shot", "adapted")):
        stats = [mean_std(_values(records, "mixed", f"{variant}/wer/{lang}")) for lang in languages]
        xs = [j + (i - 0.5) * 0.38 for j in range(len(languages))]
        label = variant.replace("_", "-")
        axis.bar(xs, [m for m, _ in stats], 0.38, yerr=[s for _, s in stats], label=label)
    axis.set_xticks(range(len(languages)), languages)
    axis.set_ylabel("test WER (beam search)")
    axis.set_title("Whisper base: zero-shot vs per-language LoRA, mean ± std over seeds")
    axis.legend()
    figure.tight_layout()
    return write_figure(figure, path)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument(
        "--alone", type=int, nargs="*", default=[],
        help="seeds at which each tail language is also trained alone",
    )  # fmt: skip
    parser.add_argument(
        "--windows", type=float, nargs="*", default=[],
        help="other encoder windows (seconds) to test zero-shot Whisper at",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/whisper_benchmark")
    parser.add_argument("--resume", action="store_true", help="keep runs in results.json")
    return parser.parse_known_args(argv)


def run(argv: Sequence[str] | None = None) -> Path:
    """Run what the options ask for; return the path of ``summary.md``."""
    import yaml

    args, extra = parse_args(argv)
    out = Path(args.out)
    languages = list(yaml.safe_load(RECIPE.read_text())["data"]["languages"])
    done: list[dict] = []
    if args.resume and (out / "results.json").is_file():
        done = json.loads((out / "results.json").read_text())
    records: list[dict] = []
    start = time.time()
    for kind, seed, run_args, subcommand in planned_runs(args, languages):
        kept = [r for r in done if (r["kind"], r["seed"]) == (kind, seed)]
        if kept:
            records.append(kept[0])
            continue
        print(f"[whisper benchmark] {kind}, seed {seed}", flush=True)
        # the run's own options last: an alone run's language wins over the extra ones
        records.append(run_one(kind, seed, out, [*extra, *run_args], subcommand))
        atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    head = next((r["head_languages"] for r in records if r["kind"] == "mixed"), [])
    lines = [
        "# Whisper base with per-language LoRA on the embedded corpus",
        "",
        "Embedded corpus (espeak-ng voices reading real words; test speakers unseen in "
        "training); WER/CER on normalised text, beam search. Recipe: "
        "`apps/speech_asr/configs/whisper.yaml`.",
    ]
    if any(r["kind"] == "mixed" for r in records):
        seeds = sorted({r["seed"] for r in records if r["kind"] == "mixed"})
        wer_figure(records, languages, out / "wer_per_language.png")
        lines += [
            "",
            f"## Zero-shot against per-language LoRA, seeds {seeds}",
            "",
            seeds_table(records, languages, head),
            "",
            "![WER per language](wer_per_language.png)",
            "",
            "## Acceptance (issue #24)",
            "",
            *acceptance(records, languages),
        ]
    if args.alone:
        lines += ["", f"## Mixed batches against each language alone, seeds {args.alone}", "",
                  alone_table(records, languages, args.alone)]  # fmt: skip
    windows = [r["kind"] for r in records if r["kind"].startswith("window_")]
    if windows:
        head = head or records[-1]["head_languages"]
        lines += ["", "## Zero-shot Whisper at each encoder window (test only, no fit)", "",
                  window_table(records, [*languages, *head], windows)]  # fmt: skip
    lines += ["", f"{len(records)} runs ({(time.time() - start) / 60:.1f} min in this invocation)."]
    return write_summary(out / "summary.md", lines, "apps.speech_asr.whisper.benchmark", argv)


if __name__ == "__main__":
    run()
