"""``python -m apps.robotics.online``: RoboFuME-style online self-improvement on a target family.

RoboFuME (Yang et al. 2023) pre-trains a multi-task policy offline on prior data, then
improves it on a new task from its own rollouts, with a learned success classifier as the
only reward. Here, on the embedded tabletop suite:

1. **Prior**: behaviour cloning on scripted demonstrations of the *other* families
   (``--prior``; default ``which_target`` and ``ordering``), with the default recipe's policy
   (frozen trunk, top block and new layers trained, instruction augmentation).
2. **Success classifier** (:mod:`apps.robotics.success`) trained on labelled rollouts of
   every family, scored against the simulator on held-out rollouts.
3. **Rounds**: the policy runs on training seeds of the **target** family (``--target``,
   default ``which_object``) with exploration noise; the classifier judges each rollout's
   final frame; the policy is fine-tuned on its own rollouts mixed half and half with the
   prior demonstrations (so the prior tasks are replayed), by one of two methods:

   - ``filtered_bc``: behaviour cloning on the classifier-positive rollouts only;
   - ``awr``: advantage-weighted regression (Peng et al. 2019) with Monte-Carlo returns: every
     rollout is cloned with weight ``exp((r - mean r) / beta)`` (clipped at
     :data:`AWR_MAX_WEIGHT`), ``r`` the classifier's 0/1 verdict and the round's mean
     success as the value baseline. Samples are drawn in proportion to the weight, which is
     the weighted loss in expectation.

   After each round the policy is tested closed loop on 100 held-out target seeds: the
   simulator's success (with its Wilson interval) and the classifier's verdict on the same
   final frames, side by side.

Outputs under ``--out``: ``online.json`` (every round of every method), ``report.md`` and
``success_over_rounds.png``. The simulator's success is never used for training: only for
the report.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_write, atomic_write_text

from .augment import InstructionAugmenter
from .behaviour_cloning import Source, build_policy, ensembling, rollout_dataset, train_policy
from .data import ChunkDataset, RoboticsDataModule
from .envs import FAMILIES
from .envs.instructions import check_family
from .envs.tabletop import MAX_SPEED
from .evaluation import EpisodeResult, eval_seeds, rollout
from .model import TextFn
from .policy import VLAPolicy
from .success import (
    HELD_OUT_INDEX,
    SuccessClassifier,
    binary_metrics,
    fit_classifier,
    load_classifier,
    record_labelled_rollouts,
    score_classifier,
)

#: Online methods (``--methods``).
METHODS: tuple[str, ...] = ("filtered_bc", "awr")
#: First env seed of the policy's own training rollouts: apart from the demonstrations
#: (< 10^9), the evaluation (10^9 + i) and the classifier's labelled rollouts (2 * 10^9 + ...).
ONLINE_SEED_BASE = 3 * 10**9
#: AWR's weight clip (Peng et al. 2019 clip exp-advantages at 20).
AWR_MAX_WEIGHT = 20.0
#: The plot of success over rounds.
FIGURE = "success_over_rounds.png"


# --------------------------------------------------------------------------- rewards
def awr_weights(rewards: np.ndarray, beta: float = 0.5) -> np.ndarray:
    """Per-rollout AWR weights ``min(exp((r - mean r) / beta), AWR_MAX_WEIGHT)``."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if beta <= 0:
        raise ValueError(f"awr beta={beta} must be > 0")
    if not len(rewards):
        return rewards
    return np.minimum(np.exp((rewards - rewards.mean()) / beta), AWR_MAX_WEIGHT)


# --------------------------------------------------------------------------- rounds
@dataclass
class RoundResult:
    """One round of one method: what was collected and how the policy then did."""

    round: int
    rollouts: int = 0
    classifier_positive: int = 0
    true_positive_rollouts: int = 0
    test_success: dict[str, Any] = field(default_factory=dict)
    test_classifier_rate: float = 0.0
    test_classifier_agreement: float = 0.0
    train_loss: float | None = None
    classifier_on_rollouts: dict[str, float] = field(default_factory=dict)


