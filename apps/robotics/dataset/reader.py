"""Read a LeRobotDataset directory (v3.0, or v2.0/v2.1) into one object.

Numeric columns are loaded into numpy arrays; images stay PNG bytes until asked for. Every
file is checked against the others (declared features have columns, frame indices and
episode ranges line up, task indices exist, statistics have the features' shapes), and a
mismatch raises ``FileNotFoundError`` or :class:`~.format.DatasetFormatError` naming the
file, the key and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.atomic import atomic_write_text

from .format import (
    DATA_PATH,
    DEFAULT_CHUNKS_SIZE,
    DEFAULT_FEATURES,
    EPISODE_COLUMNS,
    EPISODES_DIR,
    INFO_PATH,
    LEGACY_DATA_PATH,
    LEGACY_EPISODES_PATH,
    LEGACY_EPISODES_STATS_PATH,
    LEGACY_TASKS_PATH,
    READABLE_VERSIONS,
    STATS_PATH,
    TASKS_PATH,
    DatasetFormatError,
    Episode,
    EpisodeRecord,
    decode_png,
)
from .stats import (
    VISUAL_DTYPES,
    ImageStats,
    Stats,
    aggregate_stats,
    channel_count,
    conform_stats,
    stats_from_json,
    stats_to_json,
    vector_stats,
)


class LeRobotDataset:
    """A LeRobotDataset read from disk: metadata, statistics and frame access.

    Numeric columns are loaded into numpy arrays; images stay as PNG bytes and are decoded
    when asked for (:meth:`image`, :meth:`images`), or all at once by
    :meth:`decode_images` (``read_dataset(..., decode_images=True)``), which caches them.

    Attributes:
        root: The dataset directory.
        info: ``meta/info.json`` as read.
        version: Its ``codebase_version``.
        fps: Frames per second.
        features: ``{key: {"dtype", "shape" (tuple), "names"}}``, default columns included.
        tasks: Task strings; position ``i`` is ``task_index`` ``i``.
        episodes: One :class:`EpisodeRecord` per episode, by ``episode_index``.
        stats: ``{feature: {stat: array}}``; see :mod:`apps.robotics.dataset.stats`.
        stats_source: Where ``stats`` came from (a file, or ``"computed from the data"``).
    """

    def __init__(
        self,
        root: Path,
        info: dict[str, Any],
        tasks: list[str],
        episodes: list[EpisodeRecord],
        numeric: dict[str, np.ndarray],
        encoded: dict[str, list[bytes | None]],
        image_paths: dict[str, list[str | None]],
        stats: Stats,
        stats_source: str,
    ) -> None:
        self.root = root
        self.info = info
        self.version: str = info["codebase_version"]
        self.fps: int = info["fps"]
        self.features: dict[str, dict[str, Any]] = info["features"]
        self.tasks = tasks
        self.task_to_index = {task: i for i, task in enumerate(tasks)}
        self.episodes = episodes
        self._positions = {e.episode_index: i for i, e in enumerate(episodes)}
        self.stats = stats
        self.stats_source = stats_source
        self._numeric = numeric
        self._encoded = encoded
        self._image_paths = image_paths
        self._decoded: dict[str, np.ndarray] = {}

    # -- description
    @property
    def robot_type(self) -> str | None:
        """``info.json``'s ``robot_type`` (free text, may be null)."""
        return self.info.get("robot_type")

    @property
    def image_keys(self) -> list[str]:
        """Features stored as images inside the parquet files."""
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    @property
    def video_keys(self) -> list[str]:
        """Features stored as MP4 files (listed, not decoded by this reader)."""
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def camera_keys(self) -> list[str]:
        """Every visual feature, image or video (LeRobot's ``camera_keys``)."""
        return [k for k, f in self.features.items() if f["dtype"] in VISUAL_DTYPES]

    @property
    def num_frames(self) -> int:
        """Frames (parquet rows) in the dataset."""
        return len(self._numeric["index"])

    @property
    def num_episodes(self) -> int:
        """Episodes in the dataset."""
        return len(self.episodes)

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, {self.version}, {self.num_episodes} "
            f"episodes, {self.num_frames} frames, {len(self.tasks)} tasks, "
            f"features={list(self.features)})"
        )

    def require(self, keys: Iterable[str], purpose: str = "the policy") -> None:
        """Raise ``KeyError`` naming the dataset and the fix if any of ``keys`` is missing."""
        missing = [k for k in keys if k not in self.features]
        if missing:
            raise KeyError(
                f"{self.root / INFO_PATH} has no feature(s) {missing} that {purpose} needs; it "
                f"has {list(self.features)}. Record the dataset with those features or point "
                f"{purpose} at the keys it has."
            )

    # -- frame access
    def column(self, key: str) -> np.ndarray:
        """All frames of a numeric feature: ``(N,)`` for the default columns, else
        ``(N, *shape)``."""
        if key not in self._numeric:
            kind = self.features.get(key, {}).get("dtype", "absent")
            raise KeyError(
                f"{key!r} is not a numeric feature of {self.root} (dtype {kind}); "
                f"numeric features: {list(self._numeric)}"
            )
        return self._numeric[key]

    def image(self, key: str, index: int) -> np.ndarray:
        """Frame ``index`` of image feature ``key``, ``(H, W, C)`` uint8."""
        index = self._check_index(index)
        if key in self._decoded:
            return self._decoded[key][index]
        return self._decode(key, index)

    def images(self, key: str, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Frames ``indices`` (all by default) of image feature ``key``, ``(n, H, W, C)``."""
        if indices is None:
            indices = range(self.num_frames)
        if key in self._decoded:
            return self._decoded[key][np.asarray(indices, dtype=np.int64)]
        self._check_image_key(key)
        shape = tuple(self.features[key]["shape"])
        out = np.empty((len(indices), *shape), dtype=np.uint8)
        for i, index in enumerate(indices):
            out[i] = self._decode(key, self._check_index(int(index)))
        return out

    def decode_images(self) -> None:
        """Decode every image once and keep the arrays (fast access, more memory)."""
        for key in self.image_keys:
            if key not in self._decoded:
                self._decoded[key] = self.images(key)

    def task(self, index: int) -> str:
        """The task string of frame ``index``."""
        return self.tasks[int(self._numeric["task_index"][self._check_index(index)])]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Frame ``index`` as ``{feature: value}`` plus ``"task"`` (its string); images are
        ``(H, W, C)`` uint8, the default columns scalars, other features ``(d,)`` arrays."""
        index = self._check_index(index)
        frame: dict[str, Any] = {}
        for key in self.features:
            if key in self._numeric:
                frame[key] = self._numeric[key][index]
            elif key in self._encoded:
                frame[key] = self.image(key, index)
        frame["task"] = self.tasks[int(frame["task_index"])]
        return frame

    def episode(self, episode_index: int) -> Episode:
        """Episode ``episode_index`` as an :class:`Episode` (every non-default feature)."""
        record = self.episode_record(episode_index)
        frames = np.arange(record.dataset_from_index, record.dataset_to_index)
        data: dict[str, np.ndarray] = {}
        for key in self.features:
            if key in DEFAULT_FEATURES:
                continue
            if key in self._numeric:
                data[key] = self._numeric[key][frames]
            elif key in self._encoded:
                data[key] = self.images(key, frames)
        return Episode(task=self.task(record.dataset_from_index), data=data)

    def episode_record(self, episode_index: int) -> EpisodeRecord:
        """The :class:`EpisodeRecord` whose ``episode_index`` is ``episode_index``."""
        position = self._positions.get(int(episode_index))
        if position is None:
            raise KeyError(
                f"{self.root} has no episode {episode_index}; its episode indices run "
                f"{self.episodes[0].episode_index}..{self.episodes[-1].episode_index}"
            )
        return self.episodes[position]

    def _check_index(self, index: int) -> int:
        n = self.num_frames
        if not -n <= index < n:
            raise IndexError(f"frame {index} is out of range for {n} frames")
        return index % n

    def _check_image_key(self, key: str) -> None:
        if key in self._encoded:
            return
        if key in self.video_keys:
            raise DatasetFormatError(
                f"{key!r} is stored as MP4 video ({self.info.get('video_path')}), which this "
                "reader does not decode; convert the dataset to inline images or record it "
                "with python -m apps.robotics.collect"
            )
        raise KeyError(f"{key!r} is not an image feature of {self.root}; images: {self.image_keys}")

    def _decode(self, key: str, index: int) -> np.ndarray:
        self._check_image_key(key)
        data = self._encoded[key][index]
        if data is None:
            rel = self._image_paths[key][index]
            if rel is None or not (self.root / rel).is_file():
                raise DatasetFormatError(
                    f"frame {index} of {key!r} has neither PNG bytes nor "
                    f"an image file ({rel!r}) in {self.root}"
                )
            data = (self.root / rel).read_bytes()
        shape = tuple(self.features[key]["shape"])
        pixels = decode_png(data, channel_count(self.features[key]))
        if pixels.shape != shape:
            raise DatasetFormatError(
                f"frame {index} of {key!r} decodes to {pixels.shape}, but "
                f"{INFO_PATH} declares {shape}; fix the feature's shape"
            )
        return pixels


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path} is not valid JSON ({err}); rewrite it") from err


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: a v2.x dataset keeps its metadata in "
            "meta/*.jsonl; restore the file or re-record the dataset"
        )
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetFormatError(f"{path}, line {number}: not JSON ({err})") from err
    return rows


