"""Shared tiny settings: a temporary feature/LiT cache and a few-image benchmark.

The tensors are small, so the package runs on one intra-op thread (tests/threads.py).
"""

from __future__ import annotations

import os

import pytest

from tests.threads import one_thread  # noqa: F401  (autouse fixture)

os.environ.setdefault("TQDM_DISABLE", "1")

#: Model options of a tiny, fast embedded classifier (LiT on 150 images, 40 steps).
TINY_MODEL = {
    "embed_dim": 32,
    "alignment_steps": 40,
    "alignment_images": 150,
    "alignment_copies": 1,
}
#: Data options of a tiny embedded benchmark with one full and one class-subset shift.
TINY_DATA = {
    "n_train": 80,
    "n_val": 40,
    "n_test": 50,
    "shifts": ["rotation", "flip180"],
    "batch_size": 32,
}


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
