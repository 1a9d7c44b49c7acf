"""Executing action chunks (apps/robotics/chunking.py).

The temporal ensembler is checked against a brute-force reading of ACT's rule (every chunk
predicted in the last ``chunk_size`` steps votes for the current action with weight
``exp(-m * i)``, ``i = 0`` for the oldest), across envs that reset at different steps; open
loop re-plans every ``chunk_size`` steps and plays the chunk in order; receding executes the
first action of each fresh chunk.
"""

from __future__ import annotations

import numpy as np
import pytest

from apps.robotics.chunking import ChunkExecutor, TemporalEnsembler

N, CHUNK, A = 3, 4, 2


def brute_force(history: list[tuple[int, np.ndarray]], t: int, m: float) -> np.ndarray:
    """ACT's ensembled action at time ``t`` from ``[(step predicted, chunk)]`` of one env."""
    valid = sorted((s, c) for s, c in history if 0 <= t - s < len(c))  # oldest first
    weights = np.exp(-m * np.arange(len(valid)))
    votes = np.stack([c[t - s] for s, c in valid])
    return (weights[:, None] * votes).sum(0) / weights.sum()


@pytest.mark.parametrize("coeff", [0.01, 0.5, 0.0, -0.3])
def test_ensembling_matches_brute_force(coeff):
    rng = np.random.default_rng(0)
    ensembler = TemporalEnsembler(CHUNK, A, num_envs=N, coeff=coeff)
    histories: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(N)]
    starts = [0] * N
    for t in range(15):
        if t == 6:  # env 1's episode ends: it starts over
            ensembler.reset([1])
            histories[1], starts[1] = [], t
        chunks = rng.normal(size=(N, CHUNK, A))
        ensembler.update(chunks)
        for n in range(N):
            histories[n].append((t - starts[n], chunks[n]))
        actions = ensembler.act()
        assert actions.shape == (N, A) and actions.dtype == np.float32
        for n in range(N):
            expected = brute_force(histories[n], t - starts[n], coeff)
            np.testing.assert_allclose(actions[n], expected, rtol=1e-5, atol=1e-6)


def test_ensembler_weights_favour_the_oldest_prediction():
    ensembler = TemporalEnsembler(2, 1, coeff=np.log(2.0))  # weights 1, 1/2
    ensembler.update(np.array([[[0.0], [0.0]]]))
    ensembler.act()
    ensembler.update(np.array([[[3.0], [3.0]]]))
    assert ensembler.act()[0, 0] == pytest.approx(1.0)  # (1*0 + 0.5*3) / 1.5


def test_ensembler_refuses_to_act_without_a_prediction():
    ensembler = TemporalEnsembler(CHUNK, A, num_envs=2)
    with pytest.raises(RuntimeError, match="no prediction"):
        ensembler.act()
    with pytest.raises(ValueError, match="chunks must have shape"):
        ensembler.update(np.zeros((2, CHUNK + 1, A)))


def test_open_loop_replans_every_chunk_size_steps():
    rng = np.random.default_rng(1)
    executor = ChunkExecutor("open_loop", CHUNK, num_envs=N)
    predicted_at, current = [], None
    for t in range(3 * CHUNK):
        need = executor.needs_prediction(t)
        assert need.dtype == bool and need.shape == (N,)
        if need.any():
            assert need.all()
            predicted_at.append(t)
            current = rng.normal(size=(N, CHUNK, A)).astype(np.float32)
            actions = executor.act(current)
        else:
            actions = executor.act(None)
        np.testing.assert_array_equal(actions, current[:, t % CHUNK])
    assert predicted_at == [0, CHUNK, 2 * CHUNK]


def test_open_loop_per_env_reset_and_chunks_for_the_needy_envs_only():
    executor = ChunkExecutor("open_loop", CHUNK, num_envs=N, execute_steps=2)
    first = np.arange(N * CHUNK * A, dtype=np.float32).reshape(N, CHUNK, A)
    executor.act(first)
    executor.reset([2])  # env 2 starts a new episode after one step
    np.testing.assert_array_equal(executor.needs_prediction(), [False, False, True])
    fresh = -np.ones((1, CHUNK, A), dtype=np.float32)  # only env 2's chunk
    actions = executor.act(fresh)
    np.testing.assert_array_equal(actions[:2], first[:2, 1])
    np.testing.assert_array_equal(actions[2], fresh[0, 0])
    # execute_steps=2: envs 0 and 1 re-plan after two actions.
    np.testing.assert_array_equal(executor.needs_prediction(), [True, True, False])
    with pytest.raises(ValueError, match="need a prediction"):
        executor.act(None)


def test_receding_executes_the_first_action_of_each_fresh_chunk():
    rng = np.random.default_rng(2)
    executor = ChunkExecutor("receding", CHUNK, num_envs=N)
    for t in range(6):
        assert executor.needs_prediction(t).all()
        chunks = rng.normal(size=(N, CHUNK, A)).astype(np.float32)
        np.testing.assert_array_equal(executor.act(chunks), chunks[:, 0])


def test_ensemble_mode_is_the_temporal_ensembler():
    rng = np.random.default_rng(3)
    executor = ChunkExecutor("ensemble", CHUNK, num_envs=N, coeff=0.2)
    reference = TemporalEnsembler(CHUNK, A, num_envs=N, coeff=0.2)
    for t in range(9):
        if t == 4:
            executor.reset(np.array([True, False, False]))
            reference.reset([0])
        assert executor.needs_prediction(t).all()
        chunks = rng.normal(size=(N, CHUNK, A))
        reference.update(chunks)
        np.testing.assert_allclose(executor.act(chunks), reference.act(), atol=1e-6)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown chunk execution mode"):
        ChunkExecutor("closed_loop", CHUNK)
    with pytest.raises(ValueError, match="execute_steps"):
        ChunkExecutor("open_loop", CHUNK, execute_steps=CHUNK + 1)
    executor = ChunkExecutor("receding", CHUNK, num_envs=N)
    with pytest.raises(ValueError, match="chunks for 2 envs"):
        executor.act(np.zeros((2, CHUNK, A)))
    with pytest.raises(ValueError, match="env indices"):
        executor.reset([N])
