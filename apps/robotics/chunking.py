"""Turning predicted action chunks into one action per control step, for N envs at once.

A chunked policy predicts ``chunk_size`` future actions per call. Three ways to execute them:

- ``"open_loop"``: predict, then play the chunk (its first ``execute_steps`` actions) in
  order without looking; predict again when it runs out. Cheapest (one call per chunk) but
  blind between calls: the prototype dropped from 0.68 to 0.12 success with 4-step chunks.
- ``"receding"``: predict every step and execute only the first action (receding horizon;
  chunking then only shapes training).
- ``"ensemble"``: ACT's temporal ensembling (Zhao et al. 2023, Algorithm 2): predict every
  step; the action for the current time is the weighted mean of every still-valid chunk's
  prediction for it, ``w_i = exp(-m * i)`` with ``i = 0`` the oldest prediction
  (:class:`TemporalEnsembler`). With ``m = 0.01`` older predictions weigh slightly more,
  which ACT found smooth and responsive.

Each env keeps its own state (envs reset at different steps): :meth:`ChunkExecutor.reset`
takes a mask or indices. Everything is numpy, float32 out, as the policy protocol is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODES = ("ensemble", "open_loop", "receding")


def _env_mask(envs: Any, num_envs: int) -> np.ndarray:
    """A boolean (N,) mask of ``envs``: None (all), a boolean mask, or env indices."""
    if envs is None:
        return np.ones(num_envs, dtype=bool)
    envs = np.asarray(envs)
    if envs.dtype == bool:
        if envs.shape != (num_envs,):
            raise ValueError(f"env mask must have shape ({num_envs},); got {envs.shape}")
        return envs.copy()
    mask = np.zeros(num_envs, dtype=bool)
    index = envs.astype(np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= num_envs):
        raise ValueError(f"env indices must lie in [0, {num_envs}); got {index.tolist()}")
    mask[index] = True
    return mask


class TemporalEnsembler:
    """ACT's temporal ensembling, batched over ``num_envs`` envs.

    Slot ``k`` of env ``n`` holds the predictions made so far for time ``now + k``, as a
    weighted sum and a weight total; a new chunk adds its ``k``-th action to slot ``k``
    with weight ``exp(-coeff * c)``, ``c`` the number of predictions that slot already has
    (so the oldest has ``i = 0``). :meth:`act` returns slot 0's weighted mean and shifts.

    Args:
        chunk_size: Actions per predicted chunk.
        action_dim: Action dimensions.
        num_envs: Envs stepped together.
        coeff: ``m`` in ``exp(-m * i)``; 0 gives a plain mean, larger values favour older
            predictions, negative values newer ones.
    """

    def __init__(
        self, chunk_size: int, action_dim: int, num_envs: int = 1, coeff: float = 0.01
    ) -> None:
        if chunk_size < 1 or action_dim < 1 or num_envs < 1:
            raise ValueError(
                f"chunk_size, action_dim and num_envs must be positive; got {chunk_size}, "
                f"{action_dim}, {num_envs}"
            )
        self.chunk_size, self.action_dim, self.num_envs = chunk_size, action_dim, num_envs
        self.coeff = float(coeff)
        self.sums = np.zeros((num_envs, chunk_size, action_dim), dtype=np.float64)
        self.weights = np.zeros((num_envs, chunk_size), dtype=np.float64)
        self.counts = np.zeros((num_envs, chunk_size), dtype=np.int64)

    def reset(self, envs: Any = None) -> None:
        """Forget every prediction of ``envs`` (all by default)."""
        mask = _env_mask(envs, self.num_envs)
        self.sums[mask] = 0.0
        self.weights[mask] = 0.0
        self.counts[mask] = 0

    def update(self, chunks: np.ndarray, envs: Any = None) -> None:
        """Add a chunk ``(N, chunk, A)`` predicted now, for ``envs`` (all by default)."""
        chunks = np.asarray(chunks, dtype=np.float64)
        want = (self.num_envs, self.chunk_size, self.action_dim)
        if chunks.shape != want:
            raise ValueError(f"chunks must have shape {want}; got {chunks.shape}")
        mask = _env_mask(envs, self.num_envs)
        w = np.exp(-self.coeff * self.counts[mask])
        self.sums[mask] += w[..., None] * chunks[mask]
        self.weights[mask] += w
        self.counts[mask] += 1

    def act(self, envs: Any = None) -> np.ndarray:
        """The ensembled action for now, ``(N, A)``, and advance ``envs`` by one step.

        Rows of envs not advanced are left as NaN.
        """
        mask = _env_mask(envs, self.num_envs)
        if (self.counts[mask, 0] == 0).any():
            missing = np.flatnonzero(mask & (self.counts[:, 0] == 0)).tolist()
            raise RuntimeError(
                f"env(s) {missing} have no prediction for the current step; call update() "
                "with a fresh chunk before act()"
            )
        out = np.full((self.num_envs, self.action_dim), np.nan, dtype=np.float32)
        out[mask] = self.sums[mask, 0] / self.weights[mask, 0, None]
        for array in (self.sums, self.weights, self.counts):
            shifted = np.roll(array[mask], -1, axis=1)
            shifted[:, -1] = 0
            array[mask] = shifted
        return out


class ChunkExecutor:
    """One action per step per env from a stream of predicted chunks.

    Use::

        executor = ChunkExecutor("ensemble", chunk_size=8, num_envs=N)
        for step in range(horizon):
            need = executor.needs_prediction()            # (N,) bool
            chunks = policy.predict_chunk(...) if need.any() else None
            actions = executor.act(chunks)                # (N, A)

    ``chunks`` may cover all N envs (rows of envs that need no prediction are ignored) or
    only the envs that need one, in env order. :meth:`reset` an env when its episode ends.

    Args:
        mode: ``"ensemble"``, ``"open_loop"`` or ``"receding"`` (see the module docstring).
        chunk_size: Actions per predicted chunk.
        num_envs: Envs stepped together.
        action_dim: Action dimensions (taken from the first chunk when None).
        coeff: The temporal-ensembling ``m``.
        execute_steps: Open loop only: actions played from each chunk before predicting
            again (LeRobot's ``n_action_steps``); the whole chunk by default.
    """

    def __init__(
        self,
        mode: str,
        chunk_size: int,
        num_envs: int = 1,
        action_dim: int | None = None,
        coeff: float = 0.01,
        execute_steps: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown chunk execution mode {mode!r}; choose one of {MODES}")
        if chunk_size < 1 or num_envs < 1:
            raise ValueError(
                f"chunk_size and num_envs must be positive; got {chunk_size}, {num_envs}"
            )
        execute_steps = chunk_size if execute_steps is None else execute_steps
        if not 1 <= execute_steps <= chunk_size:
            raise ValueError(f"execute_steps={execute_steps} must lie in [1, {chunk_size}]")
        self.mode, self.chunk_size, self.num_envs = mode, chunk_size, num_envs
        self.coeff, self.execute_steps = coeff, execute_steps
        self.action_dim = action_dim
        self.ensembler: TemporalEnsembler | None = None
        self.queue: np.ndarray | None = None  # open loop: the chunk being played
        self.position = np.zeros(num_envs, dtype=np.int64)  # open loop: next index in it
        self.steps = np.zeros(num_envs, dtype=np.int64)  # steps since each env's reset
        if action_dim is not None:
            self._allocate(action_dim)
        self.reset()

    def _allocate(self, action_dim: int) -> None:
        self.action_dim = action_dim
        self.ensembler = TemporalEnsembler(self.chunk_size, action_dim, self.num_envs, self.coeff)
        self.queue = np.zeros((self.num_envs, self.chunk_size, action_dim), dtype=np.float32)

    def reset(self, envs: Any = None) -> None:
        """Start ``envs`` (all by default) afresh: their next step needs a prediction."""
        mask = _env_mask(envs, self.num_envs)
        self.position[mask] = self.execute_steps  # exhausted: predict first
        self.steps[mask] = 0
        if self.ensembler is not None:
            self.ensembler.reset(mask)

    def needs_prediction(self, step: int | None = None) -> np.ndarray:
        """``(N,)`` bool: which envs need a fresh chunk this step.

        ``step`` is accepted for symmetry with loops that count steps and is not needed:
        each env's own count since its reset decides.
        """
        if self.mode == "open_loop":
            return self.position >= self.execute_steps
        return np.ones(self.num_envs, dtype=bool)

    def _scatter(self, chunks: Any, need: np.ndarray) -> np.ndarray:
        """``chunks`` for all N envs (rows of envs that need none are zero)."""
        chunks = np.asarray(chunks, dtype=np.float32)
        if chunks.ndim != 3 or chunks.shape[1] != self.chunk_size:
            raise ValueError(
                f"chunks must be (envs, chunk_size={self.chunk_size}, action_dim); got "
                f"{chunks.shape}"
            )
        if self.action_dim is None:
            self._allocate(chunks.shape[2])
        if chunks.shape[2] != self.action_dim:
            raise ValueError(f"chunks have {chunks.shape[2]} action dims, not {self.action_dim}")
        if chunks.shape[0] == self.num_envs:
            return chunks
        if chunks.shape[0] == int(need.sum()):
            full = np.zeros((self.num_envs, *chunks.shape[1:]), dtype=np.float32)
            full[need] = chunks
            return full
        raise ValueError(
            f"got chunks for {chunks.shape[0]} envs; give one per env ({self.num_envs}) or "
            f"one per env that needs a prediction ({int(need.sum())})"
        )

    def act(self, chunks: Any = None) -> np.ndarray:
        """The actions ``(N, A)`` float32 for this step; advances every env by one step.

        ``chunks`` must be given whenever :meth:`needs_prediction` has a True entry.
        """
        need = self.needs_prediction()
        if need.any() and chunks is None:
            raise ValueError(
                f"env(s) {np.flatnonzero(need).tolist()} need a prediction this step; pass "
                "the policy's chunks to act()"
            )
        full = self._scatter(chunks, need) if chunks is not None else None
        if self.action_dim is None:
            raise ValueError("the first call to act() must pass chunks")
        assert self.queue is not None and self.ensembler is not None
        if self.mode == "ensemble":
            self.ensembler.update(full, need)
            out = self.ensembler.act()
        elif self.mode == "receding":
            out = full[:, 0].copy()
        else:
            if need.any():
                self.queue[need] = full[need]
                self.position[need] = 0
            out = self.queue[np.arange(self.num_envs), self.position].copy()
            self.position += 1
        self.steps += 1
        return out.astype(np.float32, copy=False)
