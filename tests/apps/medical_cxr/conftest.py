"""Shared fixtures of the chest X-ray app's tests: one intra-op thread, a private cache, the
embedded reports parsed once, and one tiny report-generation run for the tests that need a
trained checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.cache import CACHE_ENV
from tests.threads import one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Cache entries (phantoms, tokenizers) go to a folder of this session, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def embedded_studies():
    """All embedded studies (real IU X-ray reports, findings section), parsed once."""
    from apps.medical_cxr.sources import load_embedded

    logging.getLogger("apps.medical_cxr.sources").setLevel(logging.ERROR)
    return load_embedded()


@pytest.fixture()
def fast_embedded(monkeypatch, embedded_studies):
    """Reuse the session's parsed reports instead of reading the archive again."""
    from apps.medical_cxr import data as data_mod

    monkeypatch.setattr(data_mod, "load_embedded", lambda *a, **k: list(embedded_studies))
    return embedded_studies


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, embedded_studies):
    """``python -m apps.medical_cxr.train --config configs/tiny.yaml`` (no subcommand: fit,
    then test), made a little longer: 2 epochs of 2 steps, 16 test studies."""
    from apps.medical_cxr import data as data_mod
    from apps.medical_cxr.train import main

    from .tiny import TINY_CONFIG, TRAINER

    root = tmp_path_factory.mktemp("sft")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_mod, "load_embedded", lambda *a, **k: list(embedded_studies))
        cli = main(
            ["--config", str(TINY_CONFIG), "--trainer.max_epochs", "2",
             "--trainer.limit_train_batches", "2", "--trainer.limit_test_batches", "2",
             "--trainer.default_root_dir", str(root / "runs"), *TRAINER]
        )  # fmt: skip
    return cli, Path(cli.trainer.log_dir)


@pytest.fixture()
def iu_layout(tmp_path):
    """Report XMLs and PNGs of three IU X-ray studies (see layouts.make_iu_layout)."""
    from .layouts import make_iu_layout

    return make_iu_layout(tmp_path)
