"""LeRobotDataset v3.0 writing and reading (apps/robotics/dataset).

Written episodes come back identical (frames, states, actions, tasks); the files follow
LeRobot's v3.0 layout (names, columns, JSON keys); the statistics equal numpy's on the same
arrays; a v2.1 directory written here by hand reads the same; file roll-over by size and
chunk; bad input raises errors naming the file or key and the fix, and leaves nothing behind.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from apps.robotics.dataset import (
    STAT_KEYS,
    DatasetFormatError,
    Episode,
    compute_stats,
    make_features,
    read_dataset,
    recompute_stats,
    write_dataset,
)

TOP, WRIST = "observation.images.top", "observation.images.wrist"
STATE, ACTION = "observation.state", "action"
TASKS = ["push the block to the red target", "push the block to the blue target"]
LENGTHS = [5, 7, 1, 4]
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
DEFAULT_COLUMNS = ["timestamp", "frame_index", "episode_index", "index", "task_index"]
FPS = 10


def features() -> dict:
    feats = make_features([TOP], (12, 16, 3), ["x", "y", "vx", "vy"], ["dx", "dy", "grip"])
    feats[WRIST] = {"dtype": "image", "shape": [8, 8, 1], "names": ["height", "width", "channels"]}
    feats["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    return feats


def make_episodes(seed: int = 0) -> list[Episode]:
    """Small random episodes: non-square RGB and grayscale cameras, a scalar bool feature."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i, length in enumerate(LENGTHS):
        top = rng.integers(0, 256, (length, 12, 16, 3), dtype=np.uint8)
        top[:, :4] = 7 * i  # some flat area, as rendered scenes have
        episodes.append(
            Episode(
                task=TASKS[i % 2],
                data={
                    TOP: top,
                    WRIST: rng.integers(0, 256, (length, 8, 8, 1), dtype=np.uint8),
                    STATE: rng.normal(size=(length, 4)).astype(np.float32),
                    ACTION: rng.uniform(-1, 1, size=(length, 3)).astype(np.float32),
                    "next.success": np.arange(length) == length - 1,
                },
            )
        )
    return episodes


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lerobot") / "demos"
    write_dataset(out, make_episodes(), fps=FPS, features=features(), robot_type="tabletop")
    return out


def all_frames(key: str) -> np.ndarray:
    return np.concatenate([np.asarray(e.data[key]) for e in make_episodes()])


# ------------------------------------------------------------------------------ round trip


def test_round_trip_gives_identical_frames_actions_states_tasks(written):
    ds = read_dataset(written)
    episodes = make_episodes()
    assert len(ds) == sum(LENGTHS) and ds.num_episodes == len(LENGTHS)
    assert ds.tasks == TASKS and ds.fps == FPS and ds.version == "v3.0"
    assert ds.camera_keys == [TOP, WRIST]
    for i, original in enumerate(episodes):
        back = ds.episode(i)
        assert back.task == original.task
        assert set(back.data) == set(original.data)
        for key, value in original.data.items():
            expected = np.asarray(value).reshape(back.data[key].shape)
            np.testing.assert_array_equal(back.data[key], expected, err_msg=key)
            assert back.data[key].dtype == expected.dtype, key
    # Frame access: global index -> the same numbers, the task string and default columns.
    frame = ds[7]  # episode 1, frame 2
    assert frame["task"] == TASKS[1] and frame["episode_index"] == 1
    assert frame["frame_index"] == 2 and frame["index"] == 7
    assert frame["timestamp"] == np.float32(2 / FPS)
    np.testing.assert_array_equal(frame[TOP], episodes[1].data[TOP][2])
    np.testing.assert_array_equal(frame[ACTION], episodes[1].data[ACTION][2])
    np.testing.assert_array_equal(ds[-1][STATE], episodes[-1].data[STATE][-1])
    np.testing.assert_array_equal(ds.column(ACTION), all_frames(ACTION))
    assert [ds.task(i) for i in range(len(ds))] == [
        TASKS[e % 2] for e, n in enumerate(LENGTHS) for _ in range(n)
    ]
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds.episode_record(1).frames == range(5, 12)
    with pytest.raises(KeyError, match="no episode 9"):
        ds.episode_record(9)


