"""A small on-disk cache for expensive, deterministic results (features, LiT alignment).

Entries are ``torch.save`` files named ``<kind>-<hash>.pt`` where the hash covers the JSON
of the config that produced them, so a changed config is a new entry and a stale one is
never read. Writes are atomic (``core.atomic``): an interrupted run leaves no half file.
The directory is ``$SPECIALIST_FINETUNERS_CACHE/vision`` or
``~/.cache/specialist-finetuners/vision`` unless a ``cache_dir`` is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_write
from core.cache import app_cache_dir, config_hash

__all__ = ["cache_root", "cached", "config_hash"]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory (created on first write)."""
    return Path(cache_dir) if cache_dir is not None else app_cache_dir("vision")


def cached(
    kind: str,
    config: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Load ``<kind>-<hash(config)>.pt`` or compute it, save it atomically and return it."""
    path = cache_root(cache_dir) / f"{kind}-{config_hash(config)}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated file from another tool: recompute
            print(f"[vision cache] ignoring unreadable {path}: {err}")
    value = compute()
    value = {**value, "_config": json.dumps(config, sort_keys=True, default=str)}
    atomic_write(path, lambda tmp: torch.save(value, tmp))
    return value
