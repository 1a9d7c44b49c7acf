"""Shared tiny settings, read from the app's own ``configs/tiny.yaml``, and a temporary cache.

The tests build the same tiny LiT alignment and few-image benchmark that a
``--config apps/vision/configs/tiny.yaml`` run does, in a session-wide temporary cache. The
tensors are small, so the package runs on one intra-op thread (tests/threads.py).
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import yaml

from core.training import tiny_config
from tests.threads import one_thread  # noqa: F401  (autouse fixture)

os.environ.setdefault("TQDM_DISABLE", "1")

TINY_YAML = tiny_config("apps.vision")
_TINY = yaml.safe_load(TINY_YAML.read_text())
#: Model options of the tiny embedded classifier (a small, quick LiT alignment).
TINY_MODEL: dict = _TINY["model"]
#: Data options of the tiny embedded benchmark (one full and one class-subset shift).
TINY_DATA: dict = _TINY["data"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("vision_cache"))


@pytest.fixture(scope="session")
def tiny_data(cache_dir):
    from apps.vision.data import VisionDataModule

    dm = VisionDataModule(cache_dir=cache_dir, **TINY_DATA)
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def tiny_model_kwargs(cache_dir):
    return {**TINY_MODEL, "cache_dir": cache_dir}


def quiet_trainer(**options) -> pl.Trainer:
    """A bare trainer: no logger (so no run directory), no checkpoints, no progress output."""
    options = {"max_epochs": 1, "deterministic": True, **options}
    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def fit(module: pl.LightningModule, data: pl.LightningDataModule) -> pl.LightningModule:
    """Fit ``module`` on ``data`` for one epoch with a :func:`quiet_trainer`."""
    quiet_trainer().fit(module, datamodule=data)
    return module