def test_decoding_all_images_at_once_equals_lazy_decoding(written):
    lazy, eager = read_dataset(written), read_dataset(written, decode_images=True)
    np.testing.assert_array_equal(eager.images(TOP), lazy.images(TOP))
    np.testing.assert_array_equal(eager.images(WRIST, [3, 0]), all_frames(WRIST)[[3, 0]])
    np.testing.assert_array_equal(eager.image(TOP, 5), all_frames(TOP)[5])


# ---------------------------------------------------------------------------------- layout


def test_files_follow_the_v3_layout(written):
    files = sorted(str(p.relative_to(written)) for p in written.rglob("*") if p.is_file())
    assert files == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
    ]
    # Built beside the destination and renamed: no temporary folder is left over.
    assert [p.name for p in written.parent.iterdir()] == ["demos"]

    info = json.loads((written / "meta/info.json").read_text())
    assert set(info) == {
        "codebase_version",
        "robot_type",
        "total_episodes",
        "total_frames",
        "total_tasks",
        "chunks_size",
        "data_files_size_in_mb",
        "video_files_size_in_mb",
        "fps",
        "splits",
        "data_path",
        "video_path",
        "features",
    }
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "tabletop"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (4, 17, 2)
    assert info["chunks_size"] == 1000 and info["data_files_size_in_mb"] == 100
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None and info["fps"] == FPS
    assert info["splits"] == {"train": "0:4"}
    assert list(info["features"]) == [*features(), *DEFAULT_COLUMNS]
    for spec in info["features"].values():
        assert set(spec) == {"dtype", "shape", "names"}
    assert info["features"][TOP] == {
        "dtype": "image",
        "shape": [12, 16, 3],
        "names": ["height", "width", "channels"],
    }
    assert info["features"][ACTION]["names"] == ["dx", "dy", "grip"]
    assert info["features"]["index"] == {"dtype": "int64", "shape": [1], "names": None}

    data = pq.read_table(written / "data/chunk-000/file-000.parquet")
    assert data.column_names == [*features(), *DEFAULT_COLUMNS]
    assert data.schema.field(TOP).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    png = data[TOP][0].as_py()["bytes"]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert data["index"].to_pylist() == list(range(17))
    assert data["frame_index"].to_pylist() == [i for n in LENGTHS for i in range(n)]

    episodes = pq.read_table(written / "meta/episodes/chunk-000/file-000.parquet")
    base = [
        "episode_index",
        "tasks",
        "length",
        "data/chunk_index",
        "data/file_index",
        "dataset_from_index",
        "dataset_to_index",
        "meta/episodes/chunk_index",
        "meta/episodes/file_index",
    ]
    stats_columns = [f"stats/{k}/{s}" for k in [*features(), *DEFAULT_COLUMNS] for s in STAT_KEYS]
    assert episodes.column_names == base + stats_columns
    assert episodes["length"].to_pylist() == LENGTHS
    assert episodes["tasks"].to_pylist() == [[TASKS[i % 2]] for i in range(4)]
    assert episodes["dataset_from_index"].to_pylist() == [0, 5, 12, 13]
    assert episodes["dataset_to_index"].to_pylist() == [5, 12, 13, 17]

    tasks = pq.read_table(written / "meta/tasks.parquet")
    assert tasks["task"].to_pylist() == TASKS and tasks["task_index"].to_pylist() == [0, 1]


