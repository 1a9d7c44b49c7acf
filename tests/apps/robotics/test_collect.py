"""Expert demonstrations recorded as a LeRobotDataset v3.0 (apps/robotics/collect.py).

The recorded dataset has the plan's features, fps and robot type, instructions from the
training templates as tasks, proprio equal to the first two state numbers; it does not depend
on how many envs ran in lockstep; replaying its actions reproduces the episode and succeeds;
failed expert episodes are dropped and counted; the output folder is refused when non-empty,
reused when empty and replaced with overwrite; the CLI prints a one-line summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apps.robotics import collect as collect_module
from apps.robotics.collect import (
    ENV_STATE,
    ROBOT_TYPE,
    collect,
    collect_demonstrations,
    episode_seed,
    main,
)
from apps.robotics.dataset import read_dataset
from apps.robotics.envs import TabletopEnv, VectorEnv
from apps.robotics.envs.instructions import TRAIN_TEMPLATES

TOP, STATE, ACTION = "observation.images.top", "observation.state", "action"


def training_instructions(families=TRAIN_TEMPLATES) -> set[str]:
    colours = ("red", "green", "blue")
    out = set()
    for family in families:
        for template in TRAIN_TEMPLATES[family]:
            out |= {template.format(c1=a, c2=b) for a in colours for b in colours if a != b}
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "demos"
    collect_demonstrations(out, 4, seed=3, num_envs=3)
    return out


def test_dataset_layout_and_contents(recorded):
    ds = read_dataset(recorded)
    assert ds.version == "v3.0" and ds.fps == 10 and ds.robot_type == ROBOT_TYPE
    assert ds.num_episodes == 4
    assert set(ds.features) >= {TOP, STATE, ACTION, ENV_STATE}
    assert tuple(ds.features[TOP]["shape"]) == (96, 96, 3)
    assert ds.features[STATE]["names"] == ["pusher.x", "pusher.y"]
    assert tuple(ds.features[ENV_STATE]["shape"]) == (18,)
    assert ds.features[ACTION]["names"] == ["vx", "vy"]
    np.testing.assert_array_equal(ds.column(STATE), ds.column(ENV_STATE)[:, :2])
    assert np.abs(ds.column(ACTION)).max() <= 40.0
    assert set(ds.tasks) <= training_instructions()
    assert (recorded / "meta" / "stats.json").is_file()


def test_replay_reproduces_a_successful_episode(recorded):
    ds = read_dataset(recorded)
    episode = ds.episode(0)
    env = TabletopEnv()
    obs, info = env.reset(episode_seed(3, 0))
    assert info["instruction"] == episode.task
    for t, action in enumerate(episode.data[ACTION]):
        np.testing.assert_array_equal(obs["image"], episode.data[TOP][t])
        np.testing.assert_allclose(obs["state"], episode.data[ENV_STATE][t])
        obs, _, terminated, truncated, _ = env.step(action)
        assert not truncated
    assert terminated and env.success


def test_independent_of_num_envs(recorded, tmp_path):
    other = collect_demonstrations(tmp_path / "one_env", 4, seed=3, num_envs=1)
    a, b = read_dataset(recorded), read_dataset(other)
    assert a.tasks == b.tasks
    np.testing.assert_array_equal(a.column(ACTION), b.column(ACTION))
    np.testing.assert_array_equal(a.images(TOP, [0, 5]), b.images(TOP, [0, 5]))


def test_noise_injection_records_clean_expert_labels(tmp_path):
    """DART: the env executes expert + noise, the dataset holds the expert's own action at
    every recorded state; the noise depends on the episode's seed, not on num_envs."""
    noisy = read_dataset(collect_demonstrations(tmp_path / "n", 3, seed=3, action_noise=15.0))
    alone = read_dataset(
        collect_demonstrations(tmp_path / "n1", 3, seed=3, num_envs=1, action_noise=15.0)
    )
    np.testing.assert_array_equal(noisy.column(ACTION), alone.column(ACTION))
    episode = noisy.episode(0)
    env, noise = TabletopEnv(), np.random.default_rng((episode_seed(3, 0), 1))
    obs, _ = env.reset(episode_seed(3, 0))
    perturbed = 0.0
    for t, action in enumerate(episode.data[ACTION]):
        np.testing.assert_allclose(obs["state"], episode.data[ENV_STATE][t])
        np.testing.assert_array_equal(env.expert_action(), action)
        executed = action + 15.0 * noise.standard_normal(2)
        perturbed = max(perturbed, float(np.abs(executed - action).max()))
        obs, _, terminated, _, _ = env.step(executed.astype(np.float32))
    assert terminated and env.success and perturbed > 5.0
    clean = read_dataset(collect_demonstrations(tmp_path / "c", 3, seed=3))
    assert not np.array_equal(clean.episode(0).data[ACTION], episode.data[ACTION])


def test_families_filter(tmp_path):
    ds = read_dataset(collect_demonstrations(tmp_path / "d", 3, families=["which_object"]))
    assert set(ds.tasks) <= training_instructions(["which_object"])


def test_failed_episodes_are_dropped_and_counted(tmp_path, monkeypatch):
    # The first env of every lockstep batch "fails": 4 kept need 2 batches of 3, 2 failed.
    monkeypatch.setattr(VectorEnv, "success", property(lambda self: np.arange(self.num_envs) != 0))
    summary = collect(tmp_path / "d", 4, num_envs=3, progress=False)
    assert (summary.episodes, summary.failed) == (4, 2)
    assert read_dataset(tmp_path / "d").num_episodes == 4


def test_an_always_failing_expert_stops_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(VectorEnv, "success", property(lambda self: np.zeros(self.num_envs, bool)))
    with pytest.raises(RuntimeError, match="expert failed"):
        collect(tmp_path / "d", 2, families=["which_target"], num_envs=8, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_output_folder_rules(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    collect_demonstrations(out, 1)  # an empty folder is reused
    with pytest.raises(FileExistsError, match=r"not empty.*--overwrite"):
        collect_demonstrations(out, 1)
    collect_demonstrations(out, 2, overwrite=True)
    assert read_dataset(out).num_episodes == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="existing file"):
        collect_demonstrations(tmp_path / "file", 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"families": ["stacking"]}, "unknown task family 'stacking'"),
        ({"episodes": 0}, "episodes must be a positive int"),
        ({"num_envs": 0}, "num_envs must be >= 1"),
        ({"image_size": 4}, "image_size"),
        ({"families": []}, "families is empty"),
        ({"action_noise": -1.0}, "action_noise must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"out": tmp_path / "d", "episodes": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        collect_demonstrations(**args)
    assert not (tmp_path / "d").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--episodes", "2", "--out", str(out), "--families", "which_target", "--seed", "1"]
    assert main([*argv, "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("recorded 2 episodes, ") and " frames, " in line and str(out) in line
    assert "\n" not in line
    assert read_dataset(out).num_episodes == 2
    with pytest.raises(SystemExit) as err:
        main([*argv, "--quiet"])
    assert err.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--episodes", "1", "--out", str(tmp_path / "x"), "--families", "stacking"])


def test_module_exports():
    assert collect_module.episode_seed(2, 5) == 2 * 1_000_003 + 5
