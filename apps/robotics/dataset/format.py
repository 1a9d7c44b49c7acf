"""The LeRobotDataset format: paths, default columns, records and the PNG frame codec.

The ``lerobot`` package cannot be installed beside this repository (it pins an older torch),
so the format is written (:mod:`.lerobot`) and read (:mod:`.reader`) here with pyarrow alone,
following LeRobot's v3.0 layout so that its tools can open what we record:

::

    meta/info.json            codebase_version "v3.0", robot_type, total_episodes,
                              total_frames, total_tasks, chunks_size, data_files_size_in_mb,
                              video_files_size_in_mb, fps, splits, data_path, video_path (null:
                              images are inline), features {key: {dtype, shape, names}}
    meta/stats.json           per feature: min, max, mean, std, count, q01, q10, q50, q90, q99
                              (images per channel, shape (C, 1, 1), on a 0-1 scale)
    meta/tasks.parquet        pandas index ``task`` (the string), column ``task_index``
    meta/episodes/chunk-000/file-000.parquet
                              one row per episode: episode_index, tasks, length,
                              data/chunk_index, data/file_index, dataset_from_index,
                              dataset_to_index, meta/episodes/chunk_index,
                              meta/episodes/file_index, stats/<feature>/<stat>
    data/chunk-XXX/file-YYY.parquet
                              one row per frame: the features, then timestamp, frame_index,
                              episode_index, index, task_index

Images are PNG bytes inside the data parquet, in the struct ``{bytes, path}`` that Hugging
Face ``datasets`` uses for its ``Image`` feature (``path`` null); one-element features are
scalar columns and vectors fixed-size lists (``datasets``' ``Value`` and ``Sequence``).
v2.0/v2.1 datasets keep one parquet file per episode (``LEGACY_DATA_PATH``) and their
metadata in ``meta/tasks.jsonl``, ``meta/episodes.jsonl`` and ``meta/episodes_stats.jsonl``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

#: The version this module writes.
CODEBASE_VERSION = "v3.0"
#: The versions :func:`read_dataset` reads.
READABLE_VERSIONS = ("v2.0", "v2.1", "v3.0")
#: LeRobot's defaults: files per chunk folder, and megabytes per data / video file.
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"

#: Conventional feature keys (LeRobot's names).
OBS_STATE = "observation.state"
ACTION = "action"
OBS_IMAGES = "observation.images"

#: Columns every frame has, added by the writer (LeRobot's ``DEFAULT_FEATURES``).
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
#: Episode-table columns a v3.0 reader needs.
EPISODE_COLUMNS = (
    "episode_index",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)
#: Numeric dtypes a feature may have besides ``image``.
NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
#: The Arrow type of an inline image (Hugging Face ``datasets``' ``Image`` storage).
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


class DatasetFormatError(ValueError):
    """A dataset file (or the data handed to the writer) does not follow the format."""


@dataclass
class Episode:
    """One demonstration: per-frame arrays keyed by feature name, and its task string.

    ``data`` holds every feature the dataset declares (not the default columns, which the
    writer adds): images ``(T, H, W, C)`` uint8, vectors ``(T, d)`` (``(T,)`` is accepted
    for a one-element feature), cast to the feature's declared dtype when written. ``task``
    is the language instruction stored for the episode (its ``tasks.parquet`` string).
    """

    task: str
    data: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0


@dataclass(frozen=True)
class EpisodeRecord:
    """One row of the episode table: where an episode's frames are and its statistics."""

    episode_index: int
    tasks: list[str]
    length: int
    dataset_from_index: int
    dataset_to_index: int
    data_file: str
    stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def frames(self) -> range:
        """The global frame indices (dataset rows) of this episode."""
        return range(self.dataset_from_index, self.dataset_to_index)


def image_feature(shape: Sequence[int]) -> dict[str, Any]:
    """An inline-image feature entry: ``shape`` is ``(height, width, channels)``."""
    return {"dtype": "image", "shape": [int(s) for s in shape], "names": list(IMAGE_AXES)}


IMAGE_AXES = ("height", "width", "channels")


def vector_feature(names: Sequence[str], dtype: str = "float32") -> dict[str, Any]:
    """A 1-D feature entry whose dimensions are called ``names``."""
    return {"dtype": dtype, "shape": [len(names)], "names": list(names)}


def make_features(
    camera_keys: Sequence[str],
    image_shape: Sequence[int],
    state_names: Sequence[str],
    action_names: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """The features of a camera + proprioception + action dataset, LeRobot-style.

    Args:
        camera_keys: Image feature keys, e.g. ``["observation.images.top"]``.
        image_shape: ``(height, width, channels)`` of every camera.
        state_names: One name per ``observation.state`` dimension.
        action_names: One name per ``action`` dimension.
    """
    features = {key: image_feature(image_shape) for key in camera_keys}
    features[OBS_STATE] = vector_feature(state_names)
    features[ACTION] = vector_feature(action_names)
    return features


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an ``(H, W, C)`` uint8 image (lossless; level 1 favours speed)."""
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes, channels: int) -> np.ndarray:
    """An ``(H, W, channels)`` uint8 array from PNG (or any Pillow-readable) bytes."""
    with Image.open(io.BytesIO(data)) as img:
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
        pixels = np.asarray(img if img.mode == mode else img.convert(mode))
    return pixels[..., None] if channels == 1 else pixels
