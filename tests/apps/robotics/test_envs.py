import math

import numpy as np
import pytest

from apps.robotics.envs import (
    ENVS,
    FAMILIES,
    TASKS,
    PandaPushEnv,
    VectorEnv,
    make_env,
    parse_task,
    tasks_for,
)
from apps.robotics.envs.instructions import PARAPHRASE_TEMPLATES, TRAIN_TEMPLATES
from apps.robotics.envs.render import Disc, Square, rasterize
from apps.robotics.envs.tabletop import (
    BLOCK_RGB,
    MAX_SPEED,
    OBJECTS,
    PUSHER_RADIUS,
    PUSHER_RGB,
    STATE_NAMES,
    SUCCESS_RADIUS,
    WORLD,
)


def run_episode(env, seed, task=None, policy="expert", pursue=None, rng=None):
    """Play one episode; returns (observations, infos, actions)."""
    obs, info = env.reset(seed, task=task)
    observations, infos, actions = [obs], [info], []
    done = False
    while not done:
        if policy == "expert":
            action = env.expert_action(pursue)
        else:
            action = rng.uniform(env.action_low, env.action_high)
        obs, _, terminated, truncated, info = env.step(action)
        observations.append(obs)
        infos.append(info)
        actions.append(action)
        done = terminated or truncated
    return observations, infos, actions


def xy(state, name):
    i = STATE_NAMES.index(f"{name}.x")
    return state[i : i + 2].astype(float)


# ------------------------------------------------------------------ the expert


@pytest.mark.parametrize("family", FAMILIES)
def test_the_scripted_expert_succeeds_on_at_least_95_percent_of_50_seeds(family):
    env = make_env(families=[family])
    wins = sum(run_episode(env, seed)[1][-1]["success"] for seed in range(50))
    assert wins / 50 >= 0.95, f"{family}: expert {wins}/50"