def test_tasks_parquet_reads_in_pandas_with_the_task_index(written):
    pd = pytest.importorskip("pandas")
    tasks = pd.read_parquet(written / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    assert int(tasks.loc[TASKS[1], "task_index"]) == 1


# ----------------------------------------------------------------------------------- stats


def numpy_stats(values: np.ndarray, image: bool) -> dict[str, np.ndarray]:
    """The reference: numpy over frames (vectors) or over every pixel of a channel (images)."""
    if image:
        channels = values.shape[-1]
        flat = values.reshape(-1, channels).astype(np.float64) / 255.0
        reshape = (channels, 1, 1)
    else:
        flat = values.reshape(len(values), -1).astype(np.float64)
        reshape = flat.shape[1:]
    out = {
        "min": flat.min(0),
        "max": flat.max(0),
        "mean": flat.mean(0),
        "std": flat.std(0),
        **{k: np.quantile(flat, q, axis=0) for k, q in QUANTILES.items()},
    }
    out = {k: v.reshape(reshape) for k, v in out.items()}
    out["count"] = np.array([len(values)])
    return out


def assert_stats_equal(got: dict, want: dict, where: str) -> None:
    assert set(got) == set(STAT_KEYS), where
    for stat in STAT_KEYS:
        assert np.shape(got[stat]) == np.shape(want[stat]), f"{where}/{stat}"
        np.testing.assert_allclose(
            got[stat], want[stat], rtol=1e-12, atol=1e-12, err_msg=f"{where}/{stat}"
        )


def test_stats_equal_numpy_over_the_dataset_and_each_episode(written):
    raw = json.loads((written / "meta/stats.json").read_text())
    assert set(raw) == {*features(), *DEFAULT_COLUMNS}
    ds = read_dataset(written)
    assert ds.stats_source == "meta/stats.json"
    for key in (TOP, WRIST, STATE, ACTION, "next.success"):
        want = numpy_stats(all_frames(key), image=key in (TOP, WRIST))
        assert_stats_equal({k: np.asarray(v) for k, v in raw[key].items()}, want, key)
        assert_stats_equal(ds.stats[key], want, key)
    assert_stats_equal(
        ds.stats["frame_index"],
        numpy_stats(np.concatenate([np.arange(n) for n in LENGTHS]), False),
        "frame_index",
    )
    assert np.asarray(raw[TOP]["mean"]).shape == (3, 1, 1)  # LeRobot's per-channel layout
    assert raw[TOP]["count"] == [17]
    for record, episode in zip(ds.episodes, make_episodes(), strict=True):
        for key in (TOP, STATE, ACTION):
            want = numpy_stats(np.asarray(episode.data[key]), image=key == TOP)
            assert_stats_equal(record.stats[key], want, f"episode {record.episode_index} {key}")
    # Recomputing from the decoded data gives the written statistics back.
    for key, entry in compute_stats(ds).items():
        assert_stats_equal(entry, ds.stats[key], f"recomputed {key}")


def test_stats_are_computed_when_no_stats_file_exists(written, tmp_path):
    root = copy_of(written, tmp_path)
    (root / "meta/stats.json").unlink()
    ds = read_dataset(root)
    assert ds.stats_source == "computed from the data"
    for key in (TOP, WRIST, STATE, ACTION):
        assert_stats_equal(ds.stats[key], read_dataset(written).stats[key], key)


# -------------------------------------------------------------------------------- roll-over


def test_data_files_roll_over_by_size_and_chunk(tmp_path):
    out = tmp_path / "small_files"
    # A limit below one episode's size puts every episode in its own file; 2 files a chunk.
    write_dataset(
        out,
        make_episodes(),
        fps=FPS,
        features=features(),
        chunks_size=2,
        data_files_size_in_mb=1e-4,
    )
    data_files = sorted(str(p.relative_to(out)) for p in (out / "data").rglob("*.parquet"))
    assert data_files == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
        "data/chunk-001/file-001.parquet",
    ]
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet")
    assert episodes["data/chunk_index"].to_pylist() == [0, 0, 1, 1]
    assert episodes["data/file_index"].to_pylist() == [0, 1, 0, 1]
    for e, path in enumerate(data_files):
        assert pq.read_table(out / path)["episode_index"].to_pylist() == [e] * LENGTHS[e]
    assert json.loads((out / "meta/info.json").read_text())["data_files_size_in_mb"] == 1e-4
    small = read_dataset(out)
    for i, reference in enumerate(make_episodes()):
        back = small.episode(i)
        for key, value in reference.data.items():
            np.testing.assert_array_equal(
                back.data[key], np.asarray(value).reshape(back.data[key].shape)
            )


