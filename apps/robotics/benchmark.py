"""``python -m apps.robotics.benchmark``: issue #22's ablations over seeds, with Wilson intervals.

Studies (``--studies``, default all; :data:`STUDIES` lists their arms, the reference first):

* ``data``: TinyVLA's data-efficiency claim: ImageNet-pretrained against randomly initialised
  towers (``random_towers.yaml``) at 20 and 80 demonstrations (``--demos``);
* ``heads``: the L1 action-chunk head (default) against OpenVLA's tokens and a diffusion head;
* ``execution``: temporal ensembling (default) against receding-horizon and open-loop chunks;
* ``adapters``: full fine-tuning of the top block (default) against LoRA, DoRA and SSF on it.

Every run is ``python -m apps.robotics.train`` (fit, then the closed-loop test) in-process,
with ``seed_everything`` and ``data.seed`` (the demonstrations, the split and the random
towers' initialisation) both set to the seed. Arms that change nothing share one run: the
default recipe is fitted once per seed and serves ``heads/l1_chunk``, ``execution/ensemble``
and ``adapters/top``. The execution arms only change the test, so they re-test the default
run's checkpoint (``python -m apps.robotics.train test --config <run>/config.yaml --ckpt_path
<ckpt> --model.execution <mode>``); since a test refuses a model option that differs from the
checkpoint's hyperparameters, ``<ckpt>`` is a copy of ``last.ckpt`` with only
``execution`` changed: the same weights.

Outputs under ``--out`` (default ``runs/robotics_benchmark``):

* ``results.json``: one record per (study, arm, seed): demonstrations, the success summary
  per instruction condition (successes, trials, rate, Wilson interval) and per baseline, the
  test metrics and the run folder; rewritten atomically after each run, so ``--resume`` keeps
  the finished ones;
* ``summary.md``: a table per study (successes pooled over seeds with their Wilson interval,
  and the mean ± std of the per-seed rates), whether pretrained towers beat random ones with
  separated intervals, the baselines and the command;
* ``success_vs_demos.png``: the data study's success against demonstrations.

Other arguments go to every training run (e.g. ``--config apps/robotics/configs/tiny.yaml``
or ``--trainer.max_steps 600 --model.eval_episodes 50``); a re-test reads them from the
default run's ``config.yaml``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import atomic_write, atomic_write_text
from core.benchmarking import mean_std, write_summary

from .intervals import SuccessSummary, separated
from .module import EVALUATION_FILE, EXECUTIONS
from .train import CONFIG_DIR

#: Instruction conditions of the closed-loop test, in table order.
CONDITIONS = ("trained", "paraphrase", "blank")
#: Demonstration counts of the data study.
DEMOS = (20, 80)
#: Options the benchmark sets on every run itself (``--seeds``, ``--out``).
OWN_OPTIONS = ("--seed_everything", "--data.seed", "--trainer.default_root_dir")
#: The success-vs-demos figure.
FIGURE = "success_vs_demos.png"


@dataclass(frozen=True)
class Arm:
    """One arm of a study: what its run changes from the default recipe.

    Attributes:
        name: The arm's name in the tables and ``--arms``.
        recipe: A recipe file in ``apps/robotics/configs`` laid over the default (None: none).
        demos: ``data.episodes`` (None: the recipe's).
        execution: Re-test the default run's checkpoint with this ``model.execution`` instead
            of training (None: fit, then test).
    """

    name: str
    recipe: str | None = None
    demos: int | None = None
    execution: str | None = None

    def __post_init__(self) -> None:
        if self.execution is not None and (self.recipe or self.demos is not None):
            raise ValueError(f"arm {self.name!r}: a re-test arm reuses the default run as is")
        if self.execution is not None and self.execution not in EXECUTIONS:
            raise ValueError(f"arm {self.name!r}: execution must be one of {list(EXECUTIONS)}")
        if self.recipe is not None and not (CONFIG_DIR / self.recipe).is_file():
            raise FileNotFoundError(f"arm {self.name!r}: no recipe {CONFIG_DIR / self.recipe}")

    @property
    def run(self) -> str:
        """The run behind the arm; arms with the same run share it (``default``: the recipe
        alone; ``default+<execution>``: a re-test of the default run)."""
        if self.execution is not None:
            return f"default+{self.execution}"
        name = Path(self.recipe).stem if self.recipe else "default"
        return name if self.demos is None else f"{name}@{self.demos}"


def data_arms(demos: Iterable[int] = DEMOS) -> tuple[Arm, ...]:
    """Pretrained and randomly initialised towers at each demonstration count."""
    return tuple(
        arm
        for d in demos
        for arm in (Arm(f"pretrained@{d}", demos=d), Arm(f"random@{d}", "random_towers.yaml", d))
    )


def studies(demos: Iterable[int] = DEMOS) -> dict[str, tuple[Arm, ...]]:
    """Every study's arms, the reference arm (the default recipe) first."""
    return {
        "data": data_arms(demos),
        "heads": (
            Arm("l1_chunk"),
            Arm("tokens", "tokens.yaml"),
            Arm("diffusion", "diffusion.yaml"),
        ),
        "execution": (
            Arm("ensemble"),
            Arm("receding", execution="receding"),
            Arm("open_loop", execution="open_loop"),
        ),
        "adapters": (
            Arm("top"),
            Arm("lora", "lora.yaml"),
            Arm("dora", "dora.yaml"),
            Arm("ssf", "ssf.yaml"),
        ),
    }


#: study -> arms, with the default demonstration counts (``--studies`` picks from these).
STUDIES = studies()


# --------------------------------------------------------------------------- command lines
def fit_args(arm: Arm, seed: int, root: Path, extra: Sequence[str] = ()) -> list[str]:
    """The training command line of ``arm`` (no subcommand: fit, then test).

    The recipe comes first so that ``extra`` (e.g. ``--config tiny.yaml``) is laid over it;
    the arm's demonstrations and the seed come last so that nothing overrides them.
    """
    if arm.execution is not None:
        raise ValueError(f"arm {arm.name!r} re-tests the default run; see retest_args")
    args = ["--config", str(CONFIG_DIR / arm.recipe)] if arm.recipe else []
    args += list(extra)
    if arm.demos is not None:
        args += ["--data.episodes", str(arm.demos)]
    return [*args, "--seed_everything", str(seed), "--data.seed", str(seed),
            "--trainer.default_root_dir", str(root)]  # fmt: skip


def retest_args(arm: Arm, base_run_dir: Path, ckpt: Path, root: Path) -> list[str]:
    """The command line that re-tests the default run ``base_run_dir`` with ``arm.execution``
    (its ``config.yaml`` holds the seed, the data and every option the run was given)."""
    if arm.execution is None:
        raise ValueError(f"arm {arm.name!r} trains its own run; see fit_args")
    return ["test", "--config", str(base_run_dir / "config.yaml"),
            "--model.execution", arm.execution, "--ckpt_path", str(ckpt),
            "--trainer.default_root_dir", str(root)]  # fmt: skip


def retest_checkpoint(source: Path, execution: str, path: Path) -> Path:
    """Copy the checkpoint ``source`` to ``path`` with ``model.execution`` set to ``execution``.

    A test refuses ``--model.execution`` when it differs from the checkpoint's hyperparameter
    (``core.training.ckpt_checks``); the copy carries the same weights and normaliser.
    """
    import torch

    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: the default run has no last checkpoint to re-test; rerun it without "
            "--resume"
        )
    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    ckpt.setdefault("hyper_parameters", {})["execution"] = execution
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


