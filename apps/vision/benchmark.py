"""``python -m apps.vision.benchmark``: the whole method table over several seeds.

For each seed: zero-shot, linear probe, full fine-tuning (FT), LP-FT, FLYP, FLYP + m2-mix,
SSF, LoRA, FT + L2-SP, FT + EWC, WiSE-FT of FT (alpha chosen on ID validation), and
uniform / greedy soups over a small FT hyper-parameter sweep (learning rate x weight
decay; the FT run is one ingredient). Every model is scored on ID test, each shift, and
ECE; effective robustness is measured against a logit-space line fitted on the ID-only
fine-tuned baselines (LP, FT and the sweep ingredients). Outputs:

- ``<out>/results.jsonl``: one row per (seed, model), plus one per WiSE-FT alpha;
- ``<out>/effective_robustness.json``: the baseline fit;
- ``<out>/frontier.png`` and ``<out>/reliability.png`` (seed 0);
- with ``--docs docs/vision.md``: the table (mean +- std over seeds) between the markers
  ``<!-- vision-benchmark:start -->`` and ``<!-- vision-benchmark:end -->``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from core.atomic import atomic_write_text

from .data import VisionDataModule
from .metrics import EffectiveRobustness, ResultsDB
from .module import VisionModule
from .plots import frontier_figure, reliability_figure, save_figure
from .robust import DEFAULT_ALPHAS, clone_state, predict_sets, soups, summarize, wise_ft_sweep

__all__ = ["METHODS", "format_summary", "main", "run_benchmark"]

START, END = "<!-- vision-benchmark:start -->", "<!-- vision-benchmark:end -->"


def _adamw(lr: float, wd: float) -> Any:
    def make(params: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)

    return make


def _methods(lr: float) -> dict[str, dict[str, Any]]:
    from core.adapters import LoraConfig, SsfConfig
    from core.regularizers import EWC, L2SP

    ft = {"optimizer": _adamw(lr, 0.1)}
    return {
        "linear_probe": {"modules_to_save": ["head"], "optimizer": _adamw(1e-2, 0.0)},
        "ft": ft,
        "lp_ft": {**ft, "head_init": "linear_probe"},
        "flyp": {**ft, "objective": "flyp"},
        "flyp_m2mix": {**ft, "objective": "flyp", "mixup_weight": 0.5},
        "ssf": {
            "adapter": SsfConfig(target_modules=SSF_TARGETS),
            "modules_to_save": ["head"],
            "optimizer": _adamw(3e-3, 0.0),
        },
        "lora": {
            "adapter": LoraConfig(
                r=8,
                alpha=16,
                target_modules=r"image_encoder\.top\..*(conv_pw|conv_pwl)|image_encoder\.top\.1"
                r"|image_proj",
            ),
            "modules_to_save": ["head"],
            "optimizer": _adamw(3e-3, 0.0),
        },
        "l2sp": {**ft, "regularizers": [L2SP(alpha=1.0, head=["head"])]},
        "ewc": {
            **ft,
            "regularizers": [
                EWC(
                    lambda_=100.0,
                    labels="true",
                    max_samples=512,
                    include=["image_encoder.*", "image_proj.*"],
                )
            ],
        },
    }


#: SSF after every convolution of the fine-tuned top (before its batch norm) and the image
#: projection. (core's SSF puts the channel axis of batch norms last, so it follows convs.)
SSF_TARGETS = r"image_encoder\.top\..*(conv_pw|conv_dw|conv_pwl)|image_encoder\.top\.1|image_proj"

#: Method names in table order (post-hoc rows are added after them).
METHODS = ["zeroshot", *_methods(3e-4).keys(), "wiseft", "uniform_soup", "greedy_soup"]

#: The soup sweep: (learning rate, weight decay); (lr, 0.1) is the FT run itself.
SWEEP = [(1e-4, 0.1), (1e-3, 0.1)]


def _fit(module: VisionModule, data: VisionDataModule, epochs: int, seed: int) -> None:
    pl.seed_everything(seed, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=data)


def _new(kwargs: dict[str, Any], seed: int, model_kwargs: dict[str, Any] | None) -> VisionModule:
    pl.seed_everything(seed, verbose=False)
    return VisionModule(**(model_kwargs or {}), **kwargs)


class _Recorder:
    """Scores models on the evaluation sets and appends the rows."""

    def __init__(self, db: ResultsDB, rows: list[dict[str, Any]], first_seed: int) -> None:
        self.db, self.rows, self.first_seed = db, rows, first_seed
        self.reliability: dict[str, Any] = {}
        self.sets: dict[str, Any] = {}
        self.seed = first_seed

    def __call__(self, name: str, module: VisionModule, seconds: float, **extra: Any) -> None:
        preds = predict_sets(module.model, self.sets)
        row = {
            "seed": self.seed,
            "name": name,
            "seconds": round(seconds, 1),
            **summarize(preds, self.sets),
            **extra,
        }
        self.rows.append(row)
        self.db.append([row])
        if self.seed == self.first_seed and name in ("zeroshot", "ft", "wiseft"):
            self.reliability[name] = (preds["id_test"][0].softmax(-1), preds["id_test"][1])
        print(
            f"[seed {self.seed}] {name:13s} ID {row['id']:.3f} OOD {row['ood']:.3f} "
            f"ECE {row['ece_id']:.3f} ({seconds:.0f}s)",
            flush=True,
        )


def run_benchmark(
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 1,
    lr: float = 3e-4,
    out: str | Path = "runs/vision/benchmark",
    data_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    methods: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the method table; returns every result row (also appended to results.jsonl)."""
    out = Path(out)
    wanted = list(methods or METHODS)
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}.")
    db = ResultsDB(out / "results.jsonl")
    rows: list[dict[str, Any]] = []
    curve0: list[dict[str, Any]] = []
    record = _Recorder(db, rows, seeds[0])
    for seed in seeds:
        # The training loader shuffles with the seed _fit sets (seed_everything).
        data = VisionDataModule(**(data_kwargs or {}))
        data.setup()
        sets = data.eval_sets()
        record.sets, record.seed = sets, seed
        recipes = _methods(lr)

        zs = _new({}, seed, model_kwargs)
        initial = zs.initial_state
        if "zeroshot" in wanted:
            record("zeroshot", zs, 0.0)
        ft_state = None
        for name, kwargs in recipes.items():
            if name not in wanted and not (
                name == "ft" and {"wiseft", "uniform_soup", "greedy_soup"} & set(wanted)
            ):
                continue
            t0 = time.perf_counter()
            module = _new(kwargs, seed, model_kwargs)
            _fit(module, data, epochs, seed)
            if name in wanted:
                record(name, module, time.perf_counter() - t0)
            if name == "ft":
                ft_state, ft_module = clone_state(module.model), module
        if ft_state is None:
            continue
        if "wiseft" in wanted:
            t0 = time.perf_counter()
            curve, alpha = wise_ft_sweep(ft_module.model, initial, ft_state, sets, DEFAULT_ALPHAS)
            for r in curve:
                db.append([{"seed": seed, "name": f"wiseft_alpha_{r['alpha']:.1f}", **r}])
            if seed == seeds[0]:
                curve0 = curve
            from core.merging import wise_ft

            ft_module.model.load_state_dict(wise_ft(initial, ft_state, alpha=alpha))
            record("wiseft", ft_module, time.perf_counter() - t0, alpha=alpha)
        if {"uniform_soup", "greedy_soup"} & set(wanted):
            t0 = time.perf_counter()
            states = [ft_state]
            for sweep_lr, wd in SWEEP:
                module = _new({"optimizer": _adamw(sweep_lr, wd)}, seed, model_kwargs)
                _fit(module, data, epochs, seed)
                states.append(clone_state(module.model))
                record(f"sweep_lr{sweep_lr:g}_wd{wd:g}", module, 0.0, baseline=True)
            out_soups = soups(ft_module.model, states, sets["id_val"])
            ft_module.model.load_state_dict(out_soups["uniform"])
            record("uniform_soup", ft_module, time.perf_counter() - t0)
            ft_module.model.load_state_dict(out_soups["greedy"])
            record(
                "greedy_soup",
                ft_module,
                time.perf_counter() - t0,
                ingredients=out_soups["ingredients"],
            )
    finalize(rows, out, curve0, record.reliability)
    return rows


