"""``python -m apps.medical_cxr.benchmark``: BenchX-style label-efficiency summary.

Runs the classification recipe (``configs/classification.yaml``) with 1%, 10% and 100% of the
training patients (the shipped, nested label-fraction split files) over three seeds, tests
each run's best checkpoint (highest ``val/auroc``) on the fixed test split and writes, under
``--out`` (default ``runs/medical_cxr_benchmark``):

* ``results.json``: one record per (fraction, seed): test macro AUROC, excluded classes,
  training studies, run directory;
* ``summary.md``: mean ± sample standard deviation (ddof=1) over the seeds per fraction.

Smaller fractions get more epochs (``--epochs``, one per fraction) so that every run takes a
comparable number of optimizer steps. Extra arguments are passed to every run's command line,
e.g. ``--model.init_args.encoder densenet121``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from core.atomic import atomic_write_text
from core.benchmarking import mean_std, write_summary

from .train import DEFAULT_CONFIG, main

CLASSIFICATION = DEFAULT_CONFIG.parent / "classification.yaml"


def summary_table(records: list[dict]) -> str:
    """Markdown table: fraction, training studies, seeds, AUROC mean ± std, excluded classes."""
    lines = [
        "| label fraction | training studies | seeds | test macro AUROC (mean ± std) "
        "| excluded classes |",
        "|---|---|---|---|---|",
    ]
    for fraction in sorted({r["fraction"] for r in records}):
        rows = [r for r in records if r["fraction"] == fraction]
        mean, std = mean_std([r["auroc"] for r in rows])
        excluded = sorted({int(r["auroc_excluded"]) for r in rows})
        lines.append(
            f"| {fraction:g} | {rows[0]['train_studies']} | "
            f"{','.join(str(r['seed']) for r in rows)} | {mean:.4f} ± {std:.4f} | "
            f"{'/'.join(map(str, excluded))} |"
        )
    return "\n".join(lines)


def run_one(fraction: float, seed: int, epochs: int, out: Path, extra: Sequence[str]) -> dict:
    """Fit the classification recipe on one fraction and seed, test its best checkpoint."""
    root = out / f"fraction{fraction:g}_seed{seed}"
    every = max(1, epochs // 8)
    cli = main(
        [
            "fit",
            "--config",
            str(CLASSIFICATION),
            "--seed_everything",
            str(seed),
            "--data.label_fraction",
            str(fraction),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.check_val_every_n_epoch",
            str(every),
            "--model.init_args.lr_scheduler.init_args.T_max",
            str(epochs),
            "--trainer.default_root_dir",
            str(root),
            *extra,
        ]
    )
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    metrics = results[0]
    return {
        "fraction": fraction,
        "seed": seed,
        "epochs": epochs,
        "train_studies": len(cli.datamodule.sets["train"]),
        "auroc": float(metrics["test/auroc"]),
        "auroc_excluded": float(metrics["test/auroc_excluded"]),
        "run_dir": str(cli.trainer.log_dir),
    }


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epochs", type=int, nargs="+", default=[40, 16, 8],
        help="max_epochs per fraction (same order as --fractions)",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/medical_cxr_benchmark")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the runs already in <out>/results.json (same fraction, seed and epochs)",
    )  # fmt: skip
    return parser.parse_known_args(argv)


def run(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; return the path of ``summary.md``."""
    args, extra = parse_args(argv)
    if len(args.epochs) != len(args.fractions):
        raise ValueError(
            f"--epochs takes one value per fraction: {len(args.fractions)} fractions "
            f"{args.fractions} but {len(args.epochs)} epoch values {args.epochs}."
        )
    out = Path(args.out)
    done: list[dict] = []
    if args.resume and (out / "results.json").is_file():
        done = json.loads((out / "results.json").read_text())
    records: list[dict] = []
    start = time.time()
    for fraction, epochs in zip(args.fractions, args.epochs, strict=True):
        for seed in args.seeds:
            kept = [
                r for r in done
                if (r["fraction"], r["seed"], r["epochs"]) == (fraction, seed, epochs)
            ]  # fmt: skip
            if kept:
                records.append(kept[0])
                continue
            print(f"[benchmark] fraction {fraction:g}, seed {seed}, {epochs} epochs", flush=True)
            records.append(run_one(fraction, seed, epochs, out, extra))
            atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    minutes = (time.time() - start) / 60
    lines = [
        "# BenchX-style label efficiency: 14-label classification, embedded data",
        "",
        "Synthetic radiographs drawn from the labels of real IU X-ray reports; fixed, "
        "nested label-fraction split files; test split fixed; best checkpoint by val AUROC.",
        "",
        summary_table(records),
        "",
        f"{len(records)} runs ({minutes:.1f} min in this invocation).",
    ]
    return write_summary(out / "summary.md", lines, "apps.medical_cxr.benchmark", argv)


if __name__ == "__main__":
    run()
