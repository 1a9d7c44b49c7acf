"""Robot demonstrations on disk in LeRobot's dataset format.

:func:`write_dataset` records episodes as a LeRobotDataset v3.0 directory (PNG frames inside
the parquet files, exact statistics in ``meta/stats.json``); :func:`read_dataset` reads v3.0
and v2.0/v2.1 directories into a :class:`LeRobotDataset`. The layout is described in
:mod:`apps.robotics.dataset.format`, the statistics in :mod:`apps.robotics.dataset.stats`.
"""

from .format import (
    ACTION,
    CODEBASE_VERSION,
    OBS_IMAGES,
    OBS_STATE,
    DatasetFormatError,
    Episode,
    EpisodeRecord,
    image_feature,
    make_features,
    vector_feature,
)
from .lerobot import write_dataset
from .reader import LeRobotDataset, compute_stats, read_dataset, recompute_stats
from .stats import QUANTILES, STAT_KEYS, Stats

__all__ = [
    "ACTION",
    "CODEBASE_VERSION",
    "OBS_IMAGES",
    "OBS_STATE",
    "QUANTILES",
    "STAT_KEYS",
    "DatasetFormatError",
    "Episode",
    "EpisodeRecord",
    "LeRobotDataset",
    "Stats",
    "compute_stats",
    "image_feature",
    "make_features",
    "read_dataset",
    "recompute_stats",
    "vector_feature",
    "write_dataset",
]
