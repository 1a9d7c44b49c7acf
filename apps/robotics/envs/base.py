"""What every env of the suite shares: the checked action and the episode's read-outs.

The tabletop, Panda and Push-T envs differ in physics, but each takes a ``(action_dim,)``
action that must be finite, and each reports the instruction, the success flag and the step
count of the running episode in the same way; :class:`EpisodeEnv` holds that once.
"""

from __future__ import annotations

import numpy as np


class EpisodeEnv:
    """Base of the envs: ``instruction``, ``success``, ``steps`` and :meth:`checked_action`.

    Subclasses provide ``reset(seed)``, ``step(action)`` and ``expert_action()``, set
    ``action_dim`` and keep ``self._instruction``, ``self._success`` and
    ``self._steps`` up to date in ``reset`` and ``step``.
    """

    action_dim: int
    _instruction: str = ""
    _success: bool = False
    _steps: int = 0

    @property
    def instruction(self) -> str:
        """The instruction the policy sees this episode."""
        return self._instruction

    @property
    def success(self) -> bool:
        """Whether the episode has succeeded."""
        return self._success

    @property
    def steps(self) -> int:
        """Control steps taken this episode."""
        return self._steps

    def expert_episode(self, seed: int) -> dict:
        """Play one episode from ``reset(seed)`` with the env's scripted expert; return the
        last step's ``info`` (its ``success``, ``step``, ...)."""
        self.reset(seed)
        done = False
        while not done:
            _, _, terminated, truncated, info = self.step(self.expert_action())
            done = terminated or truncated
        return info

    def checked_action(self, action: np.ndarray, meaning: str) -> np.ndarray:
        """``action`` as float64 after checking its shape and values.

        Args:
            action: The policy's action.
            meaning: What the numbers are, for the error message (e.g. ``"(vx, vy)"``).

        Raises:
            ValueError: the shape is not ``(action_dim,)`` or a value is NaN or inf.
        """
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise ValueError(
                f"action must have shape ({self.action_dim},) {meaning}, got {action.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action holds NaN or inf: {action.tolist()}")
        return action