# --------------------------------------------------------------------------- runs
def _success(entry: dict[str, Any]) -> dict[str, Any]:
    """The summary fields of one ``evaluation.json`` entry."""
    return {
        "successes": int(entry["successes"]),
        "trials": int(entry["trials"]),
        "rate": float(entry["success_rate"]),
        "low": float(entry["ci_low"]),
        "high": float(entry["ci_high"]),
        "mean_steps": float(entry["mean_steps"]),
        "mean_success_steps": entry.get("mean_success_steps"),
    }


def read_run(run_dir: Path) -> dict[str, Any]:
    """A finished run's results: success per condition and baseline, test metrics, folder."""
    evaluation_file = run_dir / EVALUATION_FILE
    if not evaluation_file.is_file():
        raise FileNotFoundError(f"{evaluation_file}: the run's closed-loop test wrote nothing")
    evaluation = json.loads(evaluation_file.read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text()).get("test", {})
    return {
        "success": {k: _success(v) for k, v in evaluation["conditions"].items()},
        "baselines": {k: _success(v) for k, v in evaluation["baselines"].items()},
        "executor": evaluation.get("settings", {}).get("executor"),
        "metrics": {k.removeprefix("test/"): v for k, v in metrics.items()},
        "run_dir": str(run_dir),
    }


def fit_run(arm: Arm, seed: int, root: Path, extra: Sequence[str]) -> dict[str, Any]:
    """Fit and test ``arm`` with ``seed`` under ``root``; return :func:`read_run`'s results."""
    from .train import main

    cli = main(fit_args(arm, seed, root, extra))
    run_dir = Path(cli.trainer.log_dir)
    return {**read_run(run_dir), "demos": cli.datamodule.episodes}


