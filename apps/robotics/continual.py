"""``python -m apps.robotics.continual``: task families learned in sequence, without forgetting.

The embedded suite's three families (``--families``, default ``which_object`` ->
``which_target`` -> ``ordering``) arrive one after another; a policy is fine-tuned on each in
turn by behaviour cloning (the default recipe: frozen trunk, top block and new layers,
instruction augmentation) and, after each, is run closed loop on held-out seeds of **every**
family. That fills the accuracy matrix ``R[i][j]`` (success on family ``j`` after training
family ``i``) for each method, scored with ``core.continual`` (average success, backward
transfer, forgetting):

- ``naive``: plain fine-tuning on each new family;
- ``ewc``: the same plus elastic weight consolidation (``core.regularizers.EWC``, offline: one
  Fisher and anchor per finished family) with the Fisher of the L1 head's Laplace likelihood
  (:func:`apps.robotics.fisher.policy_fisher`);
- ``replay``: half of every batch drawn from the earlier families' demonstrations (kept
  whole: a memory as large as the data);
- ``adapters``: the first family's policy becomes a frozen base, and each later family gets
  its own LoRA adapter in a ``core.adapters.AdapterBank`` (r = 8 on the top block's
  pointwise convolutions and on the new layers' linear and 1x1 layers), routed by the
  family's id; the first family routes to the base (id -1). Training one adapter touches
  nothing that another family uses, so this arm cannot forget: a test checks it, the matrix
  measures it.

Every method starts from the same policy trained on the first family (row 0 of every
matrix is shared). Then the per-family adapters are merged into one with ``core.merging``
(``task_arithmetic`` and ``ties``, their default parameters) over the LoRA deltas
``s B A``, folded into the base, and the merged policy is run on every family with no
routing: one policy for all, against the routed bank.

Actions and proprioception are normalised with the statistics of all the families'
demonstrations (one normaliser for the whole sequence: the table's and the pusher's ranges,
the same for every family), recorded once in one dataset.

Outputs under ``--out``: ``continual.json`` (matrices, metrics, settings, timings),
``report.md`` and ``accuracy_matrices.png`` (one heat map per method).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from core.adapters import AdapterBank, AdapterLayer, LoraConfig
from core.atomic import atomic_write, atomic_write_text
from core.continual import forgetting, summary
from core.merging import METHODS as MERGE_METHODS
from core.merging import merge_state_dicts
from core.regularizers import EWC

from .augment import InstructionAugmenter
from .behaviour_cloning import (
    Source,
    build_policy,
    draw_batch,
    ensembling,
    rollout_dataset,
    train_policy,
)
from .data import ChunkDataset, RoboticsDataModule, family_of
from .envs import FAMILIES
from .envs.instructions import check_family
from .evaluation import eval_seeds, rollout
from .fisher import policy_fisher
from .model import TextFn
from .policy import VLAPolicy

#: The default order of the families.
ORDER: tuple[str, ...] = ("which_object", "which_target", "ordering")
#: Sequential methods (``--methods``).
METHODS: tuple[str, ...] = ("naive", "ewc", "replay", "adapters")
#: Where EWC measures its Fisher (``--fisher-states``): the finished family's
#: demonstrations, or the policy's own closed-loop rollouts on it.
FISHER_STATES: tuple[str, ...] = ("demos", "rollouts")
#: First env seed of the rollouts a Fisher is measured on: apart from the demonstrations
#: (< 10^9), evaluation (10^9 + i), the success classifier's (2 * 10^9 + ...) and the online
#: rollouts (3 * 10^9 + ...).
FISHER_SEED_BASE = 4 * 10**9
#: Merges of the per-family adapters (``--merges``): ``core.merging`` methods.
MERGES: tuple[str, ...] = ("task_arithmetic", "ties")
#: The new layers' linear and 1x1 layers the per-family LoRA adapters also adapt.
NEW_LAYER_TARGETS = (
    "encoder.film.proj",
    "encoder.keypoints.conv",
    "encoder.mlp.0",
    "encoder.mlp.2",
    "head.net.0",
    "head.net.2",
    "head.net.4",
)
FIGURE = "accuracy_matrices.png"


# --------------------------------------------------------------------------- data
def family_subset(data: ChunkDataset, families: Sequence[str]) -> ChunkDataset:
    """The samples of ``data`` whose instruction belongs to one of ``families`` (a view: the
    arrays are shared, only the served frames change)."""
    of_task = np.array([family_of(t) for t in data.tasks], dtype=object)
    keep = np.isin(of_task[data.instructions[data.frames]], list(families))
    if not keep.any():
        raise ValueError(
            f"no demonstration of families {list(families)} in the data (its families: "
            f"{sorted({f for f in of_task if f})}); record demonstrations of every family"
        )
    return serving(data, data.frames[keep])


def serving(data: ChunkDataset, frames: np.ndarray) -> ChunkDataset:
    """``data``'s arrays serving the samples of ``frames`` (local frame indices)."""
    return ChunkDataset(
        data.images, data.proprio, data.actions, data.episode_end, data.episode_index,
        data.instructions, data.tasks, frames, data.chunk_size,
    )  # fmt: skip