def test_in_front_of_the_block_the_expert_always_goes_round_the_same_way():
    """Standing between block and goal, a hair to either side of the line, the expert orbits
    in the same sense (choosing by the side flips there, and a cloned policy that averages
    the two ways round pushes the block away from its goal)."""
    from apps.robotics.envs.tabletop import push_action

    block, goal = np.array([48.0, 48.0]), np.array([78.0, 48.0])
    above = push_action(np.array([63.0, 47.7]), block, goal)
    below = push_action(np.array([63.0, 48.3]), block, goal)
    assert np.sign(above[1]) == np.sign(below[1]) != 0
    # Off the front, it still takes the short way round (the sign of the side decides).
    side_a = push_action(np.array([48.0, 33.0]), block, goal)
    side_b = push_action(np.array([48.0, 63.0]), block, goal)
    assert side_a[0] < 0 and side_b[0] < 0 and np.sign(side_a[1]) != np.sign(side_b[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_pursuing_another_colour_fails_so_the_instruction_matters(family):
    # Same scene, expert chasing a different task of the family: the true task never succeeds.
    env = make_env()
    for seed in range(6):
        for task in tasks_for(family):
            wrong = [t for t in tasks_for(family) if t != task][seed % (len(tasks_for(family)) - 1)]
            _, infos, _ = run_episode(env, seed, task=task, pursue=wrong)
            assert not infos[-1]["success"], (seed, task, wrong)


def test_a_random_policy_almost_never_succeeds():
    env = make_env()
    rng = np.random.default_rng(0)
    wins = sum(run_episode(env, s, policy="random", rng=rng)[1][-1]["success"] for s in range(15))
    assert wins <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_success_fires_exactly_when_the_geometric_criterion_first_holds(family):
    env = make_env(families=[family])
    radius = SUCCESS_RADIUS[family]
    for seed in range(4):
        observations, infos, _ = run_episode(env, seed)
        spec = parse_task(infos[0]["task"])
        assert infos[-1]["success"] and not any(i["success"] for i in infos[:-1])
        if family == "which_target":
            pairs = [("block", f"{spec.colours[0]}_target")]
        else:
            pairs = [(f"{c}_block", "zone") for c in spec.colours]
        final = observations[-1]["state"]
        assert all(np.linalg.norm(xy(final, a) - xy(final, b)) <= radius for a, b in pairs)
        before = observations[-2]["state"]
        assert not all(np.linalg.norm(xy(before, a) - xy(before, b)) <= radius for a, b in pairs)
        if family == "ordering":  # the first block was inside while the second was not
            inside = [
                [np.linalg.norm(xy(o["state"], a) - xy(o["state"], b)) <= radius for a, b in pairs]
                for o in observations
            ]
            assert any(first and not second for first, second in inside)


def test_ordering_fails_when_the_second_block_goes_in_first():
    env = make_env()
    for seed in range(4):
        for task in tasks_for("ordering"):
            c1, c2 = parse_task(task).colours
            reverse = f"push the {c2} block to the target zone, then the {c1} block"
            _, infos, _ = run_episode(env, seed, task=task, pursue=reverse)
            assert not infos[-1]["success"]
            assert infos[-1]["step"] == env.max_steps


# ------------------------------------------------------------------ seeding


def test_the_same_seed_gives_the_same_layout_images_and_trajectory():
    env_a, env_b = make_env(), make_env()
    for seed in (0, 5, 11):
        obs_a, infos_a, actions_a = run_episode(env_a, seed)
        obs_b, infos_b, actions_b = run_episode(env_b, seed)
        assert infos_a == infos_b
        for a, b in zip(obs_a, obs_b, strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["state"], b["state"])
        np.testing.assert_array_equal(np.array(actions_a), np.array(actions_b))
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)  # and for any actions
    obs_a, _, _ = run_episode(env_a, 3, policy="random", rng=rng_a)
    obs_b, _, _ = run_episode(env_a, 3, policy="random", rng=rng_b)
    np.testing.assert_array_equal(obs_a[-1]["image"], obs_b[-1]["image"])


def test_different_seeds_give_different_layouts_and_cover_every_task():
    env = make_env()
    states = [env.reset(seed)[0]["state"] for seed in range(40)]
    assert len({s.tobytes() for s in states}) == 40
    assert {env.reset(seed)[1]["task"] for seed in range(120)} == set(TASKS)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_seed_shows_the_same_scene_under_every_colour(family):
    env = make_env()
    first = [env.reset(9, task=t)[0] for t in tasks_for(family)]
    for obs in first[1:]:
        np.testing.assert_array_equal(obs["image"], first[0]["image"])
        np.testing.assert_array_equal(obs["state"], first[0]["state"])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_colours_take_shuffled_corners(family):
    # A fixed colour-to-place mapping would let a blind policy memorise it.
    env = make_env(families=[family])
    name = "red_target" if family == "which_target" else "red_block"
    quadrants = set()
    for seed in range(30):
        x, y = xy(env.reset(seed)[0]["state"], name)
        quadrants.add((x > WORLD / 2, y > WORLD / 2))
    assert len(quadrants) == 4


# ------------------------------------------------------------------ observations


def test_observations_have_the_documented_keys_shapes_dtypes_and_names():
    env = make_env()
    obs, info = env.reset(0)
    assert set(obs) == {"image", "state"}
    assert obs["image"].shape == (96, 96, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (env.state_dim,) == (18,) and obs["state"].dtype == np.float32
    assert len(env.state_names) == env.state_dim and len(env.action_names) == env.action_dim == 2
    assert list(env.camera_keys) == ["observation.images.top"]
    assert env.fps == 10 and env.max_steps == 120
    np.testing.assert_array_equal(env.action_low, [-MAX_SPEED] * 2)
    np.testing.assert_array_equal(env.action_high, [MAX_SPEED] * 2)
    assert set(info) == {"task", "instruction", "family", "success", "step"}
    assert info["task"] in TASKS and info["family"] == parse_task(info["task"]).family


@pytest.mark.parametrize("family", FAMILIES)
def test_the_state_holds_present_objects_and_zeros_for_absent_ones(family):
    env = make_env(families=[family])
    state = env.reset(2)[0]["state"]
    present = (
        {"block", "red_target", "green_target", "blue_target"}
        if family == "which_target"
        else {"red_block", "green_block", "blue_block", "zone"}
    )
    for name in OBJECTS:
        position = xy(state, name)
        if name in present:
            assert np.all(position >= 5) and np.all(position <= WORLD - 5), name
        else:
            np.testing.assert_array_equal(position, [0.0, 0.0])
    np.testing.assert_allclose(xy(state, "pusher"), env._pusher.position, atol=1e-4)


def test_the_image_shows_objects_where_the_state_puts_them():
    env = make_env(families=["which_object"])
    for seed in range(5):
        obs, _ = env.reset(seed)
        image, state = obs["image"].astype(int), obs["state"]
        for colour, rgb in BLOCK_RGB.items():  # x is the column, y the row
            col, row = (int(v) for v in xy(state, f"{colour}_block"))
            assert np.abs(image[row, col] - rgb).max() <= 12, (seed, colour, image[row, col])
        col, row = (int(v) for v in xy(state, "pusher"))
        assert np.abs(image[row, col] - PUSHER_RGB).max() <= 12


def test_an_image_size_option_renders_at_that_size_from_the_same_scene():
    small = make_env(image_size=48).reset(1)[0]
    large = make_env().reset(1)[0]
    assert small["image"].shape == (48, 48, 3)
    np.testing.assert_array_equal(small["state"], large["state"])
    downsampled = large["image"].reshape(48, 2, 48, 2, 3).mean(axis=(1, 3))
    assert np.abs(downsampled - small["image"]).mean() < 4


def test_instructions_follow_the_paraphrase_option_or_the_given_text():
    for paraphrase, templates in ((False, TRAIN_TEMPLATES), (True, PARAPHRASE_TEMPLATES)):
        env = make_env(paraphrase=paraphrase)
        for seed in range(10):
            info = env.reset(seed)[1]
            spec = parse_task(info["task"])
            fills = {
                t.format(c1=spec.colours[0], c2=spec.colours[-1]) for t in templates[spec.family]
            }
            assert info["instruction"] in fills
    env = make_env()
    assert env.reset(0, instruction="")[1]["instruction"] == ""
    assert env.reset(0, instruction="go")[1]["instruction"] == env.instruction == "go"


# ------------------------------------------------------------------ control


def test_actions_are_clipped_and_the_pusher_stays_on_the_table():
    env = make_env()
    env.reset(0)
    start = xy(env.state(), "pusher")
    env.step(np.array([1e6, -1e6], dtype=np.float32))
    moved = xy(env.state(), "pusher") - start
    step_limit = MAX_SPEED / env.fps  # 4 units; the pusher starts >= 8 from every wall
    np.testing.assert_allclose(moved, [step_limit, -step_limit], atol=1e-4)
    for _ in range(40):
        env.step(np.array([-MAX_SPEED, -MAX_SPEED]))
    np.testing.assert_allclose(xy(env.state(), "pusher"), [PUSHER_RADIUS] * 2, atol=1e-6)


def test_a_commanded_velocity_moves_the_pusher_by_velocity_over_fps():
    env = make_env()
    env.reset(3)
    start = xy(env.state(), "pusher")
    env.step(np.array([10.0, -5.0]))
    np.testing.assert_allclose(xy(env.state(), "pusher") - start, [1.0, -0.5], atol=1e-6)


def test_blocks_stay_on_the_table_under_any_actions():
    env = make_env()
    rng = np.random.default_rng(1)
    for seed in range(3):
        observations, _, _ = run_episode(env, seed, policy="random", rng=rng)
        for obs in observations:
            for name in OBJECTS:
                position = xy(obs["state"], name)
                assert np.all(position >= 0) and np.all(position <= WORLD)
                assert np.all(np.isfinite(position))


def test_episodes_truncate_at_max_steps():
    env = make_env(max_steps=5)
    env.reset(0)
    for step in range(1, 6):
        _, reward, terminated, truncated, info = env.step(np.zeros(2))
        assert (terminated, truncated, reward) == (False, step == 5, 0.0)
    assert info["step"] == 5
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))