def _test(
    policy: VLAPolicy,
    classifier: SuccessClassifier,
    target: str,
    episodes: int,
    num_envs: int,
) -> tuple[dict[str, Any], float, float]:
    """Closed loop on held-out target seeds: the simulator's summary, the classifier's
    success rate on the same final frames and its agreement with the simulator."""
    result = rollout(
        policy,
        eval_seeds(episodes),
        env_options={"families": [target]},
        executor=ensembling(policy),
        num_envs=num_envs,
        progress=False,
    )
    truth = np.array([e.success for e in result.episodes])
    judged = _verdicts(classifier, result.episodes)
    return result.summary().to_dict(), float(judged.mean()), float((judged == truth).mean())


def _verdicts(classifier: SuccessClassifier, episodes: Sequence[EpisodeResult]) -> np.ndarray:
    """The classifier's success verdict (bool) on each episode's final frame."""
    finals = np.stack([e.final_frame for e in episodes])
    return classifier.probability(finals, [e.instruction for e in episodes]) >= 0.5


def run_method(
    method: str,
    prior_policy: VLAPolicy,
    prior_data: ChunkDataset,
    classifier: SuccessClassifier,
    *,
    target: str,
    rounds: int,
    rollouts_per_round: int,
    steps_per_round: int,
    test_episodes: int,
    seed: int,
    noise: float,
    lr: float,
    beta: float,
    num_envs: int,
    progress: bool,
    start: RoundResult,
) -> list[RoundResult]:
    """Rounds of collect -> classify -> fine-tune -> test for one method (module docstring),
    from a copy of the prior policy; ``start`` is the prior's round-0 result."""
    if method not in METHODS:
        raise ValueError(f"unknown online method {method!r}: choose from {list(METHODS)}")
    policy = copy.deepcopy(prior_policy)
    buffers: list[Source] = []
    history = [start]
    for r in range(1, rounds + 1):
        first = ONLINE_SEED_BASE + seed * 1_000_003 + (r - 1) * rollouts_per_round
        collected = rollout(
            policy,
            range(first, first + rollouts_per_round),
            env_options={"families": [target]},
            executor=ensembling(policy),
            num_envs=num_envs,
            record_transitions=True,
            action_noise=noise,
            progress=progress,
            desc=f"{method} round {r} rollouts",
        )
        episodes = collected.episodes
        verdict = _verdicts(classifier, episodes)
        if method == "filtered_bc":
            weights = verdict.astype(np.float64)
        else:
            weights = awr_weights(verdict.astype(np.float64), beta)
        keep = [e for e, w in zip(episodes, weights, strict=True) if w > 0]
        kept_w = [w for w in weights if w > 0]
        if keep:
            data = rollout_dataset(policy, keep, policy.chunk_size)
            steps_w = np.repeat(kept_w, [len(e.actions) for e in keep])
            buffers.append(Source(data, torch.as_tensor(steps_w, dtype=torch.float64)))
        loss = None
        if buffers:
            online = _merge(buffers)
            losses = train_policy(
                policy,
                [Source(prior_data, share=0.5), Source(online.dataset, online.weights, 0.5)],
                steps_per_round,
                lr=lr,
                seed=seed * 1000 + r,
                progress=progress,
                desc=f"{method} round {r} fine-tune",
            )
            loss = float(np.mean(losses[-50:]))
        summary, judged, agreement = _test(policy, classifier, target, test_episodes, num_envs)
        history.append(
            RoundResult(
                round=r,
                rollouts=len(episodes),
                classifier_positive=int(verdict.sum()),
                true_positive_rollouts=int(sum(e.success for e in episodes)),
                test_success=summary,
                test_classifier_rate=judged,
                test_classifier_agreement=agreement,
                train_loss=loss,
                classifier_on_rollouts=binary_metrics(
                    verdict, np.array([e.success for e in episodes])
                ),
            )
        )
    return history


def _merge(sources: Sequence[Source]) -> Source:
    """One source of several rollout datasets (frames concatenated, weights kept)."""
    if len(sources) == 1:
        return sources[0]
    sets = [s.dataset for s in sources]
    offsets = np.cumsum([0] + [len(d.images) for d in sets[:-1]])
    task_offsets = np.cumsum([0] + [len(d.tasks) for d in sets[:-1]])
    merged = ChunkDataset(
        torch.cat([d.images for d in sets]),
        torch.cat([d.proprio for d in sets]),
        torch.cat([d.actions for d in sets]),
        np.concatenate([d.episode_end + o for d, o in zip(sets, offsets, strict=True)]),
        np.concatenate([d.episode_index + t for d, t in zip(sets, task_offsets, strict=True)]),
        np.concatenate([d.instructions + t for d, t in zip(sets, task_offsets, strict=True)]),
        [t for d in sets for t in d.tasks],
        np.concatenate([d.frames + o for d, o in zip(sets, offsets, strict=True)]),
        sets[0].chunk_size,
    )
    weights = torch.cat([s.weights for s in sources])
    return Source(merged, weights)


