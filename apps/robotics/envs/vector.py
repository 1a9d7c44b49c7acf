"""``VectorEnv``: N envs of one kind stepped in lockstep, with batched arrays in and out.

Why: closed-loop evaluation runs a policy on a batch of observations per forward pass; stepping
the envs together lets one batched policy call serve them all. Each env plays exactly one
episode per ``reset``: an env that has finished stays frozen (its action is ignored, its last
observation is returned again, its reward is 0 and its ``terminated`` / ``truncated`` flags stay
as they ended), so ``while not vec.done.all()`` runs every episode to its end, with no
automatic reset mixing a second episode into the statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class VectorEnv:
    """``num_envs`` envs made by ``make_env(name, **options)``, reset and stepped together.

    Args:
        name: Registry name (``apps.robotics.envs.ENVS``).
        num_envs: How many envs (>= 1).
        **options: Passed to every env's constructor.
    """

    def __init__(self, name: str = "tabletop", num_envs: int = 1, **options: Any) -> None:
        from apps.robotics.envs import make_env  # the registry imports this module

        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [make_env(name, **options) for _ in range(num_envs)]
        first = self.envs[0]
        self.num_envs = num_envs
        self.fps, self.max_steps = first.fps, first.max_steps
        self.action_dim, self.state_dim = first.action_dim, first.state_dim
        self.action_names, self.state_names = first.action_names, first.state_names
        self.action_low, self.action_high = first.action_low, first.action_high
        self.camera_keys = first.camera_keys
        self.terminated = np.zeros(num_envs, dtype=bool)
        self.truncated = np.zeros(num_envs, dtype=bool)
        self._obs: list[dict[str, np.ndarray]] = []
        self._infos: list[dict[str, Any]] = []

    @property
    def done(self) -> np.ndarray:
        """Bool ``(N,)``: which envs have ended their episode (terminated or truncated)."""
        return self.terminated | self.truncated

    @property
    def success(self) -> np.ndarray:
        """Bool ``(N,)``: which envs have succeeded."""
        return np.array([info["success"] for info in self._infos], dtype=bool)

    def reset(
        self,
        seeds: Sequence[int],
        tasks: Sequence[str | None] | None = None,
        instructions: Sequence[str | None] | None = None,
    ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        """Reset env ``i`` with ``seeds[i]`` (and ``tasks[i]``, ``instructions[i]`` if given).

        Returns the batched observation (``image`` ``(N, H, W, 3)`` uint8, ``state``
        ``(N, state_dim)`` float32) and the list of per-env ``info`` dicts.
        """
        seeds = list(seeds)
        tasks = [None] * self.num_envs if tasks is None else list(tasks)
        instructions = [None] * self.num_envs if instructions is None else list(instructions)
        for label, values in (("seeds", seeds), ("tasks", tasks), ("instructions", instructions)):
            if len(values) != self.num_envs:
                raise ValueError(f"{label} has {len(values)} entries for {self.num_envs} envs")
        results = [
            env.reset(seed, task=task, instruction=text)
            for env, seed, task, text in zip(self.envs, seeds, tasks, instructions, strict=True)
        ]
        self._obs = [obs for obs, _ in results]
        self._infos = [info for _, info in results]
        self.terminated[:] = False
        self.truncated[:] = False
        return self._stack(self._obs), list(self._infos)

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step every running env with its row of ``actions`` ``(N, action_dim)``.

        Returns ``(obs, rewards (N,) float32, terminated (N,), truncated (N,), infos)``; finished
        envs are left as they ended (see the module docstring).
        """
        if not self._obs:
            raise RuntimeError("call reset(seeds) before step")
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(
                f"actions must have shape ({self.num_envs}, {self.action_dim}) "
                f"(num_envs, action_dim), got {actions.shape}"
            )
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        for i, env in enumerate(self.envs):
            if self.done[i]:
                continue
            obs, reward, terminated, truncated, info = env.step(actions[i])
            self._obs[i], self._infos[i], rewards[i] = obs, info, reward
            self.terminated[i], self.truncated[i] = terminated, truncated
        return (
            self._stack(self._obs),
            rewards,
            self.terminated.copy(),
            self.truncated.copy(),
            list(self._infos),
        )

    def expert_actions(self, tasks: Sequence[str | None] | None = None) -> np.ndarray:
        """The scripted expert's actions ``(N, action_dim)`` float32 (zeros for finished envs).

        ``tasks[i]`` (default: each env's own) lets env ``i``'s expert pursue another task of the
        same family, e.g. for a language-blind baseline.
        """
        tasks = [None] * self.num_envs if tasks is None else list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(f"tasks has {len(tasks)} entries for {self.num_envs} envs")
        actions = np.zeros((self.num_envs, self.action_dim), dtype=np.float32)
        for i, (env, task) in enumerate(zip(self.envs, tasks, strict=True)):
            if not self.done[i]:
                actions[i] = env.expert_action(task)
        return actions

    @staticmethod
    def _stack(observations: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
