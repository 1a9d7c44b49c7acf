import numpy as np
import pytest

from apps.robotics.envs import PandaPushEnv
from apps.robotics.envs.instructions import COLOURS
from apps.robotics.envs.panda import (
    MAX_DELTA,
    MAX_REACH,
    PARAPHRASE_TEMPLATES,
    STATE_NAMES,
    SUCCESS_RADIUS,
    TASKS,
    TRAIN_TEMPLATES,
    expert_success_rate,
    task_for,
)


@pytest.fixture(scope="module")
def fast_env():
    env = PandaPushEnv(camera=False)
    yield env
    env.close()


@pytest.fixture(scope="module")
def camera_env():
    env = PandaPushEnv()
    yield env
    env.close()


def run_episode(env, seed, task=None, pursue=None, max_steps=None):
    obs, info = env.reset(seed, task=task)
    observations, infos, actions = [obs], [info], []
    done = False
    while not done and (max_steps is None or len(actions) < max_steps):
        action = env.expert_action(pursue)
        obs, _, terminated, truncated, info = env.step(action)
        observations.append(obs)
        infos.append(info)
        actions.append(action)
        done = terminated or truncated
    return observations, infos, actions


def xy(state, name):
    i = STATE_NAMES.index(f"{name}.x")
    return state[i : i + 2].astype(float)


def test_the_expert_succeeds_on_at_least_95_percent_of_20_seeds():
    # 50 seeds: 50/50 (see the module docstring for the command); 20 keep the test fast.
    result = expert_success_rate(range(20))
    assert result["success_rate"] >= 0.95, result
    assert result["mean_steps"] < 45


def test_success_fires_exactly_when_the_named_cube_reaches_the_target(fast_env):
    for seed in range(3):
        observations, infos, _ = run_episode(fast_env, seed)
        colour = fast_env.colour
        assert infos[-1]["success"] and not any(i["success"] for i in infos[:-1])
        distances = [
            np.linalg.norm(xy(o["state"], f"{colour}_cube") - xy(o["state"], "target"))
            for o in observations
        ]
        assert distances[-1] <= SUCCESS_RADIUS + 1e-6 < min(distances[:-1])


def test_pushing_another_colour_does_not_succeed(fast_env):
    for seed in range(2):
        task = task_for(COLOURS[seed])
        wrong = task_for(COLOURS[seed + 1])
        _, infos, _ = run_episode(fast_env, seed, task=task, pursue=wrong, max_steps=35)
        assert not any(i["success"] for i in infos)


def test_the_same_seed_gives_the_same_scene_images_and_trajectory(camera_env):
    other = PandaPushEnv()
    try:
        obs_a, infos_a, actions_a = run_episode(camera_env, 4, max_steps=8)
        obs_b, infos_b, actions_b = run_episode(other, 4, max_steps=8)
    finally:
        other.close()
    assert infos_a == infos_b
    for a, b in zip(obs_a, obs_b, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_array_equal(np.array(actions_a), np.array(actions_b))
    assert not np.array_equal(obs_a[0]["image"], obs_a[-1]["image"])  # the arm moved


def test_seeds_vary_the_scene_and_the_colour_does_not(fast_env):
    states = [fast_env.reset(seed)[0]["state"] for seed in range(10)]
    assert len({s.tobytes() for s in states}) == 10
    assert {fast_env.reset(seed)[1]["task"] for seed in range(30)} == set(TASKS)
    same = [fast_env.reset(7, task=t)[0]["state"] for t in TASKS]
    for state in same[1:]:
        np.testing.assert_array_equal(state, same[0])


def test_observations_have_the_documented_keys_shapes_and_dtypes(camera_env, fast_env):
    obs, info = camera_env.reset(0)
    assert set(obs) == {"image", "state"}
    assert obs["image"].shape == (96, 96, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (camera_env.state_dim,) == (11,)
    assert obs["state"].dtype == np.float32
    assert obs["image"].std() > 5  # a scene, not a blank frame
    assert list(camera_env.camera_keys) == ["observation.images.top"]
    assert camera_env.fps == 10 and camera_env.max_steps == 60 and camera_env.action_dim == 2
    assert set(info) == {"task", "instruction", "family", "success", "step"}
    assert info["task"] in TASKS and not info["success"] and info["step"] == 0
    np.testing.assert_allclose(obs["state"][:3], camera_env.ee_position(), atol=1e-6)
    assert abs(obs["state"][2] - 0.025) < 0.005  # the pushing height
    fast_obs, _ = fast_env.reset(0)
    assert set(fast_obs) == {"state"} and fast_env.camera_keys == ()
    np.testing.assert_array_equal(fast_obs["state"], obs["state"])


def test_instructions_follow_the_templates_or_the_given_text(fast_env):
    for seed in range(6):
        info = fast_env.reset(seed)[1]
        colour = fast_env.colour
        assert info["instruction"] in {t.format(c1=colour) for t in TRAIN_TEMPLATES}
    paraphrasing = PandaPushEnv(paraphrase=True, camera=False)
    info = paraphrasing.reset(1)[1]
    assert info["instruction"] in {t.format(c1=paraphrasing.colour) for t in PARAPHRASE_TEMPLATES}
    paraphrasing.close()
    assert fast_env.reset(0, instruction="go")[1]["instruction"] == "go"


def test_actions_are_clipped_and_move_the_gripper_by_about_the_delta(fast_env):
    fast_env.reset(5)  # starts near the middle of the workspace
    start = fast_env.ee_position()
    for action in ([1.0, -1.0], [1.0, -1.0], [0.0, 0.0]):
        fast_env.step(np.array(action))
    moved = fast_env.ee_position() - start
    np.testing.assert_allclose(moved[:2], [2 * MAX_DELTA, -2 * MAX_DELTA], atol=0.005)
    assert abs(moved[2]) < 0.005
    for _ in range(30):  # the set-point stays reachable: the gripper keeps up at the edge
        fast_env.step(np.array([MAX_DELTA, MAX_DELTA]))
    fast_env.step(np.zeros(2))
    ee = fast_env.ee_position()
    assert np.hypot(*ee[:2]) <= MAX_REACH + 0.005 and abs(ee[2] - 0.025) < 0.005


def test_episodes_truncate_at_max_steps():
    env = PandaPushEnv(max_steps=3, camera=False)
    env.reset(0)
    for step in range(1, 4):
        _, reward, terminated, truncated, _ = env.step(np.zeros(2))
        assert (terminated, truncated, reward) == (False, step == 3, 0.0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.close()


def test_bad_input_raises_a_clear_error(fast_env):
    with pytest.raises(ValueError, match=r"unknown colour 'purple'.*red"):
        PandaPushEnv(colours=["purple"])
    with pytest.raises(ValueError, match=r"unknown colour 'purple'"):
        task_for("purple")
    with pytest.raises(ValueError, match="colours is empty"):
        PandaPushEnv(colours=[])
    with pytest.raises(RuntimeError, match="reset"):
        PandaPushEnv(camera=False).step(np.zeros(2))
    with pytest.raises(ValueError, match=r"unknown task 'push the cube'.*push the red cube"):
        fast_env.reset(0, task="push the cube")
    with pytest.raises(ValueError, match="non-negative int"):
        fast_env.reset(-1)
    fast_env.reset(0)
    for bad in (np.zeros(3), np.zeros((1, 2)), np.float32(0.01)):
        with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
            fast_env.step(bad)
    with pytest.raises(ValueError, match="NaN"):
        fast_env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="unknown task"):
        fast_env.expert_action("push the purple cube to the target")
