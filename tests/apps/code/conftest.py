"""Shared fixtures of the code app's tests: one thread, the app's tiny base per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apps.code import sandbox_bwrap
from core.training import tiny_config
from tests.threads import one_thread  # noqa: F401  (autouse fixture)

#: Tests that run programs in the kernel sandbox: skipped, with bubblewrap's reason, where
#: it cannot start (the refusal tests run anywhere).
kernel = pytest.mark.skipif(
    sandbox_bwrap.problem() != "",
    reason=f"the kernel sandbox cannot start here: {sandbox_bwrap.problem()}",
)

#: The app's own one-step recipe (``apps/code/configs/tiny.yaml``), which the tests run.
TINY_CONFIG = tiny_config("apps.code")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A per-session cache root for tiny bases (never the user's real cache)."""
    return tmp_path_factory.mktemp("code-cache")


@pytest.fixture(scope="session")
def tiny_base(tiny_cache):
    """``(folder, BaseConfig)`` of tiny.yaml's base, pre-trained once per session (seconds).

    Cached where a run with ``$SPECIALIST_FINETUNERS_CACHE=tiny_cache`` looks for it.
    """
    from apps.code.model import BaseConfig, ensure_base

    options = yaml.safe_load(TINY_CONFIG.read_text())["model"]["base"]
    cfg = BaseConfig(**options, cache_dir=str(tiny_cache / "code"))
    return ensure_base(cfg), cfg