def test_the_success_step_rewards_one_and_terminates():
    env = make_env()
    _, infos, _ = run_episode(env, 0)
    env.reset(0)
    rewards = [env.step(env.expert_action())[1] for _ in range(infos[-1]["step"])]
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown env 'push_t'.*pusht.*tabletop"):
        make_env("push_t")
    with pytest.raises(ValueError, match=r"unknown task family 'stack'.*which_target"):
        make_env(families=["stack"])
    with pytest.raises(ValueError, match="families is empty"):
        make_env(families=[])
    env = make_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    with pytest.raises(
        ValueError, match=r"unknown task 'push the cube'.*push the block to the red"
    ):
        env.reset(0, task="push the cube")
    with pytest.raises(ValueError, match="non-negative int"):
        env.reset(-1)
    env.reset(0, task=tasks_for("which_target")[0])
    for bad in (np.zeros(3), np.zeros((1, 2)), np.float32(1.0)):
        with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
            env.step(bad)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="'which_target'"):
        env.expert_action(tasks_for("which_object")[0])
    assert sorted(ENVS) == ["panda", "pusht", "tabletop"]
    assert isinstance(make_env("panda"), PandaPushEnv)


# ------------------------------------------------------------------ VectorEnv


def test_vector_env_matches_single_envs_stepped_one_by_one():
    seeds = [4, 8, 15, 16]
    vec = VectorEnv("tabletop", len(seeds))
    obs, _ = vec.reset(seeds)
    assert obs["image"].shape == (4, 96, 96, 3) and obs["state"].shape == (4, 18)
    trajectories = [run_episode(make_env(), seed)[0] for seed in seeds]
    step = 0
    while not vec.done.all():
        actions = vec.expert_actions()
        obs, rewards, terminated, truncated, _ = vec.step(actions)
        step += 1
        assert rewards.shape == terminated.shape == truncated.shape == (4,)
        for i, trajectory in enumerate(trajectories):
            expected = trajectory[min(step, len(trajectory) - 1)]  # finished envs stay frozen
            np.testing.assert_array_equal(obs["state"][i], expected["state"])
            np.testing.assert_array_equal(obs["image"][i], expected["image"])
            if step >= len(trajectory):
                assert rewards[i] == 0.0 and terminated[i]
    assert step == max(len(t) for t in trajectories) - 1
    assert vec.success.all()