def finalize(
    rows: list[dict[str, Any]],
    out: str | Path,
    curve: list[dict[str, Any]] | None = None,
    reliability: dict[str, Any] | None = None,
) -> None:
    """Fit effective robustness on the baselines, add ``eff_rob`` to every row, plot."""
    out = Path(out)
    fit = _effective_robustness(rows, out)
    for r in rows:
        r["eff_rob"] = fit(r["id"], r["ood"]) if fit else None
    if rows:
        _plots(rows, curve or [], reliability or {}, fit, out, rows[0]["seed"])


def load_rows(paths: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Model rows and the first seed's WiSE-FT curve from ``results.jsonl`` files."""
    rows, curve = [], []
    for path in paths:
        for r in ResultsDB(path).rows():
            if r["name"].startswith("wiseft_alpha_"):
                curve.append(r)
            else:
                rows.append(r)
    first = min((r["seed"] for r in rows), default=0)
    curve = sorted((r for r in curve if r["seed"] == first), key=lambda r: r["alpha"])
    return rows, curve


def _effective_robustness(rows: list[dict[str, Any]], out: Path) -> EffectiveRobustness | None:
    base = [r for r in rows if r.get("baseline") or r["name"] in ("ft", "linear_probe")]
    if len({round(r["id"], 6) for r in base}) < 2:
        return None
    fit = EffectiveRobustness.fit([r["id"] for r in base], [r["ood"] for r in base])
    fit.save(out / "effective_robustness.json")
    return fit


def _plots(rows, curve, reliability, fit, out: Path, seed: int) -> None:
    means = {}
    for name in dict.fromkeys(r["name"] for r in rows if not r["name"].startswith("sweep")):
        sel = [r for r in rows if r["name"] == name]
        means[name] = {
            "name": name,
            "id": statistics.mean(r["id"] for r in sel),
            "ood": statistics.mean(r["ood"] for r in sel),
        }
    frontier = frontier_figure(
        list(means.values()),
        curve=curve,
        fit=fit,
        title=f"ID vs OOD (mean over seeds; WiSE-FT curve: seed {seed})",
    )
    save_figure(frontier, out / "frontier.png")
    if reliability:
        save_figure(reliability_figure(reliability), out / "reliability.png")


def _pm(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def format_summary(rows: Sequence[dict[str, Any]], shifts: Sequence[str]) -> str:
    """Markdown table: mean ± std over seeds of every metric, in percent."""
    head = ["method", "ID", "OOD avg", "eff. rob.", *shifts, "ECE ID", "ECE OOD", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = [n for n in METHODS if any(r["name"] == n for r in rows)]
    for name in names:
        sel = [r for r in rows if r["name"] == name]
        cells = [name, _pm([r["id"] for r in sel]), _pm([r["ood"] for r in sel])]
        er = [r["eff_rob"] for r in sel if r.get("eff_rob") is not None]
        cells.append(_pm(er) if er else "-")
        cells += [_pm([r["acc"][s] for r in sel]) for s in shifts]
        cells += [_pm([r["ece_id"] for r in sel]), _pm([r["ece_ood"] for r in sel]), str(len(sel))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs_table(path: str | Path, table: str) -> None:
    """Replace the text between the benchmark markers of ``path`` (atomically)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if START not in text or END not in text:
        raise ValueError(
            f"{path} lacks the markers {START} ... {END}; add them where the table goes."
        )
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    atomic_write_text(path, f"{before}{START}\n{table}\n{END}{after}")


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--methods", nargs="+", default=None, help=f"subset of {METHODS}")
    parser.add_argument("--out", default="runs/vision/benchmark")
    parser.add_argument("--docs", default=None, help="docs page whose table to replace")
    parser.add_argument("--n-train", type=int, default=3500)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--from-results",
        nargs="+",
        default=None,
        metavar="JSONL",
        help="rebuild the table, fit and plots from results.jsonl files (e.g. of seeds run "
        "as separate processes) instead of training",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.from_results:
        rows, curve = load_rows(args.from_results)
        finalize(rows, args.out, curve)
        args.seeds = sorted({r["seed"] for r in rows})
    else:
        rows = run_benchmark(
            args.seeds,
            args.epochs,
            args.lr,
            args.out,
            data_kwargs={"n_train": args.n_train},
            methods=args.methods,
        )
    shifts = [k for k in rows[0]["acc"] if k not in ("id_val", "id_test")] if rows else []
    table = format_summary(rows, shifts)
    minutes = (time.perf_counter() - t0) / 60
    note = f"\n\nSeeds {list(args.seeds)}. Accuracies, effective robustness and ECE in %."
    if not args.from_results:
        note += (
            f" {args.epochs} epoch(s), lr {args.lr:g}, n_train {args.n_train}; "
            f"{minutes:.0f} min wall-clock."
        )
    print(table + note)
    atomic_write_text(Path(args.out) / "table.md", table + note + "\n")
    if args.docs:
        write_docs_table(args.docs, table + note)
    return rows


if __name__ == "__main__":
    main()
