"""``python -m apps.medical_cxr.benchmark``: BenchX-style label efficiency and initialisation.

Runs the classification recipe (``configs/classification.yaml``: EfficientNet-Lite0) with 1%,
10% and 100% of the training patients (the shipped, nested label-fraction split files) over
three seeds, from each initialisation of the encoder (``--inits``: ``scratch`` = random
weights, ``imagenet`` = the installed ImageNet weights), with the same protocol otherwise;
tests each run's best checkpoint (highest ``val/auroc``) on the fixed test split and writes,
under ``--out`` (default ``runs/medical_cxr_benchmark``):

* ``results.json``: one record per (initialisation, fraction, seed): test macro AUROC,
  excluded classes, training studies, run directory;
* ``summary.md``: mean ± sample standard deviation (ddof=1) over the seeds per
  initialisation and fraction, and per fraction which initialisation wins (the difference
  of the means and in how many seeds ImageNet beats scratch).

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


#: Encoder initialisations: the ``model.init_args.encoder_pretrained`` value of each.
INITS = {"scratch": "null", "imagenet": "imagenet"}


def summary_table(records: list[dict]) -> str:
    """Markdown table: initialisation, fraction, training studies, seeds, AUROC mean ± std,
    excluded classes."""
    lines = [
        "| init | label fraction | training studies | seeds | test macro AUROC (mean ± std) "
        "| excluded classes |",
        "|---|---|---|---|---|---|",
    ]
    for init in sorted({r.get("init", "") for r in records}):
        for fraction in sorted({r["fraction"] for r in records if r.get("init", "") == init}):
            rows = [r for r in records if (r.get("init", ""), r["fraction"]) == (init, fraction)]
            mean, std = mean_std([r["auroc"] for r in rows])
            excluded = sorted({int(r["auroc_excluded"]) for r in rows})
            lines.append(
                f"| {init or '-'} | {fraction:g} | {rows[0]['train_studies']} | "
                f"{','.join(str(r['seed']) for r in rows)} | {mean:.4f} ± {std:.4f} | "
                f"{'/'.join(map(str, excluded))} |"
            )
    return "\n".join(lines)


def winner_table(records: list[dict]) -> str | None:
    """Per fraction, ImageNet minus scratch (difference of the mean AUROCs) and the seeds
    where ImageNet scores higher; ``None`` unless both initialisations ran."""
    by_key = {(r.get("init"), r["fraction"], r["seed"]): r["auroc"] for r in records}
    fractions = sorted({f for i, f, _ in by_key if i == "imagenet"})
    lines = [
        "| label fraction | ImageNet - scratch (mean AUROC) | seeds ImageNet wins | winner |",
        "|---|---|---|---|",
    ]
    for fraction in fractions:
        seeds = sorted(
            s for i, f, s in by_key if (i, f) == ("imagenet", fraction)
            and ("scratch", fraction, s) in by_key
        )  # fmt: skip
        if not seeds:
            continue
        pre = [by_key["imagenet", fraction, s] for s in seeds]
        scratch = [by_key["scratch", fraction, s] for s in seeds]
        gain = mean_std(pre)[0] - mean_std(scratch)[0]
        wins = sum(p > q for p, q in zip(pre, scratch, strict=True))
        winner = "ImageNet" if wins == len(seeds) else "scratch" if wins == 0 else "mixed"
        lines.append(f"| {fraction:g} | {gain:+.4f} | {wins}/{len(seeds)} | {winner} |")
    return "\n".join(lines) if len(lines) > 2 else None


def run_one(
    fraction: float, seed: int, epochs: int, out: Path, extra: Sequence[str], init: str = ""
) -> dict:
    """Fit the classification recipe on one fraction, seed and encoder initialisation
    (``init``: a key of :data:`INITS`, or ``""`` for the recipe's own); test its best
    checkpoint."""
    root = out / f"{init + '_' if init else ''}fraction{fraction:g}_seed{seed}"
    init_args = ["--model.init_args.encoder_pretrained", INITS[init]] if init else []
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
            *init_args,
            *extra,
        ]
    )
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    metrics = results[0]
    return {
        "init": init,
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
    parser.add_argument(
        "--inits", nargs="+", default=list(INITS), choices=list(INITS),
        help="encoder initialisations to compare (scratch: random; imagenet: installed weights)",
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
    for init in args.inits:
        for fraction, epochs in zip(args.fractions, args.epochs, strict=True):
            for seed in args.seeds:
                key = (init, fraction, seed, epochs)
                kept = [
                    r for r in done
                    if (r.get("init", ""), r["fraction"], r["seed"], r["epochs"]) == key
                ]  # fmt: skip
                if kept:
                    records.append(kept[0])
                    continue
                print(
                    f"[benchmark] {init}, fraction {fraction:g}, seed {seed}, {epochs} epochs",
                    flush=True,
                )
                records.append(run_one(fraction, seed, epochs, out, extra, init))
                atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    minutes = (time.time() - start) / 60
    lines = [
        "# BenchX-style label efficiency and initialisation: 14-label classification, "
        "embedded data",
        "",
        "Synthetic radiographs drawn from the labels of real IU X-ray reports; fixed, "
        "nested label-fraction split files; test split fixed; best checkpoint by val AUROC.",
        "",
        summary_table(records),
        "",
        *(
            ["## Which initialisation wins", "", winner, ""]
            if (winner := winner_table(records))
            else []
        ),
        f"{len(records)} runs ({minutes:.1f} min in this invocation).",
    ]
    return write_summary(out / "summary.md", lines, "apps.medical_cxr.benchmark", argv)


if __name__ == "__main__":
    run()