def test_vector_env_takes_tasks_and_instructions_and_checks_shapes():
    vec = VectorEnv("tabletop", 2, families=["which_target"])
    tasks = [tasks_for("which_object")[0], tasks_for("ordering")[0]]
    _, infos = vec.reset([0, 1], tasks=tasks, instructions=["", "hello"])
    assert [i["task"] for i in infos] == tasks and [i["instruction"] for i in infos] == [
        "",
        "hello",
    ]
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 2\)"):
        vec.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 envs"):
        vec.reset([0])
    with pytest.raises(ValueError, match="unknown env"):
        VectorEnv("nope", 2)


# ------------------------------------------------------------------ rasterizer


def test_rasterized_areas_match_the_closed_form():
    white = (255, 255, 255)
    disc = rasterize([Disc((48.3, 40.7), 10.0, white)], 96, WORLD, (0, 0, 0), supersample=4)
    area = disc[..., 0].astype(float).sum() / 255
    assert math.isclose(area, math.pi * 10.0**2, rel_tol=0.03)
    square = rasterize([Square((50.0, 50.0), 8.0, 0.4, white)], 96, WORLD, (0, 0, 0), 4)
    assert math.isclose(square[..., 0].astype(float).sum() / 255, 16.0**2, rel_tol=0.03)
    ring = rasterize([Disc((48, 48), 20.0, white, width=2.0)], 96, WORLD, (0, 0, 0), 4)
    ring_area = ring[..., 0].astype(float).sum() / 255
    assert math.isclose(ring_area, math.pi * (20.0**2 - 18.0**2), rel_tol=0.1)
    assert ring[48, 48].max() == 0  # hollow
    with pytest.raises(TypeError, match="only Disc and Square"):
        rasterize(["circle"], 96, WORLD, (0, 0, 0))