# --------------------------------------------------------------------------- the whole run
def run(
    out: str | Path,
    *,
    target: str = "which_object",
    prior: Sequence[str] | None = None,
    prior_demos: int = 800,
    prior_steps: int = 1500,
    classifier_episodes: int = 2000,
    classifier_val_episodes: int = 300,
    classifier_steps: int = 3000,
    methods: Sequence[str] = METHODS,
    rounds: int = 3,
    rollouts_per_round: int = 100,
    steps_per_round: int = 200,
    test_episodes: int = 100,
    noise: float = 0.1 * MAX_SPEED,
    lr: float = 3e-4,
    beta: float = 0.5,
    seed: int = 0,
    num_envs: int = 25,
    progress: bool = True,
    cache_dir: str | None = None,
    text_tower: TextFn | None = None,
    policy_options: dict[str, Any] | None = None,
    classifier_path: str | Path | None = None,
) -> dict[str, Any]:
    """The whole experiment (module docstring); writes ``online.json``, ``report.md`` and
    the plot under ``out`` and returns the results. ``text_tower`` (default MiniLM) and
    ``policy_options`` (encoder options) are for tests and small runs. ``classifier_path``:
    a classifier saved by ``python -m apps.robotics.success`` instead of training one here
    (it is still scored on this run's held-out labelled rollouts)."""
    target = check_family(target)
    prior = [check_family(f) for f in (prior or [f for f in FAMILIES if f != target])]
    if target in prior:
        raise ValueError(f"--target {target} must not be among the prior families {prior}")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"methods {unknown or '[]'}: choose from {list(METHODS)}")
    out = Path(out)
    began = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(seed)

    data = RoboticsDataModule(episodes=prior_demos, families=prior, seed=seed, cache_dir=cache_dir)
    data.setup("fit")
    policy = build_policy(seed, text_tower=text_tower, **(policy_options or {}))
    policy.normalizer = data.normalizer
    prior_data = data.train_dataloader().dataset
    augmenter = InstructionAugmenter(0.5, 64, seed)
    train_policy(
        policy, [Source(prior_data)], prior_steps, seed=seed, augmenter=augmenter,
        progress=progress, desc="prior policy",
    )  # fmt: skip
    timings["prior"] = time.perf_counter() - began

    tick = time.perf_counter()
    held_out = record_labelled_rollouts(
        classifier_val_episodes, seed, first_index=HELD_OUT_INDEX, progress=progress
    )
    if classifier_path is not None:
        classifier = load_classifier(classifier_path, text_tower=text_tower)
    else:
        labelled = record_labelled_rollouts(
            classifier_episodes, seed, mid_frames=2, progress=progress
        )
        classifier = SuccessClassifier(init_seed=seed, text_tower=text_tower)
        fit_classifier(classifier, labelled, steps=classifier_steps, seed=seed, progress=progress)
    classifier_scores = score_classifier(classifier, held_out)
    timings["classifier"] = time.perf_counter() - tick

    tick = time.perf_counter()
    summary, judged, agreement = _test(policy, classifier, target, test_episodes, num_envs)
    start = RoundResult(
        round=0,
        test_success=summary,
        test_classifier_rate=judged,
        test_classifier_agreement=agreement,
    )
    results: dict[str, list[RoundResult]] = {}
    for method in methods:
        results[method] = run_method(
            method, policy, prior_data, classifier, target=target, rounds=rounds,
            rollouts_per_round=rollouts_per_round, steps_per_round=steps_per_round,
            test_episodes=test_episodes, seed=seed, noise=noise, lr=lr, beta=beta,
            num_envs=num_envs, progress=progress, start=start,
        )  # fmt: skip
    timings["online"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - began

    payload = {
        "seed": seed,
        "target": target,
        "prior": prior,
        "settings": {
            "prior_demos": prior_demos,
            "prior_steps": prior_steps,
            "classifier_episodes": classifier_episodes,
            "rounds": rounds,
            "rollouts_per_round": rollouts_per_round,
            "steps_per_round": steps_per_round,
            "test_episodes": test_episodes,
            "noise": noise,
            "lr": lr,
            "beta": beta,
        },
        "classifier": {"held_out": classifier_scores},
        "methods": {m: [vars(r) for r in rs] for m, rs in results.items()},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "online.json", json.dumps(payload, indent=2) + "\n")
    plot_rounds(payload, out / FIGURE)
    atomic_write_text(out / "report.md", report(payload))
    return payload


# --------------------------------------------------------------------------- outputs
def report(payload: dict[str, Any]) -> str:
    """``report.md``: the classifier's held-out agreement and a table per method."""
    final = payload["classifier"]["held_out"]["final"]
    lines = [
        f"# Online self-improvement on `{payload['target']}` (seed {payload['seed']})",
        "",
        f"Prior families: {', '.join(payload['prior'])}. Success classifier on held-out "
        f"labelled rollouts: agreement {final['accuracy']:.3f}, precision "
        f"{final['precision']:.3f}, recall {final['recall']:.3f} (n = {final['count']}).",
        "",
        f"![success over rounds]({FIGURE})",
        "",
    ]
    for method, rounds in payload["methods"].items():
        lines += [
            f"## {method}",
            "",
            "| round | rollouts | classifier-positive (true) | test success | 95 % interval "
            "| classifier's test success | agreement |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rounds:
            s = r["test_success"]
            lines.append(
                f"| {r['round']} | {r['rollouts']} | {r['classifier_positive']} "
                f"({r['true_positive_rollouts']}) | {s['success_rate']:.2f} | "
                f"{s['ci_low']:.2f}-{s['ci_high']:.2f} "
                f"| {r['test_classifier_rate']:.2f} | {r['test_classifier_agreement']:.2f} |"
            )
        lines.append("")
    lines += [f"Timings (s): {payload['timings_s']}", ""]
    return "\n".join(lines)


def plot_rounds(payload: dict[str, Any], path: str | Path) -> Path:
    """Success over rounds per method: the simulator's (with its interval) and the
    classifier's verdict on the same final frames (dashed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for i, (method, rounds) in enumerate(payload["methods"].items()):
        colour = f"C{i}"
        xs = [r["round"] for r in rounds]
        summaries = [r["test_success"] for r in rounds]
        rates = [s["success_rate"] for s in summaries]
        errors = [
            [s["success_rate"] - s["ci_low"] for s in summaries],
            [s["ci_high"] - s["success_rate"] for s in summaries],
        ]
        ax.errorbar(xs, rates, yerr=errors, color=colour, marker="o", capsize=3,
                    label=f"{method}: simulator")  # fmt: skip
        ax.plot(xs, [r["test_classifier_rate"] for r in rounds], color=colour, ls="--",
                marker="x", label=f"{method}: classifier")  # fmt: skip
    ax.set_xticks(sorted({r["round"] for rounds in payload["methods"].values() for r in rounds}))
    ax.set_xlabel("round of online rollouts")
    ax.set_ylabel(f"success on held-out {payload['target']} seeds")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.robotics.online",
        description="Pre-train a policy on prior task families, then improve it on a target "
        "family from its own rollouts rewarded by a learned success classifier.",
    )
    parser.add_argument("--target", choices=FAMILIES, default="which_object")
    parser.add_argument("--prior", nargs="+", choices=FAMILIES, default=None)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--prior-demos", type=int, default=800)
    parser.add_argument("--prior-steps", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=100, help="rollouts per round")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps per round")
    parser.add_argument("--test-episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="a classifier.pt from python -m apps.robotics.success (default: train one here)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/robotics_online"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        payload = run(
            args.out, target=args.target, prior=args.prior, methods=args.methods,
            prior_demos=args.prior_demos, prior_steps=args.prior_steps, rounds=args.rounds,
            rollouts_per_round=args.rollouts, steps_per_round=args.steps,
            test_episodes=args.test_episodes, seed=args.seed, progress=not args.quiet,
            classifier_path=args.classifier,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    for method, rounds in payload["methods"].items():
        rates = " -> ".join(f"{r['test_success']['success_rate']:.2f}" for r in rounds)
        print(f"{method}: target success by round {rates}")
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
