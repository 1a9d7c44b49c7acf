"""Closed-loop evaluation of a policy on the embedded tabletop suite, with baselines.

What a number here means: a policy is run in the simulator on held-out seeds, one episode per
seed, until the task succeeds or ``max_steps`` (120) run out; the success rate comes with its
Wilson 95% interval (:class:`apps.robotics.intervals.SuccessSummary`), because a rate out of
100 episodes is only meaningful with its uncertainty.

The policy protocol (:class:`Policy`), shared by every head of ``apps.robotics.policies``::

    predict_chunk(images uint8 (N, H, W, 3), proprio float32 (N, 2), instructions list[str])
        -> float32 (N, chunk_size, action_dim), in env action units (already de-normalised)

A policy sees only the camera image, the pusher position (proprio = ``state[:2]``) and the
instruction text, never the privileged state. An *executor* (:class:`Executor`) turns chunks
into one action per env step (temporal ensembling, open loop or receding horizon:
``apps.robotics.chunking.ChunkExecutor``). Evaluation takes an executor *factory*, called with
the batch size (``num_envs -> executor``), because executors hold per-env state of a fixed
size and the last batch may be smaller, e.g. ``functools.partial(ChunkExecutor, "ensemble",
8)``; :class:`FirstActionExecutor` (replan every step, run the first action) is the default
and what the chunk-size-1 baselines use.

Instruction conditions (``INSTRUCTION_MODES``), each on the same seeds, hence the same tasks
and scenes:

- ``trained``: the instruction is drawn from the training templates (the demos' wording);
- ``paraphrase``: drawn from the held-out paraphrases (the env built with ``paraphrase=True``);
- ``blank``: the instruction is ``""``; a policy that still succeeds is not using language.

Seeds: evaluation seeds are ``EVAL_SEED_BASE + i`` (``EVAL_SEED_BASE`` = 10**9), while the
demonstration collector uses ``seed * 1_000_003 + i`` (``apps.robotics.collect.episode_seed``),
which stays below it for every run seed under 999 and refuses to reach it, so no evaluated
scene is a training scene. Use :func:`eval_seeds` rather than building seed lists by hand.

Baselines (:func:`baseline_policies`), computed by the same :func:`rollout` on the same seeds
with the trained wording (none of them reads the instruction, so the other conditions would
give the same numbers): the scripted ``expert`` (privileged state; the ceiling), ``random``
actions (the floor) and a ``language_blind`` expert that pushes towards a random task of the
episode's family (what a perfect controller that ignores language achieves: about chance).
They read the simulator through the optional ``bind_env`` hook; a learned policy must not
define that hook.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from apps.robotics.envs import FAMILIES, VectorEnv, tasks_for
from apps.robotics.intervals import SuccessSummary, separated

__all__ = [
    "ACCEPTANCE_MIN_SUCCESS",
    "BASELINES",
    "EVAL_SEED_BASE",
    "FAR_ABOVE_RANDOM_MARGIN",
    "INSTRUCTION_MODES",
    "PARAPHRASE_TOLERANCE",
    "EpisodeResult",
    "Executor",
    "ExecutorFactory",
    "ExpertPolicy",
    "FirstActionExecutor",
    "LanguageBlindExpertPolicy",
    "Policy",
    "RandomPolicy",
    "RolloutResult",
    "acceptance",
    "baseline_policies",
    "eval_seeds",
    "evaluate",
    "executor_label",
    "gif_name",
    "measure_policy_hz",
    "results_to_dict",
    "rollout",
    "write_rollout_gif",
    "write_rollout_gifs",
]

#: First evaluation seed; the collector's demonstration seeds stay far below it.
EVAL_SEED_BASE = 1_000_000_000
#: Instruction conditions ``rollout`` / ``evaluate`` know (see the module docstring).
INSTRUCTION_MODES: tuple[str, ...] = ("trained", "paraphrase", "blank")
#: Baseline names, in report order.
BASELINES: tuple[str, ...] = ("expert", "random", "language_blind")
#: Acceptance (issue #22): trained-instruction success at least this.
ACCEPTANCE_MIN_SUCCESS = 0.5
#: Acceptance: "far above random" = trained's lower bound above random's upper bound by this.
FAR_ABOVE_RANDOM_MARGIN = 0.2
#: Acceptance: paraphrased success within this of trained success (absolute difference).
PARAPHRASE_TOLERANCE = 0.1


# --------------------------------------------------------------------------- protocols
@runtime_checkable
class Policy(Protocol):
    """What closed-loop evaluation calls (see the module docstring for the contract)."""

    chunk_size: int

    def predict_chunk(
        self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]
    ) -> np.ndarray:
        """Actions ``(N, chunk_size, action_dim)`` float32 in env units for ``N`` observations."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Turns predicted chunks into one action per env per step, for ``N`` envs in lockstep.

    Made for one batch size by an :data:`ExecutorFactory`. Per step, the rollout asks
    :meth:`needs_prediction` (a bool, or an ``(N,)`` bool mask of the envs that need one); if
    any is True it calls the policy on all ``N`` envs and passes the ``(N, chunk_size,
    action_dim)`` chunks to :meth:`act` (rows of envs that need none are to be ignored), else
    ``None``; :meth:`act` returns the ``(N, action_dim)`` actions to execute now. :meth:`reset`
    (no arguments: every env) starts a new batch of episodes. ``ChunkExecutor`` fits as is.
    """

    def reset(self) -> None:
        """Forget everything: a new batch of episodes starts in every env."""
        ...

    def needs_prediction(self) -> bool | np.ndarray:
        """Whether this step needs a fresh chunk (per env, or for all)."""
        ...

    def act(self, chunks: np.ndarray | None) -> np.ndarray:
        """The actions ``(N, action_dim)`` for this step, given fresh ``chunks`` or ``None``."""
        ...


#: ``num_envs -> Executor``: a fresh executor for a batch of that many envs (a class whose
#: first argument is ``num_envs`` works, as does ``partial(ChunkExecutor, mode, chunk_size)``).
ExecutorFactory = Callable[[int], Executor]


class FirstActionExecutor:
    """Receding horizon with a one-step horizon: predict every step, run the chunk's first action.

    The default executor, and exact for chunk-size-1 policies (the baselines). Its class is
    itself an :data:`ExecutorFactory`.
    """

    def __init__(self, num_envs: int = 1) -> None:
        self.num_envs = num_envs

    def reset(self) -> None:
        """Nothing to forget: every step gets a fresh chunk."""

    def needs_prediction(self) -> bool:
        """Always: the policy is asked every step."""
        return True

    def act(self, chunks: np.ndarray | None) -> np.ndarray:
        """The first action of each fresh chunk."""
        if chunks is None:
            raise RuntimeError("FirstActionExecutor needs a fresh chunk every step")
        return np.asarray(chunks[:, 0], dtype=np.float32)


# --------------------------------------------------------------------------- results
@dataclass
class EpisodeResult:
    """One evaluated episode.

    Attributes:
        seed: The env seed (fixes task, scene and, unless blanked, the instruction).
        task: The canonical task string.
        family: The task family.
        instruction: The text the policy was given (``""`` when blanked).
        success: Whether the episode succeeded.
        steps: Control steps taken (``max_steps`` for a failure).
        frames: Camera images from the reset to the last step (uint8 ``(H, W, 3)`` each), or
            ``None`` when not recorded.
        proprio: With ``record_transitions``: the proprioception ``(steps, 2)`` the policy saw
            before each step (env units), else ``None``.
        actions: With ``record_transitions``: the actions executed ``(steps, action_dim)``
            (after any exploration noise, clipped to the env's bounds), else ``None``.
        final_frame: The camera image the episode ended on (always kept: what a success
            classifier judges).
    """

    seed: int
    task: str
    family: str
    instruction: str
    success: bool
    steps: int
    frames: list[np.ndarray] | None = None
    proprio: np.ndarray | None = None
    actions: np.ndarray | None = None
    final_frame: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values (no frames) for JSON."""
        return {
            "seed": self.seed,
            "task": self.task,
            "family": self.family,
            "instruction": self.instruction,
            "success": self.success,
            "steps": self.steps,
        }


@dataclass
class RolloutResult:
    """The episodes of one :func:`rollout` and how long they took.

    Attributes:
        condition: The instruction mode (or the baseline name, in :func:`evaluate`).
        episodes: One :class:`EpisodeResult` per seed, in seed order.
        wall_s: Wall-clock seconds of the whole rollout (env and policy).
        predict_s: Seconds spent inside ``predict_chunk``.
        predict_calls: Calls of ``predict_chunk`` (each on a batch of envs).
        env_steps: Env steps taken, summed over envs.
    """

    condition: str
    episodes: list[EpisodeResult] = field(default_factory=list)
    wall_s: float = 0.0
    predict_s: float = 0.0
    predict_calls: int = 0
    env_steps: int = 0

    def summary(self, confidence: float = 0.95) -> SuccessSummary:
        """Success rate, Wilson interval and mean steps over every episode."""
        return SuccessSummary.from_outcomes(
            [e.success for e in self.episodes], [e.steps for e in self.episodes], confidence
        )

    def per_family(self, confidence: float = 0.95) -> dict[str, SuccessSummary]:
        """:meth:`summary` per task family (families without episodes are left out)."""
        out = {}
        for family in FAMILIES:
            eps = [e for e in self.episodes if e.family == family]
            if eps:
                out[family] = SuccessSummary.from_outcomes(
                    [e.success for e in eps], [e.steps for e in eps], confidence
                )
        return out


# --------------------------------------------------------------------------- seeds
def eval_seeds(num_episodes: int, base: int = EVAL_SEED_BASE) -> list[int]:
    """The held-out evaluation seeds ``base, base + 1, ..., base + num_episodes - 1``."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    return list(range(base, base + num_episodes))


# --------------------------------------------------------------------------- rollout
def _make_executor(factory: ExecutorFactory | None, num_envs: int) -> Executor:
    """A fresh executor for ``num_envs`` envs, checked against :class:`Executor`."""
    factory = FirstActionExecutor if factory is None else factory
    methods = ("act", "needs_prediction", "reset")
    if not isinstance(factory, type) and all(callable(getattr(factory, m, None)) for m in methods):
        raise TypeError(
            f"executor must be a factory num_envs -> executor, got the executor instance "
            f"{factory!r}: pass e.g. functools.partial(ChunkExecutor, mode, chunk_size) or a "
            "class whose first argument is num_envs"
        )
    executor = factory(num_envs)
    missing = [m for m in methods if not callable(getattr(executor, m, None))]
    if missing:
        raise TypeError(
            f"executor factory {factory!r} made {type(executor).__name__}, which lacks "
            f"{missing}: an executor needs reset(), needs_prediction() and act(chunks)"
        )
    return executor


def executor_label(factory: ExecutorFactory | None) -> str:
    """A readable name of what ``factory`` makes, e.g. ``ChunkExecutor(ensemble, 8)``."""
    executor = _make_executor(factory, 1)
    name = type(executor).__name__
    details = [str(getattr(executor, a)) for a in ("mode", "chunk_size") if hasattr(executor, a)]
    return f"{name}({', '.join(details)})" if details else name


def _needs(executor: Executor) -> bool:
    """Whether any env needs a prediction (``needs_prediction`` may give a bool or a mask)."""
    return bool(np.any(executor.needs_prediction()))


def _check_mode(mode: str) -> str:
    if mode not in INSTRUCTION_MODES:
        raise ValueError(f"unknown instruction_mode {mode!r}: choose one of {INSTRUCTION_MODES}")
    return mode


def _check_chunks(policy: Any, chunks: Any, num_envs: int, action_dim: int) -> np.ndarray:
    """``chunks`` as float32 ``(N, chunk_size, action_dim)``, or a ValueError naming the policy."""
    name = type(policy).__name__
    array = np.asarray(chunks, dtype=np.float32)
    expected = (num_envs, int(policy.chunk_size), action_dim)
    if array.shape != expected:
        raise ValueError(
            f"{name}.predict_chunk returned shape {array.shape}; the policy protocol needs "
            f"(N, chunk_size, action_dim) = {expected} (check chunk_size and the batch axis)"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}.predict_chunk returned NaN or inf actions")
    return array


def rollout(
    policy: Policy,
    seeds: Sequence[int],
    *,
    env_options: Mapping[str, Any] | None = None,
    instruction_mode: str = "trained",
    executor: ExecutorFactory | None = None,
    num_envs: int = 25,
    record_frames: int = 0,
    env_name: str = "tabletop",
    progress: bool = True,
    desc: str | None = None,
    record_transitions: bool = False,
    action_noise: float = 0.0,
) -> RolloutResult:
    """Run one episode per seed in lockstep batches of ``num_envs`` and record the outcomes.

    Args:
        policy: A :class:`Policy`. If it has ``bind_env(vec, infos, seeds)`` (the privileged
            baselines only) it is called after every batch reset.
        seeds: Env seeds, one episode each (use :func:`eval_seeds` for held-out ones).
        env_options: Env constructor options, e.g. ``families`` (``paraphrase`` is set by
            ``instruction_mode`` and must not be given).
        instruction_mode: ``"trained"``, ``"paraphrase"`` or ``"blank"`` (module docstring).
        executor: An :data:`ExecutorFactory` (default :class:`FirstActionExecutor`); one
            executor is made per batch size and reset at every batch.
        num_envs: Envs stepped together (one ``predict_chunk`` call serves them all).
        record_frames: Keep the camera frames of the first this many episodes (seed order).
        env_name: Env registry name.
        progress: Show a tqdm bar (episodes done).
        desc: The bar's label (default ``rollout <mode>``).
        record_transitions: Keep every episode's frames, proprioception and executed actions
            (what learning from the policy's own rollouts needs; ``record_frames`` is then
            every episode).
        action_noise: Standard deviation of Gaussian noise added to each executed action, in
            env units (exploration; drawn from each episode's seed, so results do not depend
            on batching); 0 plays the policy's actions as they are.
    """
    mode = _check_mode(instruction_mode)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed (see eval_seeds)")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if not action_noise >= 0:
        raise ValueError(f"action_noise={action_noise} must be >= 0 (env action units)")
    if record_transitions:
        record_frames = len(seeds)
    options = dict(env_options or {})
    if "paraphrase" in options:
        raise ValueError(
            "env_options must not set 'paraphrase': use instruction_mode='paraphrase' instead"
        )
    options["paraphrase"] = mode == "paraphrase"
    bind = getattr(policy, "bind_env", None)
    result = RolloutResult(condition=mode)
    envs: dict[int, VectorEnv] = {}
    executors: dict[int, Executor] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(seeds), desc=desc or f"rollout {mode}", unit="ep", disable=not progress)
    try:
        for first in range(0, len(seeds), num_envs):
            batch = seeds[first : first + num_envs]
            n = len(batch)
            if n not in envs:
                envs[n] = VectorEnv(env_name, num_envs=n, **options)
                executors[n] = _make_executor(executor, n)
            vec, batch_executor = envs[n], executors[n]
            blank = [""] * n if mode == "blank" else None
            obs, infos = vec.reset(batch, instructions=blank)
            instructions = [info["instruction"] for info in infos]
            record = [first + i < record_frames for i in range(n)]
            frames: list[list[np.ndarray] | None] = [
                [obs["image"][i].copy()] if record[i] else None for i in range(n)
            ]
            if callable(bind):
                bind(vec, infos, batch)
            noise = [np.random.default_rng([s, 31]) for s in batch] if action_noise else None
            seen: list[list[np.ndarray]] = [[] for _ in range(n)]
            done_actions: list[list[np.ndarray]] = [[] for _ in range(n)]
            batch_executor.reset()
            while not vec.done.all():
                chunks = None
                if _needs(batch_executor):
                    # A learned policy predicts for the running envs only (finished ones get
                    # zero chunks, played into a done env), so a batch's long tail costs one
                    # env each; the privileged baselines (bind_env) answer for the whole batch.
                    alive = np.arange(n) if callable(bind) else np.flatnonzero(~vec.done)
                    proprio = np.ascontiguousarray(obs["state"][alive, :2], dtype=np.float32)
                    tick = time.perf_counter()
                    raw = policy.predict_chunk(
                        obs["image"][alive], proprio, [instructions[i] for i in alive]
                    )
                    result.predict_s += time.perf_counter() - tick
                    result.predict_calls += 1
                    alive_chunks = _check_chunks(policy, raw, len(alive), vec.action_dim)
                    chunks = np.zeros((n, *alive_chunks.shape[1:]), dtype=alive_chunks.dtype)
                    chunks[alive] = alive_chunks
                actions = batch_executor.act(chunks)
                running = ~vec.done
                if noise is not None:
                    actions = np.array(actions, dtype=np.float32)  # never the executor's buffer
                    for i in np.flatnonzero(running):
                        actions[i] = actions[i] + noise[i].normal(
                            0.0, action_noise, actions.shape[1]
                        )
                    actions = np.clip(actions, vec.action_low, vec.action_high)
                if record_transitions:
                    for i in np.flatnonzero(running):
                        seen[i].append(obs["state"][i, :2].astype(np.float32))
                        done_actions[i].append(np.array(actions[i], dtype=np.float32))
                result.env_steps += int(running.sum())
                obs, _, _, _, infos = vec.step(actions)
                for i in np.flatnonzero(running):
                    if frames[i] is not None:
                        frames[i].append(obs["image"][i].copy())
            for i, info in enumerate(infos):
                result.episodes.append(
                    EpisodeResult(
                        seed=batch[i],
                        task=info["task"],
                        family=info["family"],
                        instruction=instructions[i],
                        success=bool(info["success"]),
                        steps=int(info["step"]),
                        frames=frames[i],
                        final_frame=obs["image"][i].copy(),
                        proprio=_stacked(seen[i], 2) if record_transitions else None,
                        actions=_stacked(done_actions[i], vec.action_dim)
                        if record_transitions
                        else None,
                    )
                )
            bar.update(n)
            done = result.episodes
            bar.set_postfix(success=f"{sum(e.success for e in done)}/{len(done)}")
    finally:
        bar.close()
    result.wall_s = time.perf_counter() - start
    return result


def _stacked(rows: list[np.ndarray], width: int) -> np.ndarray:
    """``rows`` as a float32 ``(len, width)`` array (``(0, width)`` when empty)."""
    return np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)


# --------------------------------------------------------------------------- baselines
class _EnvBound:
    """Base of the privileged baselines: they read the batch's ``VectorEnv`` via ``bind_env``."""

    chunk_size = 1

    def __init__(self) -> None:
        self._vec: VectorEnv | None = None

    def bind_env(
        self, vec: VectorEnv, infos: Sequence[Mapping[str, Any]], seeds: Sequence[int]
    ) -> None:
        """Called by :func:`rollout` after each batch reset: the envs this policy acts in."""
        self._vec = vec

    def _require_vec(self) -> VectorEnv:
        if self._vec is None:
            raise RuntimeError(
                f"{type(self).__name__} reads the simulator: run it through rollout(), which "
                "calls bind_env(vec, infos, seeds) after each reset"
            )
        return self._vec


class ExpertPolicy(_EnvBound):
    """The scripted expert as a :class:`Policy` (privileged: it ignores the observations)."""

    def predict_chunk(
        self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]
    ) -> np.ndarray:
        """The expert's next action per env, as chunks of one."""
        return self._require_vec().expert_actions()[:, None, :]


