"""``python -m apps.medical_cxr.factuality``: does preference tuning make reports more factual?

Per seed: fit the SFT report generator (``configs/default.yaml``) and test it, then
preference-tune it (``configs/preference.yaml``: DPO with LoRA on the decoder, pairs ranked by
clinical-efficacy F1) and test again on the same held-out split with the same decoding.
Writes ``comparison.json``, ``comparison.md`` (clinical efficacy and NLG metrics, SFT vs SFT +
preference tuning, per seed and mean ± std) and ``comparison.png`` (the same as bars, and
each observation's F1) under ``--out`` (default ``runs/medical_cxr_factuality``).

``--sft-args`` / ``--pref-args`` pass extra options to the two stages, e.g.
``--pref-args "--model.init_args.beta 0.2"``; ``--sft-from <earlier --out>`` reuses that
comparison's SFT runs and runs only the preference stage (DPO options side by side on the
same SFT models).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from core.atomic import atomic_write_text
from core.training.report import write_figure

from .benchmark import mean_std, write_summary
from .plots import factuality_figure
from .train import DEFAULT_CONFIG, main

PREFERENCE = DEFAULT_CONFIG.parent / "preference.yaml"
KEYS = (
    "ce_f1_micro",
    "ce_f1_macro",
    "ce_precision_micro",
    "ce_recall_micro",
    "BLEU-4",
    "ROUGE-L",
    "CIDEr",
)


def _test_metrics(cli) -> dict[str, float]:
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule)[0]
    return {k.removeprefix("test/"): float(v) for k, v in results.items()}


def fit_sft(seed: int, out: Path, sft_args: Sequence[str]) -> dict:
    """Fit and test the SFT report generator for one seed: its test metrics and run folder."""
    sft = main(
        ["fit", "--seed_everything", str(seed), "--trainer.default_root_dir",
         str(out / f"sft_seed{seed}"), *sft_args]
    )  # fmt: skip
    return {"sft": _test_metrics(sft), "sft_run": str(sft.trainer.log_dir)}


def reused_sft(folder: Path, seed: int) -> dict:
    """The SFT record of ``seed`` in an earlier comparison's ``comparison.json`` (its test
    metrics and run folder), or an error naming the file and the fix."""
    path = folder / "comparison.json"
    records = json.loads(path.read_text()) if path.is_file() else []
    found = [r for r in records if r["seed"] == seed]
    if not found or not (Path(found[0]["sft_run"]) / "checkpoints" / "last.ckpt").is_file():
        raise FileNotFoundError(
            f"--sft-from {str(folder)!r}: {path} holds no finished SFT run of seed {seed}; run "
            "python -m apps.medical_cxr.factuality with that seed first (or drop --sft-from)."
        )
    return {"sft": found[0]["sft"], "sft_run": found[0]["sft_run"]}


def run_seed(
    seed: int,
    out: Path,
    sft_args: Sequence[str],
    pref_args: Sequence[str],
    sft: dict | None = None,
) -> dict:
    """SFT (or the given ``sft`` record, see :func:`reused_sft`) then preference tuning for
    one seed; the test metrics of both."""
    sft = sft or fit_sft(seed, out, sft_args)
    ckpt = Path(sft["sft_run"]) / "checkpoints" / "last.ckpt"
    pref = main(
        ["fit", "--config", str(PREFERENCE), "--seed_everything", str(seed),
         "--model.init_args.pretrained", str(ckpt),
         "--trainer.default_root_dir", str(out / f"pref_seed{seed}"), *pref_args]
    )  # fmt: skip
    return {
        "seed": seed,
        "sft": sft["sft"],
        "preference": _test_metrics(pref),
        "pairs": len(pref.model.pairs),
        "sft_run": sft["sft_run"],
        "preference_run": str(pref.trainer.log_dir),
    }


def per_label_f1(records: list[dict]) -> dict[str, dict[str, float]]:
    """Stage -> observation -> test F1 averaged over the seeds, from each run's
    ``eval/test_seed<k>/per_label.csv`` (runs whose file is missing are left out)."""
    out: dict[str, dict[str, float]] = {}
    for stage, key in (("sft", "sft_run"), ("preference", "preference_run")):
        sums: dict[str, list[float]] = {}
        for r in records:
            path = Path(r[key]) / "eval" / f"test_seed{r['seed']}" / "per_label.csv"
            if path.is_file():
                with open(path) as f:
                    for row in csv.DictReader(f):
                        sums.setdefault(row["observation"], []).append(float(row["f1"]))
        out[stage] = {name: sum(v) / len(v) for name, v in sums.items()}
    return out


def comparison_table(records: list[dict]) -> str:
    """Markdown: per seed and metric, SFT, SFT + preference tuning, difference."""
    lines = ["| seed | metric | SFT | SFT + DPO | change |", "|---|---|---|---|---|"]
    for r in records:
        for key in KEYS:
            a, b = r["sft"].get(key), r["preference"].get(key)
            if a is None or b is None:
                continue
            lines.append(f"| {r['seed']} | {key} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    return "\n".join(lines)


def seed_summary_table(records: list[dict]) -> str:
    """Markdown: per metric, mean ± sample std over seeds of SFT, SFT + DPO and the change,
    and in how many seeds the change was positive."""
    lines = [
        "| metric | SFT | SFT + DPO | change | seeds improved |",
        "|---|---|---|---|---|",
    ]
    for key in KEYS:
        rows = [r for r in records if key in r["sft"] and key in r["preference"]]
        if not rows:
            continue
        cells = []
        for values in (
            [r["sft"][key] for r in rows],
            [r["preference"][key] for r in rows],
            [r["preference"][key] - r["sft"][key] for r in rows],
        ):
            mean, std = mean_std(values)
            cells.append(f"{mean:.4f} ± {std:.4f}")
        improved = sum(r["preference"][key] > r["sft"][key] for r in rows)
        lines.append(f"| {key} | {' | '.join(cells)} | {improved}/{len(rows)} |")
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> Path:
    """Run the comparison; return the path of ``comparison.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/medical_cxr_factuality")
    parser.add_argument("--sft-args", default="", help="extra options for the SFT stage")
    parser.add_argument("--pref-args", default="", help="extra options for the DPO stage")
    parser.add_argument(
        "--resume", action="store_true", help="keep the seeds already in <out>/comparison.json"
    )
    parser.add_argument(
        "--sft-from",
        help="reuse the SFT runs of an earlier comparison folder (its comparison.json): only "
        "the preference stage runs, e.g. to compare DPO options on the same SFT models",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.time()
    saved = []
    if args.resume and (out / "comparison.json").exists():
        saved = json.loads((out / "comparison.json").read_text())
    records = [r for r in saved if r["seed"] in args.seeds]
    others = [r for r in saved if r["seed"] not in args.seeds]  # kept in the file, not shown
    done = {r["seed"] for r in records}
    for seed in (s for s in args.seeds if s not in done):
        sft = reused_sft(Path(args.sft_from), seed) if args.sft_from else None
        records.append(
            run_seed(seed, out, shlex.split(args.sft_args), shlex.split(args.pref_args), sft)
        )
        atomic_write_text(out / "comparison.json", json.dumps(others + records, indent=2) + "\n")
    lines = [
        "# Factuality preference tuning: SFT vs SFT + DPO (held-out test split)",
        "",
        "Real IU X-ray reports, synthetic radiographs. Beam search (3 beams, no repeated "
        "trigram) for both. Clinical efficacy: CheXpert labels of generated vs reference "
        "reports (uncertain = negative).",
        "",
        "Mean ± sample std over seeds " + ", ".join(str(r["seed"]) for r in records) + ":",
        "",
        seed_summary_table(records),
        "",
        "Per seed:",
        "",
        comparison_table(records),
        "",
        f"{len(records)} seed(s), {(time.time() - start) / 60:.1f} min in this invocation.",
    ]
    plot = write_figure(factuality_figure(records, per_label_f1(records)), out / "comparison.png")
    lines += ["", f"![SFT vs SFT + DPO]({plot.name})", ""]
    return write_summary(out / "comparison.md", lines, "apps.medical_cxr.factuality", argv)


if __name__ == "__main__":
    run()