def sample_batches(
    data: ChunkDataset, samples: int, seed: int, batch_size: int = 64
) -> list[dict[str, Any]]:
    """``samples`` random training samples of ``data`` as batches (for a Fisher)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [min(batch_size, samples - start) for start in range(0, samples, batch_size)]
    return [draw_batch([Source(data)], n, gen) for n in sizes]


# --------------------------------------------------------------------------- adapters
class RoutedPolicy:
    """The policy protocol with every prediction on one adapter of a bank (-1: the base)."""

    def __init__(self, policy: VLAPolicy, bank: AdapterBank, adapter_id: int) -> None:
        self.policy, self.bank, self.adapter_id = policy, bank, int(adapter_id)
        self.chunk_size = policy.chunk_size

    def predict_chunk(self, images: Any, proprio: Any, instructions: Sequence[str]) -> np.ndarray:
        with self.bank.route(torch.full((len(instructions),), self.adapter_id)):
            return self.policy.predict_chunk(images, proprio, instructions)


def adapter_bank(policy: VLAPolicy, names: Sequence[str], rank: int = 8) -> AdapterBank:
    """A LoRA bank (one adapter per name, r = ``rank``, alpha = 2r) on the top block's
    pointwise convolutions and the new layers (:data:`NEW_LAYER_TARGETS`); every other
    weight of ``policy`` is frozen by the injection."""
    targets = policy.adapter_targets("lora") + list(NEW_LAYER_TARGETS)
    config = LoraConfig(r=rank, alpha=2.0 * rank, target_modules=targets)
    return AdapterBank(policy, config, names=list(names))


def train_only(bank: AdapterBank, name: str) -> None:
    """Make adapter ``name`` the only trainable part of the bank's model."""
    for layer in bank.layers:
        for adapter, unit in layer.adapters.items():
            unit.requires_grad_(adapter == name)


def adapter_deltas(bank: AdapterBank) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """The base weights of the bank's layers and, per adapter, those weights plus its LoRA
    delta ``s B A``: the state dicts ``core.merging`` merges (keys ``<layer>.weight``)."""
    modules = dict(bank.model.named_modules())
    layers = {n: m for n, m in modules.items() if isinstance(m, AdapterLayer)}
    base = {f"{n}.weight": layer.base_layer.weight.detach().clone() for n, layer in layers.items()}
    tuned = []
    for name in bank.names:
        tuned.append({})
        for n, layer in layers.items():
            weight = base[f"{n}.weight"]
            delta = layer.adapters[name].delta_matrix().detach().reshape(weight.shape)
            tuned[-1][f"{n}.weight"] = weight + delta
    return base, tuned


def merged_policy(base_policy: VLAPolicy, bank: AdapterBank, method: str) -> VLAPolicy:
    """A copy of ``base_policy`` (the policy the bank was built on, before injection) whose
    adapted layers hold the ``method`` merge of the bank's adapters (default parameters)."""
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown merge {method!r}: choose from {sorted(MERGE_METHODS)}")
    base, tuned = adapter_deltas(bank)
    merged = merge_state_dicts(method, tuned, base)
    policy = copy.deepcopy(base_policy)
    with torch.no_grad():
        for key, value in merged.items():
            policy.get_submodule(key.removesuffix(".weight")).weight.copy_(value)
    return policy