class LanguageBlindExpertPolicy(_EnvBound):
    """The expert pursuing a random task of each episode's family (drawn once per episode,
    from the seed): perfect control without language, so about chance success."""

    def bind_env(
        self, vec: VectorEnv, infos: Sequence[Mapping[str, Any]], seeds: Sequence[int]
    ) -> None:
        """Bind the envs and draw each episode's pursued task from its seed."""
        super().bind_env(vec, infos, seeds)
        self._tasks = []
        for info, seed in zip(infos, seeds, strict=True):
            options = tasks_for(info["family"])
            pick = np.random.default_rng([int(seed), 98]).integers(len(options))
            self._tasks.append(options[int(pick)])

    def predict_chunk(
        self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]
    ) -> np.ndarray:
        """The expert's action towards each episode's randomly drawn task."""
        return self._require_vec().expert_actions(self._tasks)[:, None, :]


class RandomPolicy(_EnvBound):
    """Uniform random actions within the env's bounds (one generator per episode seed)."""

    def bind_env(
        self, vec: VectorEnv, infos: Sequence[Mapping[str, Any]], seeds: Sequence[int]
    ) -> None:
        """Bind the envs and seed one generator per episode (results independent of batching)."""
        super().bind_env(vec, infos, seeds)
        self._rngs = [np.random.default_rng([int(s), 99]) for s in seeds]

    def predict_chunk(
        self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]
    ) -> np.ndarray:
        """One uniform random action per env, as chunks of one."""
        vec = self._require_vec()
        actions = [rng.uniform(vec.action_low, vec.action_high) for rng in self._rngs]
        return np.asarray(actions, dtype=np.float32)[:, None, :]


