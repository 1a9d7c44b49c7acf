"""The robotics data module and the action / proprio normaliser (apps/robotics/data.py,
apps/robotics/normalize.py).

Samples have the documented keys, shapes and dtypes in pixel and trunk modes; action chunks
follow the episode and are padded with its last action past the end; normalisation
round-trips on numpy and torch and survives a checkpoint as plain lists; the embedded and the
lerobot sources read the same directory the same way; the split is by episode; the trunk
features are what the encoder gives and come from the cache the second time; bad datasets
and arguments raise errors naming the key or file and the fix.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import apps.robotics.data as data_module
from apps.robotics.data import (
    RoboticsDataModule,
    build_trunk,
    collate,
    dataset_fingerprint,
    encode_trunk,
    family_of,
)
from apps.robotics.dataset import Episode, make_features, read_dataset, write_dataset
from apps.robotics.normalize import Normalizer, check_within_stats
from core.cache import CACHE_ENV

TOP, STATE, ACTION = "observation.images.top", "observation.state", "action"
EPISODES, CHUNK = 5, 4


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def pixels() -> RoboticsDataModule:
    dm = RoboticsDataModule(
        episodes=EPISODES, image_features="pixels", chunk_size=CHUNK, val_fraction=0.2
    )
    dm.setup()
    return dm


@pytest.fixture
def copy(pixels, tmp_path) -> Path:
    """A private copy of the embedded dataset, to damage."""
    return Path(shutil.copytree(pixels.dataset_root, tmp_path / "ds"))


def lerobot(root, **kwargs) -> RoboticsDataModule:
    dm = RoboticsDataModule(source="lerobot", root=str(root), image_features="pixels", **kwargs)
    dm.setup()
    return dm


def edit_stats(root: Path, key: str, stat: str, value) -> None:
    path = root / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    if value is None:
        del stats[key][stat]
    else:
        stats[key][stat] = value
    path.write_text(json.dumps(stats))


# ----------------------------------------------------------------------------- samples
def test_sample_and_batch(pixels):
    sample = pixels._sets["train"][0]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 96, 96)
    assert sample["proprio"].dtype == torch.float32 and sample["proprio"].shape == (2,)
    assert sample["action"].dtype == torch.float32 and sample["action"].shape == (CHUNK, 2)
    assert sample["action_pad"].dtype == torch.bool and sample["action_pad"].shape == (CHUNK,)
    assert isinstance(sample["instruction"], str) and isinstance(sample["episode_index"], int)
    batch = next(iter(pixels.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 96, 96) and batch["action"].shape[1:] == (CHUNK, 2)
    assert isinstance(batch["instruction"], list) and len(batch["instruction"]) == len(
        batch["image"]
    )
    assert set(batch["instruction"]) <= set(pixels.tasks)
    assert batch["episode_index"].dtype == torch.int64
    assert collate([sample, sample])["instruction"] == [sample["instruction"]] * 2


def test_chunks_follow_the_episode_and_pad_at_its_end(pixels):
    ds, norm = pixels.dataset, pixels.normalizer
    for split in ("train", "val"):
        chunks = pixels._sets[split]
        for item in range(len(chunks)):
            sample = chunks[item]
            record = ds.episode_record(sample["episode_index"])
            frame = record.dataset_from_index + item_offset(chunks, item)
            last = record.dataset_to_index - 1
            wanted = np.minimum(frame + np.arange(CHUNK), last)
            np.testing.assert_array_equal(sample["action_pad"], frame + np.arange(CHUNK) > last)
            np.testing.assert_allclose(
                sample["action"], norm.normalize_action(ds.column(ACTION)[wanted]), atol=1e-6
            )
            np.testing.assert_allclose(
                sample["proprio"], norm.normalize_state(ds.column(STATE)[frame]), atol=1e-6
            )
            assert sample["instruction"] == ds.task(frame)
            np.testing.assert_array_equal(
                sample["image"].permute(1, 2, 0), ds.image(TOP, int(frame))
            )
    # The last frame of an episode: one real action, then its repeats.
    end = ds.episode_record(pixels.train_episodes[0]).dataset_to_index - 1
    sample = next(
        chunks[i]
        for chunks in pixels._sets.values()
        for i in range(len(chunks))
        if pixels_frame(pixels, chunks, i) == end
    )
    assert sample["action_pad"].tolist() == [False] + [True] * (CHUNK - 1)
    assert (sample["action"] == sample["action"][0]).all()


def item_offset(chunks, item: int) -> int:
    """Frame offset of ``item`` within its episode (local frames are episode-contiguous)."""
    local = int(chunks.frames[item])
    end = int(chunks.episode_end[local])
    same = np.flatnonzero(chunks.episode_end == end)
    return local - int(same[0])


def pixels_frame(dm, chunks, item: int) -> int:
    record = dm.dataset.episode_record(chunks[item]["episode_index"])
    return record.dataset_from_index + item_offset(chunks, item)


def test_split_is_by_episode(pixels):
    train, val = pixels.train_episodes, pixels.val_episodes
    assert len(val) == 1 and not set(train) & set(val)
    assert sorted(train + val) == list(range(EPISODES))
    assert {s["episode_index"] for s in pixels._sets["val"]} == set(val)
    assert len(pixels._sets["train"]) + len(pixels._sets["val"]) == pixels.dataset.num_frames
    assert len(pixels.val_dataloader().dataset) == len(pixels.test_dataloader().dataset)


def test_normalised_ranges(pixels):
    for split in ("train", "val"):
        chunks = pixels._sets[split]
        assert chunks.actions.abs().max() <= 1.0 and chunks.proprio.abs().max() <= 1.0 + 1e-6


def test_tasks_and_fingerprint(pixels, copy):
    assert set(pixels.tasks) == set(pixels.dataset.tasks)
    assert all(family_of(t) is not None for t in pixels.tasks)
    assert pixels.fingerprint == dataset_fingerprint(copy)
    edit_stats(copy, ACTION, "mean", [0.0, 0.0])
    assert dataset_fingerprint(copy) != pixels.fingerprint


# ----------------------------------------------------------------------------- normaliser
def test_normalizer_round_trip_numpy_and_torch(pixels):
    norm = Normalizer([-2.0, 0.0, 5.0], [2.0, 10.0, 5.0], [0.0, 0.0], [96.0, 48.0])
    actions = np.array([[-2.0, 0.0, 5.0], [1.0, 7.5, 5.0], [3.0, -1.0, 5.0]])
    normed = norm.normalize_action(actions)
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed, [[-1, -1, 0], [0.5, 0.5, 0], [1, -1, 0]])  # clipped
    np.testing.assert_allclose(norm.denormalize_action(normed[:2]), actions[:2], atol=1e-5)
    np.testing.assert_allclose(norm.denormalize_action(np.full((1, 3), 7.0)), [[2, 10, 5]])
    tensor = torch.tensor(actions[:2], dtype=torch.float64)
    back = norm.denormalize_action(norm.normalize_action(tensor))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float64
    torch.testing.assert_close(back, tensor)
    np.testing.assert_allclose(norm.normalize_state(np.array([96.0, 0.0])), [1.0, -1.0])
    assert norm.normalize_state(torch.tensor([[48, 24]])).dtype == torch.float32
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(restored.normalize_action(actions), normed)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        norm.normalize_action(np.zeros(2))
    # The dataset's normaliser uses q01/q99 for actions and min/max for proprio.
    stats = pixels.dataset.stats
    np.testing.assert_allclose(pixels.normalizer.action_low, stats[ACTION]["q01"])
    np.testing.assert_allclose(pixels.normalizer.state_high, stats[STATE]["max"])


def test_state_dict_round_trip(pixels):
    state = pixels.state_dict()
    json.dumps(state)  # plain types only
    assert state["tasks"] == pixels.tasks and state["fingerprint"] == pixels.fingerprint
    fresh = RoboticsDataModule(episodes=EPISODES, image_features="pixels")
    fresh.load_state_dict(state)
    assert fresh.state_dict()["normalizer"] == state["normalizer"]


# ----------------------------------------------------------------------------- sources
def test_lerobot_source_reads_the_same_directory(pixels):
    dm = lerobot(pixels.dataset_root, chunk_size=CHUNK, val_fraction=0.2, episodes=0)
    assert dm.fingerprint == pixels.fingerprint and dm.tasks == pixels.tasks
    assert dm.val_episodes == pixels.val_episodes
    a, b = dm._sets["train"][3], pixels._sets["train"][3]
    for key in ("image", "proprio", "action", "action_pad"):
        torch.testing.assert_close(a[key], b[key])
    first = lerobot(pixels.dataset_root, episodes=3, val_fraction=0.0)
    assert first.train_episodes == [0, 1, 2] and first.val_episodes == []
    assert len(first.val_dataloader().dataset) == 0


def to_v21(v3: Path, out: Path) -> Path:
    """The v3.0 dataset at ``v3`` rewritten in the v2.1 layout (one parquet per episode,
    ``meta/*.jsonl``, per-episode statistics without quantiles, as LeRobot v2.1 wrote them)."""
    ds = read_dataset(v3)
    (out / "meta").mkdir(parents=True)
    info = json.loads((v3 / "meta" / "info.json").read_text())
    info |= {
        "codebase_version": "v2.1",
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
    }
    (out / "meta/info.json").write_text(json.dumps(info))
    (out / "meta/tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(ds.tasks))
    )
    table = pq.read_table(v3 / "data/chunk-000/file-000.parquet")
    episodes, stats = [], []
    for e in ds.episodes:
        rows = {"episode_index": e.episode_index, "tasks": e.tasks, "length": e.length}
        episodes.append(json.dumps(rows))
        kept = {
            key: {s: np.asarray(v).tolist() for s, v in entry.items() if not s.startswith("q")}
            for key, entry in e.stats.items()
        }
        stats.append(json.dumps({"episode_index": e.episode_index, "stats": kept}))
        path = out / f"data/chunk-000/episode_{e.episode_index:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(e.dataset_from_index, e.length), path)
    (out / "meta/episodes.jsonl").write_text("\n".join(episodes) + "\n")
    (out / "meta/episodes_stats.jsonl").write_text("\n".join(stats) + "\n")
    return out


def test_v21_dataset_gives_the_same_samples(pixels, tmp_path, caplog):
    old = to_v21(pixels.dataset_root, tmp_path / "v21")
    with caplog.at_level(logging.WARNING, logger="apps.robotics.data"):
        dm = lerobot(old, chunk_size=CHUNK, val_fraction=0.2)
    assert dm.dataset.version == "v2.1" and dm.tasks == pixels.tasks
    assert "q01" in caplog.text  # v2.1 statistics have no quantiles: computed from the data
    np.testing.assert_allclose(dm.normalizer.action_low, pixels.normalizer.action_low)
    a, b = dm._sets["val"][2], pixels._sets["val"][2]
    for key in ("image", "proprio", "action", "action_pad"):
        torch.testing.assert_close(a[key], b[key])


def test_families_filter_on_a_lerobot_dataset(pixels, tmp_path):
    families = {family_of(t) for t in pixels.tasks}
    keep = sorted(families)[0]
    dm = lerobot(pixels.dataset_root, families=[keep])
    assert {family_of(t) for t in dm.tasks} == {keep}
    # A dataset of other tasks cannot be filtered by tabletop family.
    feats = make_features([TOP], (8, 8, 3), ["x", "y"], ["vx", "vy"])
    episode = Episode(
        task="pick up the cup",
        data={
            TOP: np.zeros((3, 8, 8, 3), np.uint8),
            STATE: np.zeros((3, 2), np.float32),
            ACTION: np.ones((3, 2), np.float32),
        },
    )
    other = write_dataset(tmp_path / "cup", [episode], fps=10, features=feats)
    assert lerobot(other).tasks == ["pick up the cup"]  # fine without a families filter
    with pytest.raises(ValueError, match=r"'pick up the cup'.*not an instruction.*families unset"):
        lerobot(other, families=["which_target"])


# ----------------------------------------------------------------------------- trunk
def test_trunk_features_are_cached_and_match_the_encoder(pixels, monkeypatch):
    dm = RoboticsDataModule(episodes=EPISODES, image_features="trunk", val_fraction=0.2)
    dm.setup()
    assert dm.image_shape == (24, 24, 24)
    sample = dm._sets["train"][0]
    assert sample["image"].dtype == torch.float16 and sample["image"].shape == (24, 24, 24)
    frames = dm._frames["frames"][:3]
    expected = encode_trunk(build_trunk(**dm.trunk_config), dm.dataset.images(TOP, frames))
    torch.testing.assert_close(dm._images[:3], expected)

    def no_build(*args, **kwargs):
        raise AssertionError("the trunk features should come from the cache")

    monkeypatch.setattr(data_module, "build_trunk", no_build)
    again = RoboticsDataModule(episodes=EPISODES, image_features="trunk", val_fraction=0.2)
    again.setup()
    torch.testing.assert_close(again._images, dm._images)
    assert again.timings["collect"] < 1.0


def test_random_trunk_is_seeded_and_differs_from_imagenet():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    state = torch.random.get_rng_state()
    a = encode_trunk(build_trunk(2, pretrained=False, init_seed=1), images)
    assert torch.equal(torch.random.get_rng_state(), state)  # global generator untouched
    b = encode_trunk(build_trunk(2, pretrained=False, init_seed=1), images)
    c = encode_trunk(build_trunk(2, pretrained=False, init_seed=2), images)
    d = encode_trunk(build_trunk(2, pretrained=True), images)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    with pytest.raises(ValueError, match="uint8 RGB"):
        encode_trunk(build_trunk(2), images.astype(np.float32))


# ----------------------------------------------------------------------------- errors
def test_missing_camera_key_names_key_path_and_keys(pixels):
    with pytest.raises(KeyError) as err:
        lerobot(pixels.dataset_root, camera_key="observation.images.wrist")
    message = str(err.value)
    assert "observation.images.wrist" in message and "info.json" in message
    assert str(pixels.dataset_root) in message and TOP in message


def test_missing_info_json(copy):
    (copy / "meta" / "info.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"info\.json is missing"):
        lerobot(copy)


def test_stats_shape_mismatch(copy):
    edit_stats(copy, ACTION, "q01", [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"'action'.*shape.*recompute_stats"):
        lerobot(copy)


def test_actions_outside_the_stats_range(copy):
    stats = json.loads((copy / "meta" / "stats.json").read_text())
    edit_stats(copy, ACTION, "max", [v / 2 for v in stats[ACTION]["max"]])
    with pytest.raises(ValueError, match=r"'action' holds values outside.*recompute_stats"):
        lerobot(copy)
    from apps.robotics.dataset import recompute_stats

    recompute_stats(copy)  # the fix the message names
    assert lerobot(copy).dataset.num_episodes == EPISODES


def test_missing_quantiles_are_computed_with_a_warning(copy, caplog, pixels):
    edit_stats(copy, ACTION, "q01", None)
    with caplog.at_level(logging.WARNING, logger="apps.robotics.data"):
        dm = lerobot(copy)
    assert "q01" in caplog.text
    np.testing.assert_allclose(dm.normalizer.action_low, pixels.normalizer.action_low)


def test_check_within_stats_direct():
    stats = {ACTION: {"min": [0.0], "max": [1.0]}}
    check_within_stats(np.array([[0.0], [1.0]]), stats, ACTION)
    with pytest.raises(ValueError, match="frame 1, dimension 0"):
        check_within_stats(np.array([[0.5], [2.0]]), stats, ACTION)
    with pytest.raises(ValueError, match="no entry for 'action'"):
        check_within_stats(np.zeros((1, 1)), {}, ACTION)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"families": ["stacking"]}, "unknown task family 'stacking'"),
        ({"source": "hub"}, "data.source='hub'"),
        ({"source": "lerobot"}, "set data.root"),
        ({"episodes": 0}, "positive number"),
        ({"image_features": "video"}, "data.image_features"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoboticsDataModule(**kwargs)


def test_read_dataset_is_the_reader(pixels):
    assert read_dataset(pixels.dataset_root).num_frames == pixels.dataset.num_frames
