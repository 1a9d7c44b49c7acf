"""Shared fixtures of the code app's tests: one thread, a tiny cached base per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.threads import one_thread  # noqa: F401  (autouse fixture)

TINY_CONFIG = Path(__file__).with_name("tiny.yaml")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A per-session cache folder for tiny bases (never the user's real cache)."""
    return tmp_path_factory.mktemp("code-cache")


@pytest.fixture(scope="session")
def tiny_base(tiny_cache):
    """``(folder, BaseConfig)`` of a tiny base, pre-trained once per session (seconds)."""
    from apps.code.model import BaseConfig, ensure_base

    cfg = BaseConfig(
        vocab_size=320, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
        max_positions=256, seq_len=64, steps=3, batch_size=2, max_corpus_chars=200_000,
        cache_dir=str(tiny_cache / "code"),
    )  # fmt: skip
    return ensure_base(cfg), cfg