def baseline_policies(names: Iterable[str] = BASELINES) -> dict[str, Policy]:
    """Fresh baseline policies by name (``expert``, ``random``, ``language_blind``)."""
    makers: dict[str, Callable[[], Policy]] = {
        "expert": ExpertPolicy,
        "random": RandomPolicy,
        "language_blind": LanguageBlindExpertPolicy,
    }
    out = {}
    for name in names:
        if name not in makers:
            raise ValueError(f"unknown baseline {name!r}: choose from {list(makers)}")
        out[name] = makers[name]()
    return out


# --------------------------------------------------------------------------- speed
def measure_policy_hz(
    policy: Policy,
    num_envs: int,
    *,
    executor: ExecutorFactory | None = None,
    steps: int = 20,
    env_options: Mapping[str, Any] | None = None,
    seed_base: int = EVAL_SEED_BASE,
    env_name: str = "tabletop",
) -> dict[str, float]:
    """How fast ``policy`` runs closed loop on ``num_envs`` envs in lockstep.

    One warm-up call, then ``steps`` control steps (fewer if every episode ends). Returns
    ``predict_calls_per_s`` (``predict_chunk`` calls on the batch per second of policy time),
    ``ms_per_call``, ``observations_per_s`` (calls/s x N: observations the policy alone
    serves per second) and ``env_steps_per_s`` (env steps summed over envs per wall second:
    policy, executor and simulator together, with the given executor, so chunked execution
    that predicts less often shows here).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    batch_executor = _make_executor(executor, num_envs)
    options = {"paraphrase": False, **dict(env_options or {})}
    vec = VectorEnv(env_name, num_envs=num_envs, **options)
    seeds = eval_seeds(num_envs, seed_base)
    obs, infos = vec.reset(seeds)
    instructions = [info["instruction"] for info in infos]
    bind = getattr(policy, "bind_env", None)
    if callable(bind):
        bind(vec, infos, seeds)
    proprio = np.ascontiguousarray(obs["state"][:, :2], dtype=np.float32)
    policy.predict_chunk(obs["image"], proprio, instructions)  # warm-up (lazy init, caches)
    batch_executor.reset()
    calls, predict_s, env_steps = 0, 0.0, 0
    start = time.perf_counter()
    for _ in range(steps):
        if vec.done.all():
            break
        chunks = None
        if _needs(batch_executor):
            proprio = np.ascontiguousarray(obs["state"][:, :2], dtype=np.float32)
            tick = time.perf_counter()
            raw = policy.predict_chunk(obs["image"], proprio, instructions)
            predict_s += time.perf_counter() - tick
            calls += 1
            chunks = _check_chunks(policy, raw, num_envs, vec.action_dim)
        env_steps += int((~vec.done).sum())
        obs, *_ = vec.step(batch_executor.act(chunks))
    wall = time.perf_counter() - start
    per_call = predict_s / calls if calls else float("nan")
    return {
        "num_envs": num_envs,
        "predict_calls": calls,
        "predict_calls_per_s": 1.0 / per_call if calls and per_call > 0 else float("nan"),
        "ms_per_call": 1000.0 * per_call,
        "observations_per_s": num_envs / per_call if calls and per_call > 0 else float("nan"),
        "env_steps_per_s": env_steps / wall if wall > 0 else float("nan"),
    }


# --------------------------------------------------------------------------- evaluate
def _condition_entry(result: RolloutResult, confidence: float) -> dict[str, Any]:
    return {
        "summary": result.summary(confidence),
        "per_family": result.per_family(confidence),
        "rollout": result,
    }


def evaluate(
    policy: Policy,
    num_episodes: int = 100,
    conditions: Sequence[str] = INSTRUCTION_MODES,
    *,
    executor: ExecutorFactory | None = None,
    families: Sequence[str] | None = None,
    seed_base: int = EVAL_SEED_BASE,
    num_envs: int = 25,
    baselines: Sequence[str] = BASELINES,
    record_frames: int = 3,
    hz_steps: int = 20,
    confidence: float = 0.95,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``policy`` closed loop on the held-out seeds under each instruction condition.

    Args:
        policy: A :class:`Policy`.
        num_episodes: Episodes per condition (the issue asks for at least 100).
        conditions: Instruction modes to run (``INSTRUCTION_MODES``), same seeds for each.
        executor: An :data:`ExecutorFactory` for ``policy`` (default
            :class:`FirstActionExecutor`), e.g. ``partial(ChunkExecutor, "ensemble", 8)``.
        families: Task families to draw from (default: all).
        seed_base: First seed (default :data:`EVAL_SEED_BASE`, held out from the demos).
        num_envs: Envs stepped in lockstep (also the batch of the batched speed test).
        baselines: Baselines to run on the same seeds with trained wording (``BASELINES``).
        record_frames: Frames kept for the first this many episodes of each condition (GIFs).
        hz_steps: Control steps timed per speed measurement (0 skips it).
        confidence: Level of the intervals.
        progress: Show tqdm bars.

    Returns:
        ``{"settings": {...}, "conditions": {mode: entry}, "baselines": {name: entry},
        "policy_hz": {"single": {...}, "batch": {...}}}`` where an entry is ``{"summary":
        SuccessSummary, "per_family": {family: SuccessSummary}, "rollout": RolloutResult}``.
        :func:`results_to_dict` turns it into plain JSON values.
    """
    for mode in conditions:
        _check_mode(mode)
    seeds = eval_seeds(num_episodes, seed_base)
    env_options: dict[str, Any] = {} if families is None else {"families": list(families)}
    common = {"env_options": env_options, "num_envs": num_envs, "progress": progress}
    out: dict[str, Any] = {
        "settings": {
            "num_episodes": num_episodes,
            "seeds": [seeds[0], seeds[-1]],
            "families": list(families or FAMILIES),
            "num_envs": num_envs,
            "chunk_size": int(policy.chunk_size),
            "policy": type(policy).__name__,
            "executor": executor_label(executor),
            "confidence": confidence,
        },
        "conditions": {},
        "baselines": {},
        "policy_hz": {},
    }
    for mode in conditions:
        result = rollout(
            policy,
            seeds,
            instruction_mode=mode,
            executor=executor,
            record_frames=record_frames,
            desc=f"eval {mode}",
            **common,
        )
        out["conditions"][mode] = _condition_entry(result, confidence)
    for name, baseline in baseline_policies(baselines).items():
        result = rollout(baseline, seeds, instruction_mode="trained", desc=name, **common)
        result.condition = name
        out["baselines"][name] = _condition_entry(result, confidence)
    if hz_steps > 0:
        for key, n in (("single", 1), ("batch", num_envs)):
            out["policy_hz"][key] = measure_policy_hz(
                policy,
                n,
                executor=executor,
                steps=hz_steps,
                env_options=env_options,
                seed_base=seed_base,
            )
    return out


