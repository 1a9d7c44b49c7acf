"""Record scripted-expert demonstrations of the tabletop suite as a LeRobotDataset v3.0.

``python -m apps.robotics.collect --episodes 200 --out DIR [--families ...] [--seed S]``

Why: the embedded default trains from demonstrations that cost nothing to make: the scripted
expert acts from the privileged state, and each of its episodes is stored in LeRobot's own
layout (:mod:`apps.robotics.dataset`), so the data module reads it exactly as it reads a
dataset recorded on a real robot.

What is recorded, one frame per control step (10 Hz): the camera image
``observation.images.top`` (PNG), the proprioception ``observation.state`` (pusher x, y: the
first two numbers of the env state), the privileged ``observation.environment_state`` (all 18
numbers, for analysis only: a policy must not read it) and the expert's ``action`` (vx, vy).
A frame holds the observation *before* its action; the final observation after the last
action is not stored (LeRobot's convention). The episode's ``task`` string is the instruction
text the episode was given (drawn from the training templates).

Determinism: the env seed of candidate episode ``i`` is ``seed * 1_000_003 + i``; candidates
run ``num_envs`` at a time in lockstep (:class:`~apps.robotics.envs.VectorEnv`) and the first
``episodes`` successful ones in seed order are kept, so the dataset depends on ``seed``,
``families``, ``episodes`` and ``image_size`` only, not on ``num_envs``. Failed expert
episodes (rare: the expert succeeds on about every seed) are dropped and counted.

Noise injection (DART, Laskey et al. 2017; ``action_noise`` > 0): the env executes the
expert's action plus Gaussian noise of that standard deviation (table units per second, per
axis), while the dataset records the expert's clean action. The demonstrations then visit the
states a slightly wrong policy reaches (a block pushed off line, past its goal) and show how
the expert recovers from them: behaviour cloning's compounding error is what it addresses.
The noise of episode ``i`` is drawn from a generator seeded by its env seed, so the data
still does not depend on ``num_envs``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from apps.robotics.dataset import Episode, make_features, vector_feature, write_dataset
from apps.robotics.envs import FAMILIES, VectorEnv
from apps.robotics.envs.instructions import check_family
from apps.robotics.envs.tabletop import CAMERA_KEYS, STATE_NAMES, TabletopEnv

__all__ = [
    "ENV_STATE",
    "PROPRIO_NAMES",
    "ROBOT_TYPE",
    "SEED_STRIDE",
    "CollectSummary",
    "collect",
    "collect_demonstrations",
    "episode_seed",
    "main",
]

log = logging.getLogger(__name__)

#: ``info.json``'s ``robot_type`` of the recorded datasets.
ROBOT_TYPE = "tabletop2d"
#: The privileged state feature (analysis only).
ENV_STATE = "observation.environment_state"
#: The proprioception's dimensions: the first two numbers of the env state.
PROPRIO_NAMES: tuple[str, ...] = STATE_NAMES[:2]
#: Env seeds of different ``seed`` values are this far apart (a prime, so runs never overlap
#: for fewer than a million candidate episodes).
SEED_STRIDE = 1_000_003


def episode_seed(seed: int, i: int) -> int:
    """The env seed of candidate episode ``i`` of a collection run with ``seed``.

    Raises:
        ValueError: the seed would reach the held-out evaluation seeds
            (``apps.robotics.evaluation.EVAL_SEED_BASE``): use a smaller run seed.
    """
    from apps.robotics.evaluation import EVAL_SEED_BASE

    env_seed = seed * SEED_STRIDE + i
    if env_seed >= EVAL_SEED_BASE:
        raise ValueError(
            f"collection seed {seed} (candidate {i}) gives env seed {env_seed}, inside the "
            f"held-out evaluation seeds (from {EVAL_SEED_BASE}); use a run seed below "
            f"{EVAL_SEED_BASE // SEED_STRIDE}"
        )
    return env_seed


@dataclass
class CollectSummary:
    """What a collection run recorded: where, how much, how long."""

    path: Path
    episodes: int = 0
    frames: int = 0
    failed: int = 0
    tasks: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        return (
            f"recorded {self.episodes} episodes, {self.frames} frames, {len(self.tasks)} tasks "
            f"in {self.seconds:.1f} s ({self.failed} failed expert episodes dropped) -> "
            f"{self.path}"
        )


def _features(image_size: int) -> dict[str, dict]:
    features = make_features(CAMERA_KEYS, (image_size, image_size, 3), PROPRIO_NAMES, ("vx", "vy"))
    features[ENV_STATE] = vector_feature(STATE_NAMES)
    return features


def _check_out(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` must be replaced (it exists); raise if it may not be."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(
            f"--out {str(out)!r} is an existing file, not a folder; choose another path"
        )
    if any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--out {str(out)!r} already exists and is not empty; choose another folder or "
            "pass --overwrite (overwrite=True) to replace it once the new dataset is complete"
        )
    return True


def _episodes(
    summary: CollectSummary,
    episodes: int,
    families: Sequence[str],
    seed: int,
    num_envs: int,
    image_size: int,
    progress: bool,
    action_noise: float = 0.0,
) -> Iterator[Episode]:
    """Successful expert episodes in seed order, ``num_envs`` candidates at a time."""
    vec = VectorEnv("tabletop", num_envs=num_envs, families=list(families), image_size=image_size)
    max_failed = max(20, episodes)
    bar = tqdm(total=episodes, desc="expert demos", unit="ep", disable=not progress)
    start = 0
    try:
        while summary.episodes < episodes:
            seeds = [episode_seed(seed, start + k) for k in range(num_envs)]
            start += num_envs
            obs, infos = vec.reset(seeds)
            noise = [np.random.default_rng((s, 1)) for s in seeds] if action_noise > 0 else []
            images: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
            states: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
            actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
            while not vec.done.all():
                act = vec.expert_actions()
                for i in np.flatnonzero(~vec.done):
                    images[i].append(obs["image"][i])
                    states[i].append(obs["state"][i])
                    actions[i].append(act[i])
                if noise:
                    act = act + np.stack([action_noise * g.standard_normal(2) for g in noise])
                obs, *_ = vec.step(act.astype(np.float32))
            success = vec.success
            for i in range(num_envs):
                if summary.episodes == episodes:
                    break
                if not success[i] or not actions[i]:  # an empty episode succeeded at reset
                    summary.failed += 1
                    if summary.failed > max_failed:
                        raise RuntimeError(
                            f"the scripted expert failed {summary.failed} of "
                            f"{start} episodes (families {list(families)}); the suite or "
                            "its expert is broken: run tests/apps/robotics/test_envs.py"
                        )
                    continue
                state = np.stack(states[i]).astype(np.float32)
                instruction = infos[i]["instruction"]
                summary.episodes += 1
                summary.frames += len(state)
                summary.tasks.add(instruction)
                bar.update(1)
                bar.set_postfix(frames=summary.frames, failed=summary.failed)
                yield Episode(
                    task=instruction,
                    data={
                        CAMERA_KEYS[0]: np.stack(images[i]),
                        "observation.state": state[:, : len(PROPRIO_NAMES)],
                        "action": np.stack(actions[i]).astype(np.float32),
                        ENV_STATE: state,
                    },
                )
    finally:
        bar.close()


def collect(
    out: str | Path,
    episodes: int,
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
    num_envs: int = 16,
    image_size: int = 96,
    overwrite: bool = False,
    progress: bool = True,
    action_noise: float = 0.0,
) -> CollectSummary:
    """Record ``episodes`` successful expert episodes into ``out``; return a summary.

    See :func:`collect_demonstrations` (same arguments; ``progress`` shows a tqdm bar).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not action_noise >= 0:
        raise ValueError(f"action_noise must be >= 0 (table units per second), got {action_noise}")
    if isinstance(families, str):
        families = [families]
    families = [check_family(f) for f in families]
    if not families:
        raise ValueError(f"families is empty: name at least one of {list(FAMILIES)}")
    TabletopEnv(image_size=image_size)  # checks image_size with the env's own message
    out = Path(out)
    replace = _check_out(out, overwrite)
    summary = CollectSummary(path=out)
    began = time.perf_counter()
    write_dataset(
        out,
        _episodes(
            summary,
            episodes,
            families,
            seed,
            min(num_envs, episodes),
            image_size,
            progress,
            float(action_noise),
        ),
        fps=TabletopEnv.fps,
        features=_features(image_size),
        robot_type=ROBOT_TYPE,
        overwrite=replace,
    )
    summary.seconds = time.perf_counter() - began
    if summary.failed:
        log.warning(
            "collect: the expert failed %d episode(s); they were dropped and replaced by the "
            "next seeds",
            summary.failed,
        )
    return summary


