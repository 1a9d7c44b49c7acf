"""The config-keyed cache: what an app builds once (a pre-trained base, features, a tokenizer)
and reuses on every later run, stored under a name derived from the config that built it.

One entry is ``<cache root>/<app>/<kind>-<hash>.pt`` (:func:`cached`, a ``torch.save`` file)
or ``<cache root>/<app>/<kind>-<hash>/`` (:func:`cached_dir`, a folder such as a
``save_pretrained`` model), where ``<hash>`` is :func:`config_hash` of the config. A changed
config is a new entry, so a stale one is never read. The root is
``$SPECIALIST_FINETUNERS_CACHE`` or ``~/.cache/specialist-finetuners``; ``cache_dir=`` puts an
app's entries in a folder of the caller's choice instead (tests, read-only homes).

Entries are written atomically (``core.atomic``): a build that crashes, or a kill during the
write, leaves no entry, never half of one. An entry that cannot be read (truncated by another
tool, written by an incompatible version) is named in a warning and built again. A build may
draw from the global random generators; :func:`cached` and :func:`cached_dir` restore them
afterwards, so a run that builds an entry and a run that finds it continue with the same
random stream. A cache that cannot be written (read-only disk) warns and returns the value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from core.atomic import atomic_directory, atomic_write

__all__ = [
    "CACHE_ENV",
    "app_cache_dir",
    "cache_root",
    "cached",
    "cached_dir",
    "config_hash",
    "entry_path",
]

CACHE_ENV = "SPECIALIST_FINETUNERS_CACHE"
#: Written into every :func:`cached` file, to tell its entries from other ``.pt`` files.
ENTRY_FORMAT = "specialist-finetuners-cache/1"
#: The file a :func:`cached_dir` entry holds once its build finished (the config, as JSON).
DIR_MARKER = "cache_entry.json"

T = TypeVar("T")
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def cache_root() -> Path:
    """``$SPECIALIST_FINETUNERS_CACHE`` or ``~/.cache/specialist-finetuners``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "specialist-finetuners"


