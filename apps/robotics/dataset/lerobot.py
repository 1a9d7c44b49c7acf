"""Write demonstrations as a LeRobotDataset v3.0 directory (layout in :mod:`.format`).

Episodes stream in one at a time: each is checked against the declared features, its images
encoded as PNG, its rows appended to the current data file and its statistics folded into
the dataset's. Several episodes share a data file; a new one (``file_index + 1``; after
``chunks_size`` files, ``chunk_index + 1``) starts when the next episode would take the
current file to ``data_files_size_in_mb`` (LeRobot's rule, measured here as the Arrow size of
the rows, PNG bytes included), and an episode never spans two files. The directory is built
under a temporary name beside the destination and renamed into place when complete
(:func:`core.atomic.atomic_directory`), so a reader never sees half a dataset.

The reader lives in :mod:`.reader`; its public names are re-exported here so that
``apps.robotics.dataset.lerobot`` offers the whole format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_directory

from .format import (
    ACTION,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_CHUNKS_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_FEATURES,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    EPISODES_PATH,
    IMAGE_AXES,
    IMAGE_STRUCT,
    INFO_PATH,
    NUMERIC_DTYPES,
    OBS_IMAGES,
    OBS_STATE,
    STATS_PATH,
    TASKS_PATH,
    DatasetFormatError,
    Episode,
    EpisodeRecord,
    decode_png,
    encode_png,
    image_feature,
    make_features,
    vector_feature,
)
from .reader import LeRobotDataset, compute_stats, read_dataset, recompute_stats
from .stats import ImageStats, Stats, channel_count, stats_to_json, vector_stats

__all__ = [
    "ACTION",
    "CODEBASE_VERSION",
    "OBS_IMAGES",
    "OBS_STATE",
    "DatasetFormatError",
    "Episode",
    "EpisodeRecord",
    "LeRobotDataset",
    "compute_stats",
    "decode_png",
    "encode_png",
    "image_feature",
    "make_features",
    "read_dataset",
    "recompute_stats",
    "vector_feature",
    "write_dataset",
]


def _check_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A normalised copy of the writer's ``features``; errors name the key and the fix."""
    if not features:
        raise DatasetFormatError(
            "features is empty: declare at least the action, e.g. make_features(...)"
        )
    out: dict[str, dict[str, Any]] = {}
    for key, spec in features.items():
        where = f"features[{key!r}]"
        if key in DEFAULT_FEATURES:
            raise DatasetFormatError(
                f"{where}: {key!r} is a column the writer adds itself; remove it from features"
            )
        if "/" in key:
            raise DatasetFormatError(
                f"{where}: feature names may not contain '/' (LeRobot "
                "uses it to flatten statistics); rename the feature"
            )
        missing = [k for k in ("dtype", "shape") if k not in spec]
        if missing:
            raise DatasetFormatError(f"{where} lacks {missing}; give dtype, shape and names")
        dtype, shape = spec["dtype"], [int(s) for s in spec["shape"]]
        names = spec.get("names")
        if dtype == "video":
            raise DatasetFormatError(
                f"{where}: this writer stores frames inline as PNG; "
                "declare dtype 'image' instead of 'video'"
            )
        if dtype == "image":
            if len(shape) != 3 or shape[-1] not in (1, 3, 4):
                raise DatasetFormatError(
                    f"{where}: an image shape is (height, width, channels) "
                    f"with 1, 3 or 4 channels; got {shape}"
                )
            names = list(names) if names is not None else list(IMAGE_AXES)
        elif dtype in NUMERIC_DTYPES:
            if len(shape) != 1 or shape[0] < 1:
                raise DatasetFormatError(
                    f"{where}: non-image features are 1-D, shape [d]; got "
                    f"{shape} (flatten it and name each element)"
                )
            if names is not None and len(names) != shape[0]:
                raise DatasetFormatError(
                    f"{where}: {len(names)} names for shape {shape}; give "
                    "one name per element or names: null"
                )
        else:
            raise DatasetFormatError(
                f"{where}: dtype {dtype!r} is not one of {('image', *NUMERIC_DTYPES)}"
            )
        out[key] = {"dtype": dtype, "shape": shape, "names": names}
    return out