def collect_demonstrations(
    out: str | Path,
    episodes: int,
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
    num_envs: int = 16,
    image_size: int = 96,
    overwrite: bool = False,
    action_noise: float = 0.0,
) -> Path:
    """Record ``episodes`` successful scripted-expert episodes as a LeRobotDataset v3.0.

    Args:
        out: The dataset folder to create. It is written under a temporary name beside it and
            renamed into place when complete (nothing half-written is ever visible there).
        episodes: How many successful episodes to keep (failed ones are dropped, counted and
            replaced by the next seeds).
        families: Task families the env draws from (``apps.robotics.envs.FAMILIES``).
        seed: Run seed: candidate ``i`` uses env seed ``seed * 1_000_003 + i``.
        num_envs: Envs stepped in lockstep (speed only; the data does not depend on it).
        image_size: Camera resolution in pixels (square).
        overwrite: Replace a non-empty existing ``out`` (an empty folder is always reused).
        action_noise: Standard deviation of the Gaussian noise added to the executed action
            (DART; the clean expert action is recorded); 0 records the expert as it is.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        FileExistsError: ``out`` exists, is not empty and ``overwrite`` is False.
        ValueError: an unknown family or a bad count / size.
    """
    return collect(
        out, episodes, families, seed, num_envs, image_size, overwrite, action_noise=action_noise
    ).path


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse ``argv``, record, print a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m apps.robotics.collect",
        description="Record scripted-expert demonstrations of the tabletop suite as a "
        "LeRobotDataset v3.0 directory.",
    )
    parser.add_argument("--episodes", type=int, required=True, help="successful episodes to keep")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        default=list(FAMILIES),
        help="task families to draw from (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--num-envs", type=int, default=16, help="envs stepped in lockstep")
    parser.add_argument("--image-size", type=int, default=96, help="camera pixels (square)")
    parser.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        help="std of Gaussian noise on the executed action, table units/s (DART; default 0)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = collect(
            args.out,
            args.episodes,
            families=args.families,
            seed=args.seed,
            num_envs=args.num_envs,
            image_size=args.image_size,
            overwrite=args.overwrite,
            progress=not args.quiet,
            action_noise=args.action_noise,
        )
    except (FileExistsError, ValueError) as err:
        parser.error(str(err))
    print(summary.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