def test_episodes_share_a_file_until_the_limit(tmp_path):
    sizes = []
    for e, episode in enumerate(make_episodes()):
        one = tmp_path / f"single{e}"
        write_dataset(one, [episode], fps=FPS, features=features())
        sizes.append(pq.read_table(one / "data/chunk-000/file-000.parquet").nbytes)
    # Room for the first two episodes but not the third: episodes 0-1 share file 0.
    limit_mb = (sizes[0] + sizes[1] + sizes[2] / 2) / 1024**2
    out = tmp_path / "shared"
    write_dataset(
        out, make_episodes(), fps=FPS, features=features(), data_files_size_in_mb=limit_mb
    )
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet")
    assert episodes["data/file_index"].to_pylist()[:3] == [0, 0, 1]
    assert len(read_dataset(out)) == sum(LENGTHS)


# ---------------------------------------------------------------------------------- v2.1


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


def write_v21(root: Path, episodes: list[Episode]) -> None:
    """A LeRobot v2.1 directory, written independently of the module under test."""
    feats = features()
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": "v2.1",
        "robot_type": "tabletop",
        "total_episodes": len(episodes),
        "total_frames": sum(len(e) for e in episodes),
        "total_tasks": len(TASKS),
        "total_videos": 0,
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": None,
        "features": {
            **feats,
            **{
                k: {
                    "dtype": "float32" if k == "timestamp" else "int64",
                    "shape": [1],
                    "names": None,
                }
                for k in DEFAULT_COLUMNS
            },
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS))
    )
    episode_lines, stats_lines, start = [], [], 0
    for e, episode in enumerate(episodes):
        n = len(episode)
        episode_lines.append(json.dumps({"episode_index": e, "tasks": [episode.task], "length": n}))
        stats = {}
        for key, value in episode.data.items():
            ref = numpy_stats(np.asarray(value), image=feats[key]["dtype"] == "image")
            stats[key] = {
                k: np.asarray(ref[k]).tolist() for k in ("min", "max", "mean", "std", "count")
            }
        stats_lines.append(json.dumps({"episode_index": e, "stats": stats}))
        columns = {}
        for key, value in episode.data.items():
            value = np.asarray(value)
            if feats[key]["dtype"] == "image":
                columns[key] = [
                    {"bytes": png(img), "path": f"frame_{i:06d}.png"} for i, img in enumerate(value)
                ]
            elif feats[key]["shape"] == [1]:
                columns[key] = value.reshape(-1).tolist()
            else:
                columns[key] = value.tolist()  # variable-length lists, as older writers made
        columns.update(
            timestamp=pa.array(np.arange(n) / FPS, pa.float32()),
            frame_index=list(range(n)),
            episode_index=[e] * n,
            index=list(range(start, start + n)),
            task_index=[TASKS.index(episode.task)] * n,
        )
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(columns)
        table = table.cast(
            table.schema.set(
                table.schema.get_field_index(ACTION), pa.field(ACTION, pa.list_(pa.float32()))
            )
        )
        pq.write_table(table, path)
        start += n
    (root / "meta/episodes.jsonl").write_text("\n".join(episode_lines) + "\n")
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(stats_lines) + "\n")


def test_v21_dataset_reads_the_same(written, tmp_path):
    legacy = tmp_path / "v21"
    write_v21(legacy, make_episodes())
    old, new = read_dataset(legacy), read_dataset(written)
    assert old.version == "v2.1" and old.tasks == new.tasks
    assert len(old) == len(new) and old.num_episodes == new.num_episodes
    for i in range(old.num_episodes):
        a, b = old.episode(i), new.episode(i)
        assert a.task == b.task
        for key in b.data:
            np.testing.assert_array_equal(a.data[key], b.data[key], err_msg=key)
            assert a.data[key].dtype == b.data[key].dtype, key  # the declared dtype
    assert [old.task(i) for i in range(len(old))] == [new.task(i) for i in range(len(new))]
    # Without meta/stats.json the episode statistics are merged: exact for these five.
    assert old.stats_source == "meta/episodes_stats.jsonl"
    for key in (TOP, STATE, ACTION):
        for stat in ("min", "max", "mean", "std", "count"):
            np.testing.assert_allclose(
                old.stats[key][stat],
                new.stats[key][stat],
                rtol=1e-9,
                atol=1e-12,
                err_msg=f"{key}/{stat}",
            )
    assert old.episodes[1].data_file == "data/chunk-000/episode_000001.parquet"


# ------------------------------------------------------------------------------- bad input


