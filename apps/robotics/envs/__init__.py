"""Simulated tasks for the robotics app, by name: ``make_env("tabletop")``, ``VectorEnv``.

Every env has the same interface (see ``tabletop.TabletopEnv``): ``reset(seed, task=None,
instruction=None) -> (obs, info)`` with ``obs = {"image": uint8 (H, W, 3), "state": float32
(state_dim,)}``, ``step(action) -> (obs, reward, terminated, truncated, info)``,
``expert_action()``, and the attributes ``fps``, ``max_steps``, ``action_dim``, ``state_dim``,
``action_names``, ``state_names``, ``action_low``, ``action_high``, ``camera_keys``.

Registered: ``tabletop`` (the default suite, ``tabletop.py``), ``panda`` (``panda.py``: a
pybullet Franka Panda pushes the named cube onto a target, IK expert) and ``pusht``
(``pusht.py``: gym-pusht's Push-T scored by coverage, the optional hard benchmark; it needs
``pip install gym-pusht==0.1.8``, which pins pymunk 6 and so is not in the ``robotics`` extra,
and is imported only when the env is built).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apps.robotics.envs.instructions import (
    FAMILIES,
    TASKS,
    TaskSpec,
    instruction_for,
    parse_task,
    tasks_for,
)
from apps.robotics.envs.panda import PandaPushEnv
from apps.robotics.envs.pusht import PushTEnv
from apps.robotics.envs.tabletop import TabletopEnv
from apps.robotics.envs.vector import VectorEnv

#: Env constructors by name; ``make_env`` and ``VectorEnv`` look names up here.
ENVS: dict[str, Callable[..., Any]] = {
    "tabletop": TabletopEnv,
    "panda": PandaPushEnv,
    "pusht": PushTEnv,
}


def make_env(name: str = "tabletop", **options: Any) -> Any:
    """A new env by registry name, built with ``options`` (e.g. ``families``, ``paraphrase``).

    Raises:
        ValueError: ``name`` is not in ``ENVS`` (the message lists the known names).
    """
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}: choose one of {sorted(ENVS)}")
    return ENVS[name](**options)


__all__ = [
    "ENVS",
    "FAMILIES",
    "TASKS",
    "PandaPushEnv",
    "PushTEnv",
    "TabletopEnv",
    "TaskSpec",
    "VectorEnv",
    "instruction_for",
    "make_env",
    "parse_task",
    "tasks_for",
]