# --------------------------------------------------------------------------- evaluation
def success_row(
    policy_for: Callable[[str], Any],
    families: Sequence[str],
    episodes: int,
    num_envs: int,
    executor: Callable[..., Any],
) -> list[dict[str, Any]]:
    """Closed-loop success on ``episodes`` held-out seeds of each family; ``policy_for(f)``
    is the policy (or routed policy) that serves family ``f``."""
    row = []
    for family in families:
        result = rollout(
            policy_for(family),
            eval_seeds(episodes),
            env_options={"families": [family]},
            executor=executor,
            num_envs=num_envs,
            progress=False,
        )
        row.append(result.summary().to_dict())
    return row


def rates(rows: Sequence[Sequence[dict[str, Any]]]) -> list[list[float]]:
    """The success rates of a matrix of summaries."""
    return [[cell["success_rate"] for cell in row] for row in rows]


def forgetting_after(R: Sequence[Sequence[float]]) -> list[float]:
    """Forgetting (``core.continual.forgetting``) after each family from the second on: the
    end-of-sequence figure alone hides a family forgotten and then relearned through a
    later family that shares its skill."""
    return [forgetting(R[: i + 1]) for i in range(1, len(R))]


# --------------------------------------------------------------------------- the sequence
def run_method(
    method: str,
    first: VLAPolicy,
    tasks: dict[str, ChunkDataset],
    families: Sequence[str],
    first_row: list[dict[str, Any]],
    *,
    steps: int,
    lr: float,
    seed: int,
    ewc_lambda: float,
    fisher_samples: int,
    rank: int,
    evaluate: Callable[[Callable[[str], Any]], list[dict[str, Any]]],
    progress: bool,
    fisher_states: str = "demos",
    num_envs: int = 20,
) -> dict[str, Any]:
    """Train families ``families[1:]`` in sequence by ``method`` from a copy of ``first``
    (trained on ``families[0]``); the matrix rows, training losses and, for ``adapters``,
    the bank (to merge)."""
    if method not in METHODS:
        raise ValueError(f"unknown continual method {method!r}: choose from {list(METHODS)}")
    policy = copy.deepcopy(first)
    rows, losses, penalties = [first_row], [], []
    ewc = bank = None
    check_fisher_states(fisher_states)

    def fisher_data(t: int) -> list[dict[str, Any]]:
        data = tasks[families[t]]
        if fisher_states == "rollouts":
            data = rollout_states(policy, families[t], fisher_samples // 8, seed, t, num_envs)
        return sample_batches(data, fisher_samples, seed + t)

    if method == "ewc":
        ewc = EWC(lambda_=ewc_lambda, fisher_fn=_fisher_fn(fisher_samples), seed=seed)
        ewc.update(policy, fisher_data(0))
    if method == "adapters":
        bank = adapter_bank(policy, families[1:], rank)
    for t, family in enumerate(families[1:], start=1):
        sources = [Source(tasks[family])]
        loss_fn = None
        if method == "replay":
            earlier_frames = np.concatenate([tasks[f].frames for f in families[:t]])
            earlier = serving(tasks[family], earlier_frames)  # the views share their arrays
            sources = [Source(tasks[family], share=0.5), Source(earlier, share=0.5)]
        elif ewc is not None:
            loss_fn = _with_penalty(policy, ewc)
        elif bank is not None:
            train_only(bank, family)
            loss_fn = _routed_loss(policy, bank, bank.index(family))
        history = train_policy(
            policy, sources, steps, lr=lr, seed=seed * 1000 + t,
            augmenter=InstructionAugmenter(0.5, 64, seed + t), loss_fn=loss_fn,
            progress=progress, desc=f"{method}: {family}",
        )  # fmt: skip
        losses.append(float(np.mean(history[-50:])))
        if ewc is not None:
            with torch.no_grad():
                penalties.append(float(ewc.penalty(policy)))
            if t < len(families) - 1:
                ewc.update(policy, fisher_data(t))
        if bank is not None:
            rows.append(evaluate(_routing(policy, bank, families[0])))
        else:
            rows.append(evaluate(lambda _family, p=policy: p))
    return {"rows": rows, "train_loss": losses, "ewc_penalty": penalties, "bank": bank}


def check_fisher_states(fisher_states: str) -> str:
    """``fisher_states`` itself, or a ValueError naming the choices."""
    if fisher_states not in FISHER_STATES:
        raise ValueError(f"fisher_states={fisher_states!r}: choose one of {list(FISHER_STATES)}")
    return fisher_states


def rollout_states(
    policy: VLAPolicy, family: str, episodes: int, seed: int, index: int, num_envs: int = 20
) -> ChunkDataset:
    """The states ``policy`` visits closed loop on ``episodes`` training seeds of ``family``
    (from :data:`FISHER_SEED_BASE`), as samples for a Fisher: the sampled-label Fisher needs
    no action label, so it can be measured where the policy actually goes."""
    first = FISHER_SEED_BASE + seed * 1_000_003 + index * 10_007
    result = rollout(
        policy, range(first, first + max(1, episodes)), env_options={"families": [family]},
        executor=ensembling(policy), num_envs=num_envs, record_transitions=True, progress=False,
    )  # fmt: skip
    return rollout_dataset(policy, result.episodes, policy.chunk_size)


def _fisher_fn(samples: int) -> Callable[..., dict[str, Tensor]]:
    def fisher(model: Any, data: Any, params: Any, generator: Any) -> dict[str, Tensor]:
        return policy_fisher(model, data, params, generator, max_samples=samples)

    return fisher


def _with_penalty(policy: VLAPolicy, ewc: EWC) -> Callable[[dict[str, Any]], Tensor]:
    return lambda batch: policy.loss(batch) + ewc.penalty(policy)


def _routed_loss(
    policy: VLAPolicy, bank: AdapterBank, adapter_id: int
) -> Callable[[dict[str, Any]], Tensor]:
    def loss(batch: dict[str, Any]) -> Tensor:
        with bank.route(torch.full((len(batch["instruction"]),), adapter_id)):
            return policy.loss(batch)

    return loss


def _routing(policy: VLAPolicy, bank: AdapterBank, first: str) -> Callable[[str], RoutedPolicy]:
    """Family -> the bank's policy routed to its adapter (the first family: the base)."""
    return lambda family: RoutedPolicy(policy, bank, -1 if family == first else bank.index(family))


# --------------------------------------------------------------------------- the whole run
def run(
    out: str | Path,
    *,
    families: Sequence[str] = ORDER,
    methods: Sequence[str] = METHODS,
    merges: Sequence[str] = MERGES,
    demos_per_family: int = 300,
    first_steps: int = 800,
    steps: int = 400,
    lr: float = 1e-3,
    ewc_lambda: float = 100.0,
    fisher_samples: int = 256,
    fisher_states: str = "demos",
    rank: int = 8,
    eval_episodes: int = 40,
    seed: int = 0,
    num_envs: int = 20,
    progress: bool = True,
    cache_dir: str | None = None,
    text_tower: TextFn | None = None,
    policy_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole study (module docstring); writes ``continual.json``, ``report.md`` and the
    heat maps under ``out`` and returns the results. ``text_tower`` (default MiniLM) and
    ``policy_options`` (encoder options) are for tests and small runs."""
    families = [check_family(f) for f in families]
    if len(families) < 2 or len(set(families)) != len(families):
        raise ValueError(f"--families {families}: name at least two different families")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"methods {unknown or '[]'}: choose from {list(METHODS)}")
    unknown = sorted(set(merges) - set(MERGE_METHODS))
    if unknown:
        raise ValueError(f"merges {unknown}: choose from {sorted(MERGE_METHODS)}")
    check_fisher_states(fisher_states)
    if merges and "adapters" not in methods:
        raise ValueError("merges combine the per-family adapters: add 'adapters' to methods")
    out = Path(out)
    began = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(seed)

    data = RoboticsDataModule(  # each episode draws its family: about demos_per_family each
        episodes=demos_per_family * len(families), families=families, seed=seed,
        cache_dir=cache_dir, val_fraction=0.0,
    )  # fmt: skip
    data.setup("fit")
    everything = data.train_dataloader().dataset
    tasks = {f: family_subset(everything, [f]) for f in families}
    policy = build_policy(seed, text_tower=text_tower, **(policy_options or {}))
    policy.normalizer = data.normalizer
    timings["data"] = time.perf_counter() - began

    def evaluate(policy_for: Callable[[str], Any]) -> list[dict[str, Any]]:
        return success_row(policy_for, families, eval_episodes, num_envs, ensembling(policy))

    tick = time.perf_counter()
    train_policy(
        policy, [Source(tasks[families[0]])], first_steps, lr=lr, seed=seed,
        augmenter=InstructionAugmenter(0.5, 64, seed), progress=progress,
        desc=f"first family: {families[0]}",
    )  # fmt: skip
    first_row = evaluate(lambda _family: policy)
    timings["first"] = time.perf_counter() - tick

    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        tick = time.perf_counter()
        results[method] = run_method(
            method, policy, tasks, families, first_row, steps=steps, lr=lr, seed=seed,
            ewc_lambda=ewc_lambda, fisher_samples=fisher_samples, rank=rank,
            evaluate=evaluate, progress=progress, fisher_states=fisher_states,
            num_envs=num_envs,
        )  # fmt: skip
        timings[method] = time.perf_counter() - tick
    merged: dict[str, list[dict[str, Any]]] = {}
    for merge in merges:
        tick = time.perf_counter()
        one = merged_policy(policy, results["adapters"]["bank"], merge)
        merged[merge] = evaluate(lambda _family, p=one: p)
        timings[f"merge_{merge}"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - began

    payload = {
        "seed": seed,
        "families": families,
        "settings": {
            "demos_per_family": demos_per_family,
            "demos_by_family": {
                f: len(np.unique(d.episode_index[d.frames])) for f, d in tasks.items()
            },
            "first_steps": first_steps,
            "steps": steps,
            "lr": lr,
            "ewc_lambda": ewc_lambda,
            "fisher_samples": fisher_samples,
            "fisher_states": fisher_states,
            "rank": rank,
            "eval_episodes": eval_episodes,
            "merge_parameters": {m: dict(MERGE_METHODS[m].params) for m in merges},
        },
        "methods": {m: _method_record(r) for m, r in results.items()},
        "merged": {m: {"success": rates([row])[0], "cells": row} for m, row in merged.items()},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    if "adapters" in results:
        payload["separate_adapters"] = rates(results["adapters"]["rows"])[-1]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "continual.json", json.dumps(payload, indent=2) + "\n")
    plot_matrices(payload, out / FIGURE)
    atomic_write_text(out / "report.md", report(payload))
    return payload


# --------------------------------------------------------------------------- outputs
def _method_record(result: dict[str, Any]) -> dict[str, Any]:
    """One method's entry of ``continual.json``: its matrix, cells, metrics and losses."""
    R = rates(result["rows"])
    record = {
        "R": R,
        "cells": result["rows"],
        "metrics": summary(R),
        "forgetting_after": forgetting_after(R),
        "train_loss": result["train_loss"],
    }
    if result["ewc_penalty"]:
        record["ewc_penalty"] = result["ewc_penalty"]
    return record


def report(payload: dict[str, Any]) -> str:
    """``report.md``: the metrics per method, each matrix, the merged adapters."""
    families = payload["families"]
    episodes = payload["settings"]["eval_episodes"]
    lines = [
        f"# Continual learning over {' -> '.join(families)} (seed {payload['seed']})",
        "",
        f"Success on {episodes} held-out seeds per family after each family "
        "(R[i][j]: after training family i, on family j).",
        "",
        f"![accuracy matrices]({FIGURE})",
        "",
        "| method | average success | backward transfer | forgetting | forgetting after "
        "each family |",
        "|---|---|---|---|---|",
    ]
    for method, result in payload["methods"].items():
        m = result["metrics"]
        steps = ", ".join(f"{v:.2f}" for v in result["forgetting_after"])
        lines.append(
            f"| {method} | {m['average_accuracy']:.3f} | {m['backward_transfer']:+.3f} "
            f"| {m['forgetting']:.3f} | {steps} |"
        )
    lines.append("")
    for method, result in payload["methods"].items():
        lines += [f"## {method}", "", "| after \\ on | " + " | ".join(families) + " |"]
        lines.append("|---" * (len(families) + 1) + "|")
        for family, row in zip(families, result["cells"], strict=False):
            cells = [
                f"{c['success_rate']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]" for c in row
            ]
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
        lines.append("")
    if payload["merged"]:
        lines += [
            "## One merged adapter against the routed bank",
            "",
            "| policy | " + " | ".join(families) + " | mean |",
            "|---" * (len(families) + 2) + "|",
        ]
        separate = payload.get("separate_adapters")
        if separate:
            lines.append(_rate_row("separate adapters (routed by family)", separate))
        for merge, result in payload["merged"].items():
            lines.append(_rate_row(f"merged: {merge}", result["success"]))
        lines.append("")
    lines += [f"Timings (s): {payload['timings_s']}", ""]
    return "\n".join(lines)


def _rate_row(label: str, values: Sequence[float]) -> str:
    cells = " | ".join(f"{v:.2f}" for v in values)
    return f"| {label} | {cells} | {float(np.mean(values)):.2f} |"


def plot_matrices(payload: dict[str, Any], path: str | Path) -> Path:
    """One heat map of R per method, side by side (rows: after family i; columns: on j)."""
    families = payload["families"]
    methods = list(payload["methods"])
    fig = Figure(figsize=(3.2 * len(methods) + 0.8, 3.6))
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    image = None
    for ax, method in zip(axes, methods, strict=True):
        R = np.asarray(payload["methods"][method]["R"])
        image = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
        for (i, j), value in np.ndenumerate(R):
            colour = "black" if value > 0.6 else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=8)
        ticks = range(len(families))
        ax.set_xticks(ticks, labels=families, rotation=45, ha="right", fontsize=7)
        rows = [f"after {f}" for f in families] if ax is axes[0] else []
        ax.set_yticks(ticks, labels=rows, fontsize=7)
        steps = ", ".join(f"{v:.2f}" for v in forgetting_after(R.tolist()))
        ax.set_title(f"{method}\nforgetting after each: {steps}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.02)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.robotics.continual",
        description="Learn the tabletop task families in sequence (naive, EWC, replay, "
        "per-family adapters) and merge the adapters; writes the accuracy matrices.",
    )
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(ORDER))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--merges", nargs="*", choices=sorted(MERGE_METHODS), default=list(MERGES))
    parser.add_argument("--demos", type=int, default=300, help="demonstrations per family")
    parser.add_argument("--first-steps", type=int, default=800, help="steps on the first family")
    parser.add_argument("--steps", type=int, default=400, help="steps on each later family")
    parser.add_argument("--ewc-lambda", type=float, default=100.0)
    parser.add_argument(
        "--fisher-states",
        choices=FISHER_STATES,
        default="demos",
        help="EWC's Fisher on the family's demonstrations or the policy's own rollouts",
    )
    parser.add_argument("--eval-episodes", type=int, default=40, help="held-out seeds per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/robotics_continual"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        payload = run(
            args.out, families=args.families, methods=args.methods, merges=args.merges,
            demos_per_family=args.demos, first_steps=args.first_steps, steps=args.steps,
            ewc_lambda=args.ewc_lambda, fisher_states=args.fisher_states,
            eval_episodes=args.eval_episodes, seed=args.seed,
            progress=not args.quiet,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    for method, result in payload["methods"].items():
        m = result["metrics"]
        print(
            f"{method}: average success {m['average_accuracy']:.2f}, forgetting "
            f"{m['forgetting']:.2f}, backward transfer {m['backward_transfer']:+.2f}"
        )
    for merge, result in payload["merged"].items():
        print(f"merged ({merge}): " + ", ".join(f"{v:.2f}" for v in result["success"]))
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