def retest_run(arm: Arm, base: dict[str, Any], root: Path) -> dict[str, Any]:
    """Re-test the default run ``base`` (its results) with ``arm.execution`` under ``root``."""
    from .train import main

    base_dir = Path(base["run_dir"])
    ckpt = retest_checkpoint(
        base_dir / "checkpoints" / "last.ckpt", arm.execution, root / f"{arm.execution}.ckpt"
    )
    cli = main(retest_args(arm, base_dir, ckpt, root))
    return {
        **read_run(Path(cli.trainer.log_dir)),
        "demos": base["demos"],
        "retest_of": str(base_dir),
    }


def run_root(out: Path, arm: Arm, seed: int) -> Path:
    """Where the run of ``arm`` with ``seed`` goes (``<out>/runs/<run>/seed<seed>``)."""
    return out / "runs" / arm.run / f"seed{seed}"


class Runner:
    """Runs each (run, seed) once and remembers its results, so arms can share runs."""

    def __init__(self, out: Path, extra: Sequence[str], done: Sequence[dict[str, Any]] = ()):
        self.out, self.extra = out, list(extra)
        self.results: dict[tuple[str, int], dict[str, Any]] = {
            (r["run"], r["seed"]): _run_fields(r) for r in done
        }

    def __call__(self, arm: Arm, seed: int) -> dict[str, Any]:
        """The results of ``arm``'s run with ``seed``, running it (and its base) if needed."""
        key = (arm.run, seed)
        if key not in self.results:
            root = run_root(self.out, arm, seed)
            if arm.execution is None:
                self.results[key] = fit_run(arm, seed, root, self.extra)
            else:
                self.results[key] = retest_run(arm, self(Arm("default"), seed), root)
        return self.results[key]


def _run_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its study, arm, run and seed: the results of its run."""
    return {k: v for k, v in record.items() if k not in ("study", "arm", "run", "seed")}


# --------------------------------------------------------------------------- pooling
def summary_of(entry: dict[str, Any]) -> SuccessSummary:
    """A stored success entry as a :class:`SuccessSummary`."""
    return SuccessSummary(
        entry["successes"], entry["trials"], entry["mean_steps"], entry.get("mean_success_steps")
    )


def pooled(entries: Sequence[dict[str, Any]]) -> SuccessSummary | None:
    """Successes and trials summed over seeds (None without any): its interval is the Wilson
    interval of all the episodes together."""
    if not entries:
        return None
    summaries = [summary_of(e) for e in entries]
    trials = sum(s.trials for s in summaries)
    successes = sum(s.successes for s in summaries)
    wins = [(s.mean_success_steps, s.successes) for s in summaries if s.mean_success_steps]
    return SuccessSummary(
        successes=successes,
        trials=trials,
        mean_steps=sum(s.mean_steps * s.trials for s in summaries) / trials,
        mean_success_steps=sum(m * n for m, n in wins) / successes if successes else None,
    )


def arm_records(records: Sequence[dict], study: str, arm: str) -> list[dict]:
    """The records of one arm (one per seed)."""
    return [r for r in records if (r["study"], r["arm"]) == (study, arm)]


def condition_entries(records: Sequence[dict], condition: str) -> list[dict[str, Any]]:
    """Each record's success entry for ``condition`` (records without it left out)."""
    return [r["success"][condition] for r in records if condition in r.get("success", {})]


def per_seed_rates(records: Sequence[dict], condition: str) -> list[float]:
    """The success rate of ``condition`` in each record (seed)."""
    return [e["rate"] for e in condition_entries(records, condition)]


# --------------------------------------------------------------------------- summary
def pooled_cell(summary: SuccessSummary | None) -> str:
    """``0.62 [0.56, 0.68] (186/300)``: pooled rate, Wilson interval, counts."""
    if summary is None:
        return "–"
    return (
        f"{summary.rate:.2f} [{summary.low:.2f}, {summary.high:.2f}] "
        f"({summary.successes}/{summary.trials})"
    )


