"""``python -m core.merging.experiment``: fine-tune two tasks with LoRA, merge, score both.

An experiment script (``core/<package>/experiment.py``): a comparison of methods over seeds
on real data that ships with an installed package, offline, writing a table. Speed and
memory against peer libraries are measured in ``bench/`` instead.

A worked example from end to end: ``python -m core.merging.experiment [--out
runs/merging_experiment] [--seed 0 1 2]`` runs in well under a minute on 2 CPU cores:

1. Data: scikit-learn's handwritten digits (1,797 real 8x8 images shipped with the
   library), split 60/20/20 into train/validation/test, stratified and seeded.
   Task A is the digits 0-4, task B the digits 5-9. A task is scored on its own test
   images, the answer being the best of that task's five classes (``--protocol task``,
   the task-arithmetic convention of a known task) or of all ten (``--protocol all``).
2. Base model: an MLP 64-64-64-10 built here and pre-trained on a small labelled subset
   (``--pretrain-per-class`` images per digit, 5 by default), so it knows all ten digits
   a little.
3. Fine-tuning: one LoRA adapter per task (r=4 on fc1, fc2 and head, via
   ``core.adapters``), trained on that task's training images only and saved in the PEFT
   layout. Each fine-tuned model gets better at its task and forgets the other.
4. Merging: every weight-space method of ``core.merging`` on the two fine-tuned models,
   plus adapter-level merges (cat, SVD at rank 4, TIES on the deltas). Each method's
   scaling is picked on the validation split (mean of both tasks), then scored on test.
   DARE is averaged over three seeds. Finally the same TIES merge runs through the
   command line (``python -m core.merging``) on the files on disk and must agree.

Writes ``<out>/results.json`` and prints a Markdown table (the one in docs/merging.md);
with several seeds (``--seed 0 1 2``) one run per seed under ``<out>/seed<N>`` and a
mean ± std table in ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from core.adapters import LoraConfig, inject, save_adapter
from core.atomic import atomic_write

from . import (
    breadcrumbs,
    compress,
    compressed_merge,
    dare,
    lines,
    merge_adapter_into_base,
    merge_lora_adapters,
    pcb,
    read_lora_adapter,
    task_arithmetic,
    task_vector,
    ties,
    uniform_soup,
)
from .cli import merge_config_from_dict, run

TASKS = {"A (digits 0-4)": tuple(range(5)), "B (digits 5-9)": tuple(range(5, 10))}
SCALINGS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


class MLP(nn.Module):
    """fc1 -> ReLU -> fc2 -> ReLU -> head."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def load_splits(seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Digits as train/val/test (60/20/20, stratified, seeded); x in [0, 1]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, random_state=seed, stratify=y)
    val, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=y[rest])
    return {
        name: (torch.from_numpy(x[ids]), torch.from_numpy(y[ids]))
        for name, ids in (("train", train), ("val", val), ("test", test))
    }