def _check_episode(
    episode: Episode, features: Mapping[str, Mapping[str, Any]], position: int
) -> dict[str, np.ndarray]:
    """The episode's arrays, validated against ``features`` (shapes, dtypes, lengths)."""
    where = f"episode {position}"
    if not isinstance(episode.task, str) or not episode.task.strip():
        raise DatasetFormatError(
            f"{where}: task must be a non-empty string (the instruction); got {episode.task!r}"
        )
    missing = [k for k in features if k not in episode.data]
    extra = [k for k in episode.data if k not in features]
    if missing:
        raise DatasetFormatError(
            f"{where}: no data for declared feature(s) {missing}; record "
            "them or remove them from features"
        )
    if extra:
        raise DatasetFormatError(
            f"{where}: data for undeclared feature(s) {extra}; declare "
            "them in features or leave them out"
        )
    arrays: dict[str, np.ndarray] = {}
    length = None
    for key, spec in features.items():
        value = np.asarray(episode.data[key])
        shape = tuple(spec["shape"])
        if spec["dtype"] == "image":
            if value.dtype != np.uint8 or value.shape[1:] != shape:
                raise DatasetFormatError(
                    f"{where}: {key!r} must be (frames, *{shape}) uint8; "
                    f"got {value.dtype} {value.shape}"
                )
        else:
            if value.ndim == 1 and shape == (1,):
                value = value[:, None]
            if value.ndim != 2 or value.shape[1:] != shape:
                raise DatasetFormatError(
                    f"{where}: {key!r} must be (frames, {shape[0]}); got {value.shape}"
                )
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise DatasetFormatError(
                    f"{where}: {key!r} holds NaN or infinite values; "
                    "drop or fix those frames before writing"
                )
            value = value.astype(np.dtype(spec["dtype"]))
        if length is None:
            length = len(value)
        elif len(value) != length:
            raise DatasetFormatError(
                f"{where}: {key!r} has {len(value)} frames, other "
                f"features {length}; every feature needs one row a frame"
            )
        arrays[key] = value
    if not length:
        raise DatasetFormatError(f"{where} has no frames; skip empty episodes")
    return arrays


def _arrow_type(spec: Mapping[str, Any]) -> pa.DataType:
    """The Arrow type of a feature's column: images as ``{bytes, path}``, one-element
    features as scalars (Hugging Face ``Value``), vectors as fixed-size lists (``Sequence``)."""
    if spec["dtype"] == "image":
        return IMAGE_STRUCT
    scalar = pa.from_numpy_dtype(np.dtype(spec["dtype"]))
    return scalar if list(spec["shape"]) == [1] else pa.list_(scalar, int(spec["shape"][0]))