def _load_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.is_file():
        hint = (
            "the directory does not exist"
            if not root.exists()
            else f"it holds {sorted(p.name for p in root.iterdir())[:10]}"
        )
        raise FileNotFoundError(
            f"{path} is missing, so {root} is not a LeRobotDataset ({hint}). Point at the "
            "dataset's root folder (the one holding meta/ and data/), or record one with "
            "python -m apps.robotics.collect --out DIR"
        )
    info = _load_json(path)
    version = info.get("codebase_version")
    if version not in READABLE_VERSIONS:
        raise DatasetFormatError(
            f"{path}: codebase_version {version!r} is not one this reader knows "
            f"({', '.join(READABLE_VERSIONS)}). Convert the dataset with LeRobot's converters "
            "(e.g. lerobot.datasets.v30.convert_dataset_v21_to_v30) or re-record it."
        )
    for key in ("fps", "features"):
        if key not in info:
            raise DatasetFormatError(
                f"{path} lacks {key!r}; every LeRobotDataset info.json has fps and features"
            )
    for key, spec in info["features"].items():
        if "dtype" not in spec or "shape" not in spec:
            raise DatasetFormatError(f"{path}: feature {key!r} lacks dtype or shape")
        spec["shape"] = tuple(int(s) for s in spec["shape"])
        spec.setdefault("names", None)
    missing = [k for k in DEFAULT_FEATURES if k not in info["features"]]
    if missing:
        raise DatasetFormatError(
            f"{path}: features lack the default column(s) {missing} that "
            "every LeRobotDataset frame has"
        )
    return info