def task_subset(split: tuple[Tensor, Tensor], classes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The images (and labels) of ``split`` whose label is one of the task's ``classes``."""
    x, y = split
    keep = torch.isin(y, torch.tensor(classes))
    return x[keep], y[keep]


def train(
    model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int, batch: int = 64
) -> None:
    """Minibatch AdamW on cross-entropy over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            ids = order[i : i + batch]
            loss = nn.functional.cross_entropy(model(x[ids]), y[ids])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Accuracy when the answer is picked among all ten digits."""
    return float((model(x).argmax(-1) == y).float().mean())


@torch.no_grad()
def task_accuracy(model: nn.Module, x: Tensor, y: Tensor, classes: tuple[int, ...]) -> float:
    """Accuracy when the answer is picked among the task's own classes only."""
    allowed = torch.tensor(classes)
    pred = allowed[model(x)[:, allowed].argmax(-1)]
    return float((pred == y).float().mean())


def scorer(
    splits: dict[str, tuple[Tensor, Tensor]], split: str, protocol: str = "task"
) -> Callable[[Mapping[str, Tensor]], dict[str, float]]:
    """state_dict -> {task: accuracy on that task's images of ``split``}.

    ``protocol="task"``: the prediction is the best of the task's 5 classes (the task is
    known at test time, as in task-arithmetic benchmarks with one head per task);
    ``"all"``: the best of all 10 digits.
    """
    model = MLP()
    subsets = {t: task_subset(splits[split], c) for t, c in TASKS.items()}

    def score(state: Mapping[str, Tensor]) -> dict[str, float]:
        model.load_state_dict(dict(state))
        if protocol == "all":
            return {t: accuracy(model, *xy) for t, xy in subsets.items()}
        return {t: task_accuracy(model, *xy, TASKS[t]) for t, xy in subsets.items()}

    return score


def mean(scores: Mapping[str, float]) -> float:
    """Mean of the per-task scores (what the validation split picks each scaling on)."""
    return float(np.mean(list(scores.values())))


def run_experiment(
    out: str | Path = "runs/merging_experiment",
    seed: int = 0,
    pretrain_per_class: int = 5,
    rank: int = 4,
    epochs: int = 30,
    protocol: str = "task",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole experiment; returns (and writes) the results.

    Runs on one CPU thread (restored afterwards): for a model this small, waking a thread
    pool costs more than the arithmetic.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_experiment(out, seed, pretrain_per_class, rank, epochs, protocol, log)
    finally:
        torch.set_num_threads(threads)


def _run_experiment(
    out: str | Path,
    seed: int,
    pretrain_per_class: int,
    rank: int,
    epochs: int,
    protocol: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    splits = load_splits(seed)
    val_score, test_score = scorer(splits, "val", protocol), scorer(splits, "test", protocol)

    # 1. Base: pre-train on a few labelled images per digit.
    x_tr, y_tr = splits["train"]
    gen = torch.Generator().manual_seed(seed)
    few = torch.cat(
        [
            torch.nonzero(y_tr == c).flatten()[
                torch.randperm(int((y_tr == c).sum()), generator=gen)
            ][:pretrain_per_class]
            for c in range(10)
        ]
    )
    base_model = MLP()
    train(base_model, x_tr[few], y_tr[few], epochs=100, lr=3e-3, seed=seed)
    base = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    atomic_write(out / "base" / "model.safetensors", lambda tmp: save_file(base, str(tmp)))

    # 2. One LoRA adapter per task, on that task's images only.
    adapters = {}
    for i, (task, classes) in enumerate(TASKS.items()):
        model = MLP()
        model.load_state_dict(base)
        inject(model, LoraConfig(r=rank, alpha=2.0 * rank, target_modules=["fc1", "fc2", "head"]))
        train(model, *task_subset(splits["train"], classes), epochs, 1e-2, seed + i + 1)
        adapters[task] = out / f"adapter_{'AB'[i]}"
        save_adapter(model, adapters[task])
    loras = [read_lora_adapter(p) for p in adapters.values()]
    finetuned = [merge_adapter_into_base(base, a) for a in loras]

    # 3. Merge: pick each method's scaling on validation, report test.
    rows: list[dict[str, Any]] = []

    def add(name: str, state: Mapping[str, Tensor], note: str = "") -> None:
        rows.append({"model": name, **test_score(state), "note": note})

    add("base (pre-trained)", base)
    for task, state in zip(TASKS, finetuned, strict=True):
        add(f"LoRA fine-tuned on {task.split()[0]}", state)

    def tuned(
        name: str, build: Callable[[float], Mapping[str, Tensor]], label: str = "scaling"
    ) -> None:
        best = max(SCALINGS, key=lambda s: mean(val_score(build(s))))
        add(name, build(best), f"{label}={best}")

    add("uniform soup (mean of the two)", uniform_soup(finetuned))
    tuned("task arithmetic", lambda s: task_arithmetic(base, finetuned, scaling=s))
    tuned("TIES (density 0.2)", lambda s: ties(base, finetuned, density=0.2, scaling=s))
    dare_rows = []
    for dseed in range(3):
        best = max(
            SCALINGS,
            key=lambda s, d=dseed: mean(val_score(dare(base, finetuned, 0.5, s, seed=d))),
        )
        dare_rows.append((best, test_score(dare(base, finetuned, 0.5, best, seed=dseed))))
    rows.append(
        {
            "model": "DARE (p 0.5), mean of 3 seeds",
            **{t: float(np.mean([r[1][t] for r in dare_rows])) for t in TASKS},
            "note": f"scaling={[r[0] for r in dare_rows]}",
        }
    )
    tuned(
        "DARE-TIES (p 0.5, seed 0)",
        lambda s: dare(base, finetuned, 0.5, s, seed=0, sign_election=True),
    )
    tuned(
        "Breadcrumbs (top 0.01, bottom 0.5)",
        lambda s: breadcrumbs(base, finetuned, top=0.01, bottom=0.5, scaling=s),
    )
    tuned("PCB (ratio 0.2)", lambda s: pcb(base, finetuned, ratio=0.2, scaling=s))
    tuned(
        "ComPEFT ternary (density 0.2)",
        lambda s: compressed_merge(base, finetuned, density=0.2, scaling=s),
    )
    sizes = [compress(task_vector(base, ft), density=0.2).report() for ft in finetuned]
    rows[-1]["note"] += (
        f"; stored {sizes[0]['stored_bytes']} B per task vector vs {sizes[0]['dense_bytes']} B "
        f"fp32 ({sizes[0]['compression_ratio']:.1f}x)"
    )
    tuned(
        "LiNeS (fc1 at scaling/2, head at scaling)",
        lambda s: lines(base, finetuned, alpha=s / 2, beta=s / 2, layers=["fc1", "fc2", "head"]),
    )
    tuned(
        "adapter merge: cat (exact), into base",
        lambda s: merge_adapter_into_base(
            base, merge_lora_adapters(loras, weights=[s, s], combination="cat")
        ),
        label="weight",
    )
    tuned(
        f"adapter merge: SVD rank {rank}, into base",
        lambda s: merge_adapter_into_base(
            base, merge_lora_adapters(loras, weights=[s, s], combination="svd", rank=rank)
        ),
        label="weight",
    )
    tuned(
        f"adapter merge: TIES on deltas + SVD rank {2 * rank}",
        lambda s: merge_adapter_into_base(
            base,
            merge_lora_adapters(
                loras, combination="svd", rank=2 * rank, method="ties", density=0.5, scaling=s
            ),
        ),
    )

    # 4. The same TIES merge through the command line, on the files on disk.
    ties_row = next(r for r in rows if r["model"].startswith("TIES"))
    ties_scaling = float(ties_row["note"].split("=")[1])
    config = merge_config_from_dict(
        {
            "method": "ties",
            "base": str(out / "base" / "model.safetensors"),
            "models": [str(p) for p in adapters.values()],
            "parameters": {"density": 0.2, "scaling": ties_scaling},
            "output": str(out / "merged_ties"),
            "overwrite": True,
        }
    )
    run(config, log=lambda msg: None)
    from_cli = load_file(str(out / "merged_ties" / "model.safetensors"))
    in_memory = ties(base, finetuned, density=0.2, scaling=ties_scaling)
    cli_max_diff = max(float((from_cli[k] - in_memory[k]).abs().max()) for k in in_memory)
    add("TIES via python -m core.merging", from_cli, f"max |diff| vs in-memory {cli_max_diff:.1e}")

    for row in rows:
        row["mean"] = mean({t: row[t] for t in TASKS})
    results = {
        "seed": seed,
        "pretrain_per_class": pretrain_per_class,
        "lora_rank": rank,
        "epochs": epochs,
        "protocol": protocol,
        "test_images": {t: len(task_subset(splits["test"], c)[1]) for t, c in TASKS.items()},
        "rows": rows,
        "cli_max_abs_diff": cli_max_diff,
        "compressed_task_vectors": sizes,
        "seconds": round(time.time() - start, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    log(markdown_table(results))
    log(f"\n{results['seconds']} s; results in {out / 'results.json'}")
    return results


def markdown_table(results: Mapping[str, Any]) -> str:
    """The results as a Markdown table (test accuracy, %)."""
    tasks = list(TASKS)
    lines_ = [
        f"| model | task {tasks[0]} | task {tasks[1]} | mean | chosen on val |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        lines_.append(
            f"| {r['model']} | {100 * r[tasks[0]]:.1f} | {100 * r[tasks[1]]:.1f} | "
            f"{100 * r['mean']:.1f} | {r['note']} |"
        )
    return "\n".join(lines_)


def summary_table(all_results: list[Mapping[str, Any]]) -> str:
    """Mean and standard deviation over seeds of each row's test accuracy (%)."""
    tasks = list(TASKS)
    names = [r["model"] for r in all_results[0]["rows"]]
    seeds = [r["seed"] for r in all_results]
    lines_ = [
        f"| model (seeds {', '.join(map(str, seeds))}) | task {tasks[0]} | task {tasks[1]} "
        "| mean |",
        "|---|---:|---:|---:|",
    ]
    for i, name in enumerate(names):
        cells = []
        for col in (*tasks, "mean"):
            values = 100 * np.array([r["rows"][i][col] for r in all_results])
            cells.append(f"{values.mean():.1f} ± {values.std():.1f}")
        lines_.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines_)


def main() -> None:
    """Command line: one run per ``--seed`` and, with several seeds, the mean ± std table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/merging_experiment")
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="one or more seeds (split, init, training)"
    )
    parser.add_argument("--pretrain-per-class", type=int, default=5)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--protocol", choices=("task", "all"), default="task")
    args = parser.parse_args()
    all_results = []
    for seed in args.seed:
        out = Path(args.out) if len(args.seed) == 1 else Path(args.out) / f"seed{seed}"
        all_results.append(
            run_experiment(
                out, seed, args.pretrain_per_class, args.rank, args.epochs, args.protocol
            )
        )
    if len(all_results) > 1:
        table = summary_table(all_results)
        print(f"\nOver {len(all_results)} seeds:\n{table}")
        (Path(args.out) / "summary.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
