"""Where apps cache what they build once and reuse (pre-trained bases, features), and the
config hash that names each entry, so every app keys and places its cache the same way.

The root is ``$SPECIALIST_FINETUNERS_CACHE`` or ``~/.cache/specialist-finetuners``; each app
gets a sub-directory. A changed config gives a new hash, so a stale entry is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_ENV = "SPECIALIST_FINETUNERS_CACHE"


def app_cache_dir(app: str) -> Path:
    """``$SPECIALIST_FINETUNERS_CACHE/<app>`` or ``~/.cache/specialist-finetuners/<app>``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "specialist-finetuners"
    return base / app


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
