"""The vision app's entries in the shared cache (:mod:`core.cache`).

Kept so that ``from .cache import cached`` goes on working while the app moves to
``core.cache.cached(kind, config, build, app="vision", cache_dir=...)`` directly; entries are
``<cache root>/vision/<kind>-<hash>.pt`` as before, and entries written before the move are
read as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.cache import app_cache_dir, config_hash
from core.cache import cached as _core_cached

__all__ = ["cache_root", "cached", "config_hash"]

APP = "vision"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: ``cache_dir`` or ``<cache root>/vision``."""
    return Path(cache_dir) if cache_dir is not None else app_cache_dir(APP)


def cached(
    kind: str,
    config: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`core.cache.cached` for the vision app (``cache_dir`` may be given by position)."""
    return _core_cached(kind, config, compute, app=APP, cache_dir=cache_dir)