def spread_cell(rates: Sequence[float]) -> str:
    """``0.62 ± 0.04``: mean ± sample std of the per-seed rates."""
    mean, std = mean_std(rates)
    return "–" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def study_table(records: Sequence[dict], study: str, arms: Sequence[str]) -> str:
    """One row per arm: seeds, demonstrations, pooled success per condition with its Wilson
    interval, and the mean ± std over seeds per condition."""
    header = (
        "| arm | demos | seeds | "
        + " | ".join(f"{c} (pooled, 95% CI)" for c in CONDITIONS)
        + " | "
        + " | ".join(f"{c} mean ± std" for c in CONDITIONS)
        + " |"
    )
    rows = [header, "|---" * (3 + 2 * len(CONDITIONS)) + "|"]
    for arm in arms:
        mine = arm_records(records, study, arm)
        if not mine:
            continue
        demos = sorted({r.get("demos") for r in mine}, key=str)
        seeds = ",".join(str(r["seed"]) for r in mine)
        pooled_cells = [pooled_cell(pooled(condition_entries(mine, c))) for c in CONDITIONS]
        spread_cells = [spread_cell(per_seed_rates(mine, c)) for c in CONDITIONS]
        rows.append(
            f"| {arm} | {','.join(map(str, demos))} | {seeds} | "
            + " | ".join(pooled_cells + spread_cells)
            + " |"
        )
    return "\n".join(rows)


def beats_line(records: Sequence[dict], demos: int) -> str | None:
    """Whether pretrained towers beat random ones at ``demos`` demonstrations (trained
    instructions, pooled over seeds): the intervals separated, yes or no (None: not run)."""
    better = pooled(
        condition_entries(arm_records(records, "data", f"pretrained@{demos}"), "trained")
    )
    worse = pooled(condition_entries(arm_records(records, "data", f"random@{demos}"), "trained"))
    if better is None or worse is None:
        return None
    verdict = "yes" if separated(better, worse) else "no"
    return (
        f"- pretrained beats random at {demos} demos: intervals separated {verdict} "
        f"(trained instructions, pooled: pretrained {pooled_cell(better)}, random "
        f"{pooled_cell(worse)})"
    )


def baselines_line(records: Sequence[dict]) -> str:
    """The baselines of the first record (every run tests on the same held-out seeds)."""
    for record in records:
        if record.get("baselines"):
            cells = [f"{k} {pooled_cell(summary_of(v))}" for k, v in record["baselines"].items()]
            return "Baselines on the same held-out seeds: " + "; ".join(cells) + "."
    return "No baselines recorded."


def demo_points(records: Sequence[dict]) -> dict[str, list[tuple[int, SuccessSummary]]]:
    """The data study's ``(demos, summary)`` per seed (trained instructions), per tower."""
    labels = {"pretrained": "ImageNet-pretrained towers", "random": "randomly initialised towers"}
    points: dict[str, list[tuple[int, SuccessSummary]]] = {}
    for record in records:
        kind = record["arm"].partition("@")[0]
        if record["study"] != "data" or "trained" not in record.get("success", {}):
            continue
        entry = (int(record["demos"]), summary_of(record["success"]["trained"]))
        points.setdefault(labels.get(kind, kind), []).append(entry)
    return points


STUDY_TITLES = {
    "data": "Data efficiency: pretrained vs randomly initialised towers",
    "heads": "Action heads",
    "execution": "Chunk execution (re-tests of the default run's checkpoint)",
    "adapters": "Adapters on the image tower's top block",
}


def summary_lines(
    records: Sequence[dict], arms: dict[str, tuple[Arm, ...]], seeds: Sequence[int]
) -> list[str]:
    """The markdown of ``summary.md`` (without the command line)."""
    lines = [
        "# Robotics: ablations of the VLA policy (issue #22)",
        "",
        f"Closed-loop success on held-out seeds per instruction condition, seeds {list(seeds)} "
        "(seed_everything = data.seed: demonstrations, split, random towers). Pooled: "
        "successes summed over seeds with the Wilson 95% interval of the total; mean ± std: "
        "of the per-seed rates.",
        "",
        baselines_line(records),
    ]
    for study, study_arms in arms.items():
        if not any(r["study"] == study for r in records):
            continue
        lines += ["", f"## {STUDY_TITLES.get(study, study)}", ""]
        lines.append(study_table(records, study, [a.name for a in study_arms]))
        if study == "data":
            demos = sorted({a.demos for a in study_arms if a.demos is not None})
            verdicts = [line for d in demos if (line := beats_line(records, d))]
            lines += ["", *verdicts] if verdicts else []
            if demo_points(records):
                lines += ["", f"![success vs demonstrations]({FIGURE})"]
    return lines