def _column_numpy(
    column: pa.ChunkedArray, spec: Mapping[str, Any], key: str, where: Path
) -> np.ndarray:
    """A numeric column as numpy in its declared dtype: the default columns ``(n,)``, other
    features ``(n, *shape)``; the shape is checked against ``info.json``."""
    array = column.combine_chunks()
    if array.null_count:
        raise DatasetFormatError(f"{where}: column {key!r} has {array.null_count} null values")
    shape = tuple(spec["shape"])
    if (
        pa.types.is_list(array.type)
        or pa.types.is_large_list(array.type)
        or pa.types.is_fixed_size_list(array.type)
    ):
        lengths = np.unique(pc.list_value_length(array).to_numpy(zero_copy_only=False))
        if len(array) and (len(lengths) != 1 or (int(lengths[0]),) != shape):
            raise DatasetFormatError(
                f"{where}: column {key!r} holds lists of length {lengths.tolist()}, but "
                f"{INFO_PATH} declares shape {shape}; fix the shape in info.json"
            )
        values = array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), *shape)
    elif shape != (1,):
        raise DatasetFormatError(
            f"{where}: column {key!r} holds scalars, but {INFO_PATH} declares shape {shape}"
        )
    else:
        values = array.to_numpy(zero_copy_only=False)
        values = values if key in DEFAULT_FEATURES else values.reshape(len(array), 1)
    try:
        return values.astype(np.dtype(spec["dtype"]), copy=False)
    except TypeError as err:
        raise DatasetFormatError(
            f"{where}: feature {key!r} has dtype {spec['dtype']!r} in {INFO_PATH}, which is "
            "not a numeric type"
        ) from err