def test_missing_info_json_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"meta/info\.json is missing.*collect"):
        read_dataset(tmp_path)


def rewrite_json(path: Path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def copy_of(written: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(written, tmp_path / "copy"))


def test_unknown_codebase_version_is_refused(written, tmp_path):
    root = copy_of(written, tmp_path)
    rewrite_json(root / "meta/info.json", lambda info: info.update(codebase_version="v1.6"))
    with pytest.raises(DatasetFormatError, match=r"info\.json: codebase_version 'v1\.6'.*v3\.0"):
        read_dataset(root)


def test_feature_missing_from_the_data_names_the_file_and_key(written, tmp_path):
    root = copy_of(written, tmp_path)
    extra = {"dtype": "image", "shape": [8, 8, 3], "names": ["height", "width", "channels"]}
    rewrite_json(
        root / "meta/info.json",
        lambda info: info["features"].update({"observation.images.side": extra}),
    )
    with pytest.raises(
        DatasetFormatError, match=r"file-000\.parquet: feature 'observation\.images\.side'"
    ):
        read_dataset(root)


def test_stats_with_wrong_shapes_are_refused_and_recompute_fixes_them(written, tmp_path):
    root = copy_of(written, tmp_path)
    rewrite_json(root / "meta/stats.json", lambda stats: stats[ACTION].update(q01=[0.0, 0.0]))
    with pytest.raises(
        ValueError,
        match=r"stats\.json: statistic 'action'/'q01' has shape "
        r"\(2,\).*\(3,\).*recompute_stats",
    ):
        read_dataset(root)
    fixed = recompute_stats(root)
    assert_stats_equal(fixed[ACTION], numpy_stats(all_frames(ACTION), False), ACTION)
    assert read_dataset(root).stats[ACTION]["q01"].shape == (3,)


def test_a_camera_the_policy_needs_is_named_when_missing(written):
    ds = read_dataset(written)
    ds.require([TOP, STATE])
    with pytest.raises(KeyError, match=r"observation\.images\.side.*the policy"):
        ds.require(["observation.images.side"], purpose="the policy")


def drop_action(e: Episode) -> None:
    e.data.pop(ACTION)


def float_image(e: Episode) -> None:
    e.data[TOP] = e.data[TOP].astype(np.float32)


def nan_state(e: Episode) -> None:
    e.data[STATE][0, 0] = np.nan


def short_action(e: Episode) -> None:
    e.data[ACTION] = e.data[ACTION][:-1]


def no_task(e: Episode) -> None:
    e.task = ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (drop_action, r"episode 1: no data for declared feature\(s\) \['action'\]"),
        (float_image, r"episode 1: 'observation.images.top' must be \(frames, \*\(12, 16, 3\)\)"),
        (nan_state, r"'observation.state' holds NaN"),
        (short_action, r"'action' has 6 frames"),
        (no_task, r"task must be a non-empty string"),
    ],
)
def test_bad_episodes_raise_and_leave_nothing_behind(tmp_path, change, message):
    episodes = make_episodes()
    change(episodes[1])
    with pytest.raises(DatasetFormatError, match=message):
        write_dataset(tmp_path / "out", episodes, fps=FPS, features=features())
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_no_episodes_bad_features_and_existing_output(tmp_path, written):
    with pytest.raises(DatasetFormatError, match="no episodes"):
        write_dataset(tmp_path / "out", [], fps=FPS, features=features())
    with pytest.raises(DatasetFormatError, match="'index' is a column the writer adds"):
        write_dataset(
            tmp_path / "out",
            make_episodes(),
            fps=FPS,
            features={**features(), "index": {"dtype": "int64", "shape": [1]}},
        )
    with pytest.raises(DatasetFormatError, match="fps must be a positive integer"):
        write_dataset(tmp_path / "out", make_episodes(), fps=0, features=features())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileExistsError, match="overwrite"):
        write_dataset(written, make_episodes(), fps=FPS, features=features())
    out = tmp_path / "again"
    write_dataset(out, make_episodes()[:1], fps=FPS, features=features())
    write_dataset(out, make_episodes(), fps=FPS, features=features(), overwrite=True)
    assert read_dataset(out).num_episodes == len(LENGTHS)