def _arrow_column(spec: Mapping[str, Any], values: np.ndarray, compress_level: int) -> pa.Array:
    if spec["dtype"] == "image":
        pngs = pa.array([encode_png(img, compress_level) for img in values], pa.binary())
        paths = pa.nulls(len(values), pa.string())
        return pa.StructArray.from_arrays([pngs, paths], fields=list(IMAGE_STRUCT))
    if list(spec["shape"]) == [1]:
        return pa.array(values.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


class _DataFiles:
    """Appends episodes to ``data/chunk-XXX/file-YYY.parquet``, rolling over by size."""

    def __init__(self, root: Path, schema: pa.Schema, chunks_size: int, size_in_mb: float):
        self.root, self.schema = root, schema
        self.chunks_size, self.limit = chunks_size, size_in_mb * 1024**2
        self.chunk_index = self.file_index = 0
        self.writer: pq.ParquetWriter | None = None
        self.bytes_in_file = 0

    def write(self, table: pa.Table) -> tuple[int, int]:
        """Write one episode's rows; return the ``(chunk_index, file_index)`` holding them."""
        size = table.nbytes
        if self.writer is not None and self.bytes_in_file + size >= self.limit:
            self.close()
            self.file_index += 1
            if self.file_index == self.chunks_size:
                self.chunk_index, self.file_index = self.chunk_index + 1, 0
        if self.writer is None:
            path = self.root / DATA_PATH.format(
                chunk_index=self.chunk_index, file_index=self.file_index
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, self.schema)
            self.bytes_in_file = 0
        self.writer.write_table(table)
        self.bytes_in_file += size
        return self.chunk_index, self.file_index

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _StatsBuilder:
    """Exact statistics of a feature set, per episode and over the whole dataset."""

    def __init__(self, features: Mapping[str, Mapping[str, Any]]) -> None:
        self.features = features
        self.vectors: dict[str, list[np.ndarray]] = {
            k: [] for k, s in features.items() if s["dtype"] in NUMERIC_DTYPES
        }
        self.images = {
            k: ImageStats(channel_count(s)) for k, s in features.items() if s["dtype"] == "image"
        }

    def add(self, columns: Mapping[str, np.ndarray]) -> Stats:
        """Add one episode's arrays; return that episode's statistics."""
        episode: Stats = {}
        for key in self.features:
            values = columns[key]
            if key in self.images:
                acc = ImageStats(self.images[key].channels)
                acc.update(values)
                self.images[key].merge(acc)
                episode[key] = acc.result()
            else:
                values = values.reshape(len(values), -1)
                self.vectors[key].append(values)
                episode[key] = vector_stats(values)
        return episode

    def result(self) -> Stats:
        stats: Stats = {}
        for key in self.features:
            if key in self.images:
                stats[key] = self.images[key].result()
            else:
                stats[key] = vector_stats(np.concatenate(self.vectors[key]))
        return stats


def _tasks_table(tasks: Sequence[str]) -> pa.Table:
    """``meta/tasks.parquet`` as pandas writes ``DataFrame({"task_index"}, index=task)``:
    the index is stored as the column ``task`` and named in the pandas metadata."""
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "task": pa.array(list(tasks), pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _stats_columns(rows: Sequence[Stats]) -> dict[str, list]:
    """Per-episode statistics flattened to ``stats/<feature>/<stat>`` columns (nested lists)."""
    columns: dict[str, list] = {}
    for key, entry in rows[0].items():
        for stat in entry:
            columns[f"stats/{key}/{stat}"] = [np.asarray(r[key][stat]).tolist() for r in rows]
    return columns


def write_dataset(
    out_dir: str | Path,
    episodes: Iterable[Episode],
    fps: int,
    features: Mapping[str, Mapping[str, Any]],
    robot_type: str | None = None,
    chunks_size: int = DEFAULT_CHUNKS_SIZE,
    data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
    overwrite: bool = False,
    png_compress_level: int = 1,
) -> Path:
    """Write ``episodes`` as a LeRobotDataset v3.0 directory at ``out_dir``.

    Episodes are consumed one at a time (a generator can record them as it goes), encoded,
    appended to the current data file and folded into the statistics, so memory holds one
    episode's images plus the numeric columns. Task strings get indices in order of first
    appearance. Nothing appears at ``out_dir`` until everything is written.

    Args:
        out_dir: The dataset directory to create.
        episodes: The demonstrations; each holds every key of ``features``.
        fps: Frames per second of the recording (the control rate).
        features: ``{key: {"dtype", "shape", "names"}}`` of the recorded features (see
            :func:`make_features`); the default columns are added.
        robot_type: Free text stored in ``info.json`` (LeRobot's ``robot_type``).
        chunks_size: Data files per ``chunk-XXX`` folder.
        data_files_size_in_mb: Size at which a data file is closed and the next one begun.
        overwrite: Replace an existing ``out_dir`` (swapped in only once complete).
        png_compress_level: zlib level of the PNG frames (0-9; PNG is lossless at any level).

    Returns:
        ``out_dir`` as a ``Path``.
    """
    if not isinstance(fps, int) or isinstance(fps, bool) or fps <= 0:
        raise DatasetFormatError(f"fps must be a positive integer (frames per second); got {fps!r}")
    if chunks_size < 1:
        raise DatasetFormatError(f"chunks_size must be at least 1; got {chunks_size}")
    if not data_files_size_in_mb > 0:
        raise DatasetFormatError(
            f"data_files_size_in_mb must be positive; got {data_files_size_in_mb}"
        )
    user = _check_features(features)
    all_features = {**user, **{k: dict(v) for k, v in DEFAULT_FEATURES.items()}}
    schema = pa.schema([(key, _arrow_type(spec)) for key, spec in all_features.items()])

    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as root:
        files = _DataFiles(root, schema, chunks_size, data_files_size_in_mb)
        stats = _StatsBuilder(all_features)
        tasks: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        episode_stats: list[Stats] = []
        total = 0
        try:
            for position, episode in enumerate(episodes):
                arrays = _check_episode(episode, user, position)
                length = len(next(iter(arrays.values())))
                task_index = tasks.setdefault(episode.task, len(tasks))
                frame_index = np.arange(length, dtype=np.int64)
                arrays.update(
                    {
                        "timestamp": (frame_index / fps).astype(np.float32),
                        "frame_index": frame_index,
                        "episode_index": np.full(length, position, dtype=np.int64),
                        "index": frame_index + total,
                        "task_index": np.full(length, task_index, dtype=np.int64),
                    }
                )
                table = pa.Table.from_arrays(
                    [
                        _arrow_column(all_features[k], arrays[k], png_compress_level)
                        for k in all_features
                    ],
                    schema=schema,
                )
                chunk_index, file_index = files.write(table)
                episode_stats.append(stats.add(arrays))
                rows.append(
                    {
                        "episode_index": position,
                        "tasks": [episode.task],
                        "length": length,
                        "data/chunk_index": chunk_index,
                        "data/file_index": file_index,
                        "dataset_from_index": total,
                        "dataset_to_index": total + length,
                        "meta/episodes/chunk_index": 0,
                        "meta/episodes/file_index": 0,
                    }
                )
                total += length
        finally:
            files.close()
        if not rows:
            raise DatasetFormatError("no episodes to write: record at least one episode")

        episode_table = pa.table(
            {
                **{key: [row[key] for row in rows] for key in rows[0]},
                **_stats_columns(episode_stats),
            }
        )
        episodes_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True)
        pq.write_table(episode_table, episodes_path)
        pq.write_table(_tasks_table(list(tasks)), root / TASKS_PATH)
        (root / STATS_PATH).write_text(stats_to_json(stats.result()))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": len(rows),
            "total_frames": total,
            "total_tasks": len(tasks),
            "chunks_size": chunks_size,
            "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
            "fps": fps,
            "splits": {"train": f"0:{len(rows)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": all_features,
        }
        (root / INFO_PATH).write_text(json.dumps(info, indent=4) + "\n")
    return out_dir