def results_to_dict(results: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`evaluate`'s results as plain JSON values (summaries as dicts, no frames)."""

    def entry(value: Mapping[str, Any]) -> dict[str, Any]:
        rollout_result: RolloutResult | None = value.get("rollout")
        plain: dict[str, Any] = {
            **value["summary"].to_dict(),
            "per_family": {f: s.to_dict() for f, s in value.get("per_family", {}).items()},
        }
        if rollout_result is not None:
            plain["wall_s"] = rollout_result.wall_s
            plain["episodes"] = [e.to_dict() for e in rollout_result.episodes]
        return plain

    return {
        "settings": dict(results.get("settings", {})),
        "conditions": {k: entry(v) for k, v in results.get("conditions", {}).items()},
        "baselines": {k: entry(v) for k, v in results.get("baselines", {}).items()},
        "policy_hz": dict(results.get("policy_hz", {})),
        "acceptance": acceptance(results),
    }


# --------------------------------------------------------------------------- acceptance
def _summary(results: Mapping[str, Any], group: str, name: str) -> SuccessSummary | None:
    """The summary of ``results[group][name]`` (an entry dict or a bare SuccessSummary)."""
    value = results.get(group, {}).get(name)
    if value is None or isinstance(value, SuccessSummary):
        return value
    return value["summary"]


def _ci(s: SuccessSummary) -> str:
    return f"{s.rate:.2f} [{s.low:.2f}, {s.high:.2f}] (n={s.trials})"


def acceptance(results: Mapping[str, Any]) -> list[str]:
    """Issue #22's acceptance checks, one line each, starting ``PASS``, ``FAIL`` or ``SKIP``.

    ``results`` is :func:`evaluate`'s output, or any mapping with ``conditions`` and
    ``baselines`` whose values are entries or bare :class:`SuccessSummary` objects. Checks:
    trained success >= :data:`ACCEPTANCE_MIN_SUCCESS`; trained's lower bound above the blank
    condition's upper bound (language matters, :func:`separated`); trained's lower bound above
    random's upper bound by :data:`FAR_ABOVE_RANDOM_MARGIN`; paraphrased success within
    :data:`PARAPHRASE_TOLERANCE` of trained.
    """
    trained = _summary(results, "conditions", "trained")
    if trained is None:
        return ["SKIP: no 'trained' condition evaluated: every acceptance check needs it"]
    blank = _summary(results, "conditions", "blank")
    paraphrase = _summary(results, "conditions", "paraphrase")
    random = _summary(results, "baselines", "random")

    def line(ok: bool, text: str) -> str:
        return f"{'PASS' if ok else 'FAIL'}: {text}"

    lines = [
        line(
            trained.rate >= ACCEPTANCE_MIN_SUCCESS,
            f"trained success {_ci(trained)} >= {ACCEPTANCE_MIN_SUCCESS}",
        )
    ]
    if blank is None:
        lines.append("SKIP: language matters: no 'blank' condition evaluated")
    else:
        lines.append(
            line(
                separated(trained, blank),
                f"language matters: trained lower bound {trained.low:.2f} > blank-instruction "
                f"upper bound {blank.high:.2f} (blank {_ci(blank)})",
            )
        )
    if random is None:
        lines.append("SKIP: far above random: no 'random' baseline evaluated")
    else:
        lines.append(
            line(
                trained.low > random.high + FAR_ABOVE_RANDOM_MARGIN,
                f"far above random: trained lower bound {trained.low:.2f} > random upper bound "
                f"{random.high:.2f} + {FAR_ABOVE_RANDOM_MARGIN} (random {_ci(random)})",
            )
        )
    if paraphrase is None:
        lines.append("SKIP: paraphrase: no 'paraphrase' condition evaluated")
    else:
        gap = abs(paraphrase.rate - trained.rate)
        lines.append(
            line(
                gap <= PARAPHRASE_TOLERANCE + 1e-12,
                f"paraphrase within {PARAPHRASE_TOLERANCE} of trained: |{paraphrase.rate:.2f} - "
                f"{trained.rate:.2f}| = {gap:.2f} (paraphrase {_ci(paraphrase)})",
            )
        )
    return lines


# --------------------------------------------------------------------------- GIFs
def write_rollout_gif(
    frames: Sequence[np.ndarray], path: str | Path, fps: int = 10, scale: int = 2
) -> Path:
    """Write an episode's frames (uint8 ``(H, W, 3)`` each) as a looping GIF, atomically.

    ``scale`` enlarges each frame (nearest neighbour) for viewing; the last frame is held for
    one second so the outcome is visible.
    """
    from PIL import Image

    from core.atomic import atomic_write

    if not len(frames):
        raise ValueError(f"no frames to write to {path}: record them with rollout(record_frames=)")
    if fps < 1 or scale < 1:
        raise ValueError(f"fps and scale must be >= 1, got fps={fps}, scale={scale}")
    images = []
    for frame in frames:
        array = np.asarray(frame)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"GIF frames must be uint8 (H, W, 3); got {array.dtype} {array.shape}")
        image = Image.fromarray(array)
        if scale > 1:
            image = image.resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
        images.append(image)
    frame_ms = max(20, round(1000 / fps))
    durations = [frame_ms] * (len(images) - 1) + [max(frame_ms, 1000)]

    def write(tmp: Path) -> None:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=0,
        )

    return atomic_write(path, write)


def gif_name(condition: str, index: int, episode: EpisodeResult, limit: int = 60) -> str:
    """``rollout_<condition>_<index>_<success|fail>_<instruction slug>.gif``."""
    slug = re.sub(r"[^a-z0-9]+", "-", episode.instruction.lower()).strip("-")[:limit].strip("-")
    outcome = "success" if episode.success else "fail"
    return f"rollout_{condition}_{index:02d}_{outcome}_{slug or 'blank'}.gif"


def write_rollout_gifs(
    result: RolloutResult, out_dir: str | Path, fps: int = 10, limit: int | None = None
) -> list[tuple[Path, EpisodeResult]]:
    """One GIF per recorded episode of ``result`` (at most ``limit``), named by
    :func:`gif_name`; returns ``(path, episode)`` pairs."""
    written = []
    recorded = [e for e in result.episodes if e.frames]
    for index, episode in enumerate(recorded[:limit]):
        path = Path(out_dir) / gif_name(result.condition, index, episode)
        written.append((write_rollout_gif(episode.frames, path, fps=fps), episode))
    return written