# --------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The benchmark's options, and the rest (passed to every training run)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any other option goes to every training run, e.g. --config "
        "apps/robotics/configs/tiny.yaml or --trainer.max_steps 600 --model.eval_episodes 50.",
        allow_abbrev=False,
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    parser.add_argument(
        "--arms", nargs="+", default=None,
        help="only these arms of the chosen studies (a re-test arm brings its default run)",
    )  # fmt: skip
    parser.add_argument("--demos", type=int, nargs="+", default=list(DEMOS),
                        help="demonstration counts of the data study")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="--trainer.max_steps of every run")
    parser.add_argument("--out", default="runs/robotics_benchmark")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the runs already in <out>/results.json (same study, arm and seed)",
    )  # fmt: skip
    args, extra = parser.parse_known_args(argv)
    check_extra(extra)
    if args.steps is not None:
        extra += ["--trainer.max_steps", str(args.steps)]
    return args, extra


def check_extra(extra: Sequence[str]) -> None:
    """Refuse a subcommand or an option the benchmark sets on each run itself."""
    for token in extra:
        if token in ("fit", "validate", "test", "predict"):
            raise ValueError(f"{token!r}: the benchmark picks the subcommand of each run")
        name = token.split("=", 1)[0]
        if name in OWN_OPTIONS:
            raise ValueError(f"{name} is set by the benchmark on every run: use --seeds / --out")


def select(
    names: Sequence[str], demos: Sequence[int], only: Sequence[str] | None
) -> dict[str, tuple[Arm, ...]]:
    """The chosen studies' arms; with ``only``, those arms (and the default run a re-test
    arm needs, as its study's reference arm)."""
    chosen = {name: studies(demos)[name] for name in names}
    if only is None:
        return chosen
    known = {arm.name for arms in chosen.values() for arm in arms}
    unknown = sorted(set(only) - known)
    if unknown:
        raise ValueError(
            f"--arms: unknown {unknown} in studies {list(names)}; known {sorted(known)}"
        )
    picked = {}
    for study, arms in chosen.items():
        keep = [a for a in arms if a.name in only]
        if any(a.execution for a in keep) and arms[0] not in keep:
            keep.insert(0, arms[0])
        if keep:
            picked[study] = tuple(keep)
    return picked


def write_results(path: Path, records: Sequence[dict], done: Sequence[dict]) -> Path:
    """Write ``records`` atomically, followed by the resumed ``done`` records this
    invocation did not select (so that resuming a subset of the studies loses nothing)."""

    def key(r: dict) -> tuple:
        return r["study"], r["arm"], r["seed"]

    mine = {key(r) for r in records}
    kept = [r for r in done if key(r) not in mine]
    return atomic_write_text(path, json.dumps([*records, *kept], indent=2) + "\n")


def run(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; return the path of ``summary.md``."""
    args, extra = parse_args(argv)
    out = Path(args.out)
    arms = select(args.studies, args.demos, args.arms)
    done: list[dict] = []
    if args.resume and (out / "results.json").is_file():
        done = json.loads((out / "results.json").read_text())
    runner = Runner(out, extra, done)
    jobs = [
        (s, arm, seed)
        for s, study_arms in arms.items()
        for arm in study_arms
        for seed in args.seeds
    ]
    records: list[dict] = []
    start = time.time()
    for i, (study, arm, seed) in enumerate(jobs, 1):
        kept = [r for r in done if (r["study"], r["arm"], r["seed"]) == (study, arm.name, seed)]
        if kept:
            records.append(kept[0])
            print(f"[benchmark] {i}/{len(jobs)} {study}/{arm.name} seed {seed}: kept from "
                  "results.json", flush=True)  # fmt: skip
            continue
        how = "re-test" if arm.execution else "fit + test"
        shared = (arm.run, seed) in runner.results
        print(f"[benchmark] {i}/{len(jobs)} {study}/{arm.name} seed {seed}: "
              f"{'reuses run ' + arm.run if shared else how}", flush=True)  # fmt: skip
        began = time.time()
        result = runner(arm, seed)
        records.append({"study": study, "arm": arm.name, "run": arm.run, "seed": seed, **result})
        write_results(out / "results.json", records, done)
        trained = result["success"].get("trained")
        rate = f"trained {trained['rate']:.2f} ({trained['successes']}/{trained['trials']})"
        print(f"[benchmark] {study}/{arm.name} seed {seed}: {rate if trained else 'done'}, "
              f"{(time.time() - began) / 60:.1f} min", flush=True)  # fmt: skip
    points = demo_points(records)
    if points:
        from .report import plot_success_vs_demos

        plot_success_vs_demos(points, out / FIGURE, "Trained instructions, per seed; line: mean")
    minutes = (time.time() - start) / 60
    lines = summary_lines(records, arms, args.seeds)
    lines += ["", f"{len(records)} records ({minutes:.1f} min in this invocation)."]
    return write_summary(out / "summary.md", lines, "apps.robotics.benchmark", argv)


if __name__ == "__main__":
    run()
