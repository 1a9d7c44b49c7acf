"""Online self-improvement: recorded rollouts, AWR weights, batch mixing, the whole loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.robotics.behaviour_cloning import (
    Source,
    draw_batch,
    rollout_dataset,
    train_policy,
)
from apps.robotics.envs import VectorEnv
from apps.robotics.evaluation import ExpertPolicy, rollout
from apps.robotics.model import fake_text_tower
from apps.robotics.online import (
    AWR_MAX_WEIGHT,
    FIGURE,
    awr_weights,
    run,
)

from .small_policy import SMALL, small_policy

SEEDS = list(range(500, 506))


@pytest.fixture(scope="module")
def recorded():
    return rollout(ExpertPolicy(), SEEDS, num_envs=3, record_transitions=True, progress=False)


@pytest.fixture(scope="module")
def policy():
    return small_policy()


def test_recorded_transitions_replay_to_the_same_outcome(recorded):
    for episode in recorded.episodes:
        steps = episode.steps
        assert episode.actions.shape == (steps, 2) and episode.proprio.shape == (steps, 2)
        assert len(episode.frames) == steps + 1
        assert (episode.final_frame == episode.frames[-1]).all()
    # Replaying the recorded actions from the same seed reaches the same end.
    vec = VectorEnv("tabletop", num_envs=1)
    episode = recorded.episodes[0]
    obs, _ = vec.reset([episode.seed])
    for state, action in zip(episode.proprio, episode.actions, strict=True):
        np.testing.assert_allclose(obs["state"][0, :2], state, atol=1e-5)
        obs, *_, infos = vec.step(action[None])
    assert infos[0]["success"] == episode.success


def test_exploration_noise_is_seeded_per_episode_and_changes_actions(recorded):
    a = rollout(ExpertPolicy(), SEEDS, num_envs=3, record_transitions=True, action_noise=8.0,
                progress=False)  # fmt: skip
    b = rollout(ExpertPolicy(), SEEDS, num_envs=2, record_transitions=True, action_noise=8.0,
                progress=False)  # fmt: skip
    for x, y, clean in zip(a.episodes, b.episodes, recorded.episodes, strict=True):
        np.testing.assert_array_equal(x.actions, y.actions)  # independent of batching
        n = min(len(x.actions), len(clean.actions))
        assert not np.allclose(x.actions[:n], clean.actions[:n])
        assert np.abs(x.actions).max() <= 40.0  # clipped to the env's bounds
    with pytest.raises(ValueError, match="action_noise"):
        rollout(ExpertPolicy(), SEEDS[:1], action_noise=-1.0, progress=False)


def test_awr_weights_closed_form():
    w = awr_weights(np.array([1.0, 0.0, 0.0, 1.0]), beta=0.5)
    np.testing.assert_allclose(w, np.exp([1.0, -1.0, -1.0, 1.0]))
    assert awr_weights(np.array([1.0, 0.0, 0.0, 0.0]), beta=0.01).max() == AWR_MAX_WEIGHT
    with pytest.raises(ValueError, match="beta"):
        awr_weights(np.ones(2), beta=0.0)


def test_rollout_dataset_holds_every_step_normalised(recorded, policy):
    data = rollout_dataset(policy, recorded.episodes, chunk_size=4)
    total = sum(e.steps for e in recorded.episodes)
    assert len(data) == total
    first = recorded.episodes[0]
    sample = data[0]
    expected = policy.normalizer.normalize_action(first.actions[:4])
    np.testing.assert_allclose(sample["action"].numpy(), expected, atol=1e-6)
    assert sample["instruction"] == first.instruction
    # the last step of an episode pads its chunk instead of reading the next episode
    last = data[first.steps - 1]
    assert last["action_pad"].tolist() == [False, True, True, True]
    broken = [type(first)(**{**vars(first), "frames": first.frames[:2]})]
    with pytest.raises(ValueError, match="record_transitions"):
        rollout_dataset(policy, broken, chunk_size=4)


def test_batches_follow_shares_and_weights(recorded, policy):
    data = rollout_dataset(policy, recorded.episodes, chunk_size=4)
    only_last = torch.zeros(len(data), dtype=torch.float64)
    only_last[-1] = 1.0
    gen = torch.Generator().manual_seed(0)
    batch = draw_batch([Source(data, only_last)], 16, gen)
    assert (batch["proprio"] == data[len(data) - 1]["proprio"]).all()
    none = Source(data, share=0.0)
    batch = draw_batch([Source(data, only_last, 1.0), none], 8, gen)
    assert len(batch["instruction"]) == 8 and (batch["proprio"] == batch["proprio"][0]).all()


def test_train_policy_lowers_the_loss(recorded, policy):
    data = rollout_dataset(policy, recorded.episodes, chunk_size=4)
    losses = train_policy(policy, [Source(data)], 60, lr=3e-3, batch_size=16, progress=False)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    with pytest.raises(ValueError, match="steps"):
        train_policy(policy, [Source(data)], 0, progress=False)


def test_whole_loop_writes_its_report(tmp_path):
    out = tmp_path / "online"
    payload = run(
        out, prior_demos=6, prior_steps=3, classifier_episodes=8, classifier_val_episodes=4,
        classifier_steps=3, rounds=1, rollouts_per_round=4, steps_per_round=2, test_episodes=4,
        num_envs=4, progress=False, cache_dir=str(tmp_path / "cache"),
        text_tower=fake_text_tower(), policy_options=SMALL,
    )  # fmt: skip
    assert set(payload["methods"]) == {"filtered_bc", "awr"}
    for rounds in payload["methods"].values():
        assert [r["round"] for r in rounds] == [0, 1]
        assert rounds[0] == payload["methods"]["awr"][0]  # one shared prior
        assert rounds[1]["rollouts"] == 4 and rounds[1]["test_success"]["trials"] == 4
        assert rounds[1]["classifier_on_rollouts"]["count"] == 4
    saved = json.loads((out / "online.json").read_text())
    assert saved["target"] == "which_object" and saved["prior"] == ["which_target", "ordering"]
    assert (out / FIGURE).stat().st_size > 0 and "## awr" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="prior"):
        run(tmp_path / "x", target="ordering", prior=["ordering"])