def app_cache_dir(app: str) -> Path:
    """``$SPECIALIST_FINETUNERS_CACHE/<app>`` or ``~/.cache/specialist-finetuners/<app>``."""
    return cache_root() / app


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable config (key order does not matter).

    Values JSON cannot hold are hashed by ``str`` (a ``Path`` as its text).
    """
    return hashlib.sha256(_config_json(config).encode()).hexdigest()[:16]


def _config_json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def entry_path(
    kind: str,
    config: Mapping[str, Any],
    *,
    app: str,
    cache_dir: str | Path | None = None,
    suffix: str = ".pt",
) -> Path:
    """Where the entry of ``kind`` built from ``config`` lives (it may not exist yet).

    Args:
        kind: What the entry holds, e.g. ``"features"``, ``"tokenizer"``, ``"base"``: part of
            the file name (letters, digits, ``_``, ``-``, ``.``).
        config: Everything that changes what the build produces (JSON-serialisable).
        app: The app the entry belongs to (its sub-folder of the cache root).
        cache_dir: Use this folder instead of ``<cache root>/<app>``.
        suffix: ``".pt"`` for :func:`cached` files, ``""`` for :func:`cached_dir` folders.
    """
    if not _KIND.match(kind):
        raise ValueError(
            f"cache kind {kind!r} must be a plain name (letters, digits, '_', '-', '.'), "
            "e.g. 'features'."
        )
    folder = Path(cache_dir) if cache_dir is not None else app_cache_dir(app)
    return folder / f"{kind}-{config_hash(config)}{suffix}"


@contextlib.contextmanager
def same_random_state() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global generators (CPU and CUDA) on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def cached(
    kind: str,
    config: Mapping[str, Any],
    build: Callable[[], T],
    *,
    app: str,
    cache_dir: str | Path | None = None,
) -> T:
    """Return the cached value built from ``config``, building and storing it on a miss.

    The value is stored with ``torch.save`` and read back with ``weights_only=True``, so it
    must be made of tensors, numbers, strings, ``None`` and lists/tuples/dicts of them
    (convert NumPy arrays with ``torch.from_numpy``). The file also holds the config's JSON,
    which is compared on reading: an entry is used only for the config that built it.

    Args:
        kind: What the entry holds (part of its file name), e.g. ``"features"``.
        config: Everything that changes the result: data version, sizes, seeds, model
            architecture. Two configs with the same JSON share an entry.
        build: Computes the value on a miss (it may use the global random generators; their
            state is restored afterwards).
        app: The app's name: entries go to ``<cache root>/<app>/``.
        cache_dir: A folder to use instead of ``<cache root>/<app>/``.

    Returns:
        The value ``build`` returned, now or on an earlier run.
    """
    path = entry_path(kind, config, app=app, cache_dir=cache_dir)
    text = _config_json(config)
    if path.is_file():
        found, value = _read_entry(path, text)
        if found:
            return value
    with same_random_state():
        value = build()
    payload = {"format": ENTRY_FORMAT, "app": app, "kind": kind, "config": text, "value": value}
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except OSError as err:  # a read-only or full disk must not stop the run
        warnings.warn(
            f"could not write the cache entry {str(path)!r} ({err}); the value is used "
            f"without caching. Point ${CACHE_ENV} (or cache_dir) at a writable folder.",
            stacklevel=2,
        )
    return value


def _read_entry(path: Path, config_text: str) -> tuple[bool, Any]:
    """``(True, value)`` for a readable entry of this config; ``(False, None)`` otherwise."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or not a torch file: build it again
        warnings.warn(
            f"cache entry {str(path)!r} is unreadable ({type(err).__name__}: "
            f"{str(err)[:200]}); building it again.",
            stacklevel=3,
        )
        return False, None
    if isinstance(payload, dict) and payload.get("format") == ENTRY_FORMAT:
        if payload.get("config") == config_text:
            return True, payload.get("value")
        stored = payload.get("config")
    elif isinstance(payload, dict) and isinstance(payload.get("_config"), str):
        # Entries of apps.vision.cache (before the cache moved to core): the value's fields
        # plus its config's JSON under "_config".
        if payload["_config"] == config_text:
            return True, {k: v for k, v in payload.items() if k != "_config"}
        stored = payload["_config"]
    else:
        stored = None
    warnings.warn(
        f"cache entry {str(path)!r} was not built from this config (it holds "
        f"{str(stored)[:200]!s}); building it again.",
        stacklevel=3,
    )
    return False, None


def cached_dir(
    kind: str,
    config: Mapping[str, Any],
    build: Callable[[Path], None],
    *,
    app: str,
    cache_dir: str | Path | None = None,
) -> Path:
    """Return the cached folder built from ``config``, building it on a miss.

    For entries that are folders of files: a ``save_pretrained`` model and tokenizer, an
    exported ONNX graph, rendered data. ``build(folder)`` writes into an empty temporary
    folder next to the entry, which becomes the entry in one rename once ``build`` returns
    (with :data:`DIR_MARKER` added). A folder without the marker (a copy cut short by
    another tool) is built again; if another process finishes the same entry first, its
    folder is kept.

    Args:
        kind: What the entry holds (part of its folder name), e.g. ``"base"``.
        config: Everything that changes the result (see :func:`cached`).
        build: Writes the entry's files into the folder it is given.
        app: The app's name: entries go to ``<cache root>/<app>/``.
        cache_dir: A folder to use instead of ``<cache root>/<app>/``.

    Returns:
        The entry's folder.
    """
    path = entry_path(kind, config, app=app, cache_dir=cache_dir, suffix="")
    marker = path / DIR_MARKER
    if marker.is_file():
        return path
    overwrite = path.exists()
    if overwrite:
        warnings.warn(
            f"cache entry {str(path)!r} is incomplete (no {DIR_MARKER}); building it again.",
            stacklevel=2,
        )
    try:
        with same_random_state(), atomic_directory(path, overwrite=overwrite) as tmp:
            build(tmp)
            text = json.dumps(
                {"app": app, "kind": kind, "config": json.loads(_config_json(config))}
            )
            (tmp / DIR_MARKER).write_text(text + "\n")
    except FileExistsError:  # another process finished the same entry meanwhile
        if not marker.is_file():
            raise
    return path