def _read_data_file(
    path: Path, features: Mapping[str, Mapping[str, Any]], context: str
) -> tuple[dict[str, np.ndarray], dict[str, list], dict[str, list]]:
    """One data parquet's numeric columns, image bytes and image paths."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing ({context}); the dataset is incomplete: "
            "restore the file or re-record the dataset"
        )
    table = pq.read_table(path)
    numeric: dict[str, np.ndarray] = {}
    encoded: dict[str, list] = {}
    paths: dict[str, list] = {}
    for key, spec in features.items():
        if spec["dtype"] == "video":
            continue
        if key not in table.column_names:
            raise DatasetFormatError(
                f"{path}: feature {key!r}, declared in {INFO_PATH}, has no column in the data "
                f"(columns: {table.column_names}). Remove it from info.json's features or "
                "re-record the dataset with it"
            )
        column = table[key]
        if spec["dtype"] == "image":
            array = column.combine_chunks()
            if pa.types.is_struct(array.type):
                encoded[key] = array.field("bytes").to_pylist()
                names = [array.type.field(i).name for i in range(array.type.num_fields)]
                paths[key] = (
                    array.field("path").to_pylist() if "path" in names else [None] * len(array)
                )
            elif pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
                encoded[key], paths[key] = array.to_pylist(), [None] * len(array)
            else:
                raise DatasetFormatError(
                    f"{path}: image column {key!r} has type {array.type}; "
                    "expected struct<bytes, path> (PNG bytes)"
                )
        elif spec["dtype"] == "string":
            continue
        else:
            numeric[key] = _column_numpy(column, spec, key, path)
    return numeric, encoded, paths


def _concat(parts: list[tuple[dict, dict, dict]]) -> tuple[dict, dict, dict]:
    numeric = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    encoded = {k: [b for p in parts for b in p[1][k]] for k in parts[0][1]}
    paths = {k: [b for p in parts for b in p[2][k]] for k in parts[0][2]}
    return numeric, encoded, paths


def _episode_stats_from_row(row: Mapping[str, Any]) -> Stats:
    stats: Stats = {}
    for column, value in row.items():
        if column.startswith("stats/") and value is not None:
            feature, stat = column[len("stats/") :].rsplit("/", 1)
            stats.setdefault(feature, {})[stat] = np.asarray(value)
    return stats


def _read_tasks_parquet(root: Path) -> list[str]:
    path = root / TASKS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: a v3.0 dataset lists its task strings "
            "there; restore it or re-record the dataset"
        )
    table = pq.read_table(path)
    pandas_meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    candidates = [
        "task",
        *[c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)],
        "__index_level_0__",
    ]
    name = next((c for c in candidates if c in table.column_names), None)
    if name is None or "task_index" not in table.column_names:
        raise DatasetFormatError(
            f"{path}: expected the index 'task' and the column "
            f"'task_index'; got columns {table.column_names}"
        )
    return _ordered_tasks(table[name].to_pylist(), table["task_index"].to_pylist(), path)


def _ordered_tasks(tasks: list[str], indices: list[int], path: Path) -> list[str]:
    if sorted(indices) != list(range(len(indices))):
        raise DatasetFormatError(
            f"{path}: task_index values {sorted(indices)[:10]} are not 0..n-1 without gaps"
        )
    ordered = [""] * len(tasks)
    for task, index in zip(tasks, indices, strict=True):
        ordered[index] = task
    return ordered


def _read_v3(root: Path, info: dict[str, Any]) -> tuple[list[str], list[EpisodeRecord], tuple]:
    tasks = _read_tasks_parquet(root)
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"{root / EPISODES_DIR} holds no chunk-*/file-*.parquet: the "
            "episode table is missing; restore it or re-record the dataset"
        )
    rows = []
    for path in files:
        table = pq.read_table(path)
        missing = [c for c in EPISODE_COLUMNS if c not in table.column_names]
        if missing:
            raise DatasetFormatError(
                f"{path} lacks the column(s) {missing} every v3.0 episode table has"
            )
        rows.extend(table.to_pylist())
    rows.sort(key=lambda r: r["episode_index"])
    template = info.get("data_path") or DATA_PATH
    episodes = [
        EpisodeRecord(
            episode_index=int(r["episode_index"]),
            tasks=list(r.get("tasks") or []),
            length=int(r["length"]),
            dataset_from_index=int(r["dataset_from_index"]),
            dataset_to_index=int(r["dataset_to_index"]),
            data_file=template.format(
                chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"])
            ),
            stats=_episode_stats_from_row(r),
        )
        for r in rows
    ]
    data_files = list(
        dict.fromkeys(e.data_file for e in sorted(episodes, key=lambda e: e.dataset_from_index))
    )
    parts = [
        _read_data_file(root / f, info["features"], f"listed in {EPISODES_DIR}") for f in data_files
    ]
    return tasks, episodes, _concat(parts)


def _read_v2(root: Path, info: dict[str, Any]) -> tuple[list[str], list[EpisodeRecord], tuple]:
    task_rows = _load_jsonl(root / LEGACY_TASKS_PATH)
    tasks = _ordered_tasks(
        [r["task"] for r in task_rows],
        [int(r["task_index"]) for r in task_rows],
        root / LEGACY_TASKS_PATH,
    )
    episode_rows = sorted(
        _load_jsonl(root / LEGACY_EPISODES_PATH), key=lambda r: r["episode_index"]
    )
    stats_path = root / LEGACY_EPISODES_STATS_PATH
    per_episode = {}
    if stats_path.is_file():
        per_episode = {
            int(r["episode_index"]): stats_from_json(r["stats"]) for r in _load_jsonl(stats_path)
        }
    template = info.get("data_path") or LEGACY_DATA_PATH
    chunks_size = int(info.get("chunks_size") or DEFAULT_CHUNKS_SIZE)
    episodes, parts, start = [], [], 0
    for r in episode_rows:
        index, length = int(r["episode_index"]), int(r["length"])
        rel = template.format(episode_chunk=index // chunks_size, episode_index=index)
        parts.append(
            _read_data_file(
                root / rel, info["features"], f"episode {index} of {LEGACY_EPISODES_PATH}"
            )
        )
        episodes.append(
            EpisodeRecord(
                episode_index=index,
                tasks=list(r.get("tasks") or []),
                length=length,
                dataset_from_index=start,
                dataset_to_index=start + length,
                data_file=rel,
                stats=per_episode.get(index, {}),
            )
        )
        start += length
    if not parts:
        raise DatasetFormatError(f"{root / LEGACY_EPISODES_PATH} lists no episodes")
    return tasks, episodes, _concat(parts)


def _check_frames(
    root: Path,
    info: dict,
    numeric: dict[str, np.ndarray],
    episodes: list[EpisodeRecord],
    tasks: list[str],
) -> None:
    """The data rows agree with the metadata: global order, episode ranges, task indices."""
    n = len(numeric["index"])
    if not np.array_equal(numeric["index"], np.arange(n)):
        raise DatasetFormatError(
            f"{root}/data: the 'index' column is not 0..{n - 1} in file "
            "order; the data files are out of order or incomplete"
        )
    if info.get("total_frames") is not None and int(info["total_frames"]) != n:
        raise DatasetFormatError(
            f"{root / INFO_PATH}: total_frames is {info['total_frames']} "
            f"but the data files hold {n} frames"
        )
    for e in episodes:
        if (
            e.dataset_to_index - e.dataset_from_index != e.length
            or e.dataset_to_index > n
            or not (
                numeric["episode_index"][e.dataset_from_index : e.dataset_to_index]
                == e.episode_index
            ).all()
        ):
            raise DatasetFormatError(
                f"{root}: episode {e.episode_index} claims frames {e.dataset_from_index}:"
                f"{e.dataset_to_index} (length {e.length}), which the data does not hold"
            )
    task_index = numeric["task_index"]
    if n and (task_index.min() < 0 or task_index.max() >= len(tasks)):
        raise DatasetFormatError(
            f"{root}: task_index goes up to {task_index.max()}, but the "
            f"task list has {len(tasks)} tasks"
        )


def compute_stats(dataset: LeRobotDataset) -> Stats:
    """Exact statistics of every numeric and image feature of ``dataset``, as the writer
    computes them (video and string features are skipped)."""
    stats: Stats = {}
    for key, spec in dataset.features.items():
        if key in dataset._numeric:
            values = dataset._numeric[key]
            stats[key] = vector_stats(values.reshape(len(values), -1))
        elif key in dataset._encoded:
            acc = ImageStats(channel_count(spec))
            for e in dataset.episodes:
                acc.update(dataset.images(key, e.frames))
            stats[key] = acc.result()
    return stats


def _load(path: str | Path, with_stats: bool) -> LeRobotDataset:
    root = Path(path)
    info = _load_info(root)
    reader = _read_v3 if info["codebase_version"] == "v3.0" else _read_v2
    tasks, episodes, (numeric, encoded, image_paths) = reader(root, info)
    _check_frames(root, info, numeric, episodes, tasks)
    dataset = LeRobotDataset(root, info, tasks, episodes, numeric, encoded, image_paths, {}, "")
    if not with_stats:
        return dataset
    stats_path, legacy = root / STATS_PATH, root / LEGACY_EPISODES_STATS_PATH
    if stats_path.is_file():
        stats, source = stats_from_json(_load_json(stats_path)), STATS_PATH
    elif legacy.is_file() and all(e.stats for e in episodes):
        stats, source = aggregate_stats([e.stats for e in episodes]), LEGACY_EPISODES_STATS_PATH
    else:
        stats, source = compute_stats(dataset), "computed from the data"
    dataset.stats = conform_stats(stats, info["features"], str(root / source))
    dataset.stats_source = source
    for e in episodes:
        where = f"{root / EPISODES_DIR} (statistics of episode {e.episode_index})"
        e.stats.update(conform_stats(e.stats, info["features"], where))
    return dataset


def read_dataset(path: str | Path, decode_images: bool = False) -> LeRobotDataset:
    """Read a LeRobotDataset directory (v3.0, or v2.0/v2.1) from disk.

    Checks that the files agree with one another (every declared feature has a column, the
    frame indices and episode ranges line up, statistics have the features' shapes) and
    raises ``FileNotFoundError`` / :class:`DatasetFormatError` naming the file, the key and
    the fix otherwise. Statistics come from ``meta/stats.json``; a v2.1 dataset without one
    gets the aggregate of ``meta/episodes_stats.jsonl``; failing both they are computed.

    Args:
        path: The dataset's root folder (holding ``meta/`` and ``data/``).
        decode_images: Decode every image now (else each is decoded when accessed).
    """
    dataset = _load(path, with_stats=True)
    if decode_images:
        dataset.decode_images()
    return dataset


def recompute_stats(path: str | Path) -> Stats:
    """Recompute ``meta/stats.json`` from the data and replace it atomically.

    The fix for statistics that do not match the features (a dataset edited by hand, or
    statistics copied from another dataset).
    """
    dataset = _load(path, with_stats=False)
    stats = compute_stats(dataset)
    atomic_write_text(Path(path) / STATS_PATH, stats_to_json(stats))
    return stats
