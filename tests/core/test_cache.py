"""The config-keyed cache: where entries go, hits and misses, crashes, corrupt entries."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cache import (
    CACHE_ENV,
    DIR_MARKER,
    app_cache_dir,
    cached,
    cached_dir,
    config_hash,
    entry_path,
)


class Counter:
    """A build function that counts its calls and returns a tensor of its config's value."""

    def __init__(self, value: float = 1.0) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"x": torch.full((3,), self.value)}


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert app_cache_dir("vision") == tmp_path / "vision"
    monkeypatch.delenv(CACHE_ENV)
    assert app_cache_dir("code") == Path.home() / ".cache" / "specialist-finetuners" / "code"


def test_config_hash_ignores_key_order_and_sees_values() -> None:
    a = config_hash({"lr": 0.1, "steps": 10, "path": Path("/x")})
    assert a == config_hash({"path": "/x", "steps": 10, "lr": 0.1})
    assert a != config_hash({"lr": 0.1, "steps": 11, "path": "/x"})
    assert len(a) == 16 and int(a, 16) >= 0


def test_entries_are_keyed_by_app_kind_and_config(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    config = {"size": 8}
    build = Counter()
    cached("features", config, build, app="demo")
    assert build.calls == 1
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [f"features-{config_hash(config)}.pt"]
    assert entry_path("features", config, app="demo") == (
        tmp_path / "demo" / f"features-{config_hash(config)}.pt"
    )
    # Another kind or another app with the same config is another entry.
    cached("lit", config, build, app="demo")
    cached("features", config, build, app="other")
    assert build.calls == 3


def test_hit_returns_the_stored_value_without_building(tmp_path) -> None:
    first = cached("features", {"n": 1}, Counter(2.0), app="demo", cache_dir=tmp_path)
    again = Counter(99.0)
    second = cached("features", {"n": 1}, again, app="demo", cache_dir=tmp_path)
    assert again.calls == 0
    assert torch.equal(second["x"], first["x"]) and second["x"][0].item() == 2.0


def test_changed_config_misses(tmp_path) -> None:
    cached("features", {"n": 1}, Counter(1.0), app="demo", cache_dir=tmp_path)
    build = Counter(5.0)
    value = cached("features", {"n": 2}, build, app="demo", cache_dir=tmp_path)
    assert build.calls == 1 and value["x"][0].item() == 5.0
    assert len(list(tmp_path.iterdir())) == 2


def test_values_need_not_be_dicts(tmp_path) -> None:
    assert cached("text", {"v": 1}, lambda: "hello", app="demo", cache_dir=tmp_path) == "hello"
    assert cached("text", {"v": 1}, lambda: "other", app="demo", cache_dir=tmp_path) == "hello"


def test_a_crash_in_build_leaves_no_entry(tmp_path) -> None:
    def crash() -> dict:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cached("features", {"n": 1}, crash, app="demo", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    build = Counter()
    cached("features", {"n": 1}, build, app="demo", cache_dir=tmp_path)
    assert build.calls == 1


def test_a_crash_while_saving_keeps_the_previous_entry(tmp_path, monkeypatch) -> None:
    cached("features", {"n": 1}, Counter(1.0), app="demo", cache_dir=tmp_path)
    path = entry_path("features", {"n": 1}, app="demo", cache_dir=tmp_path)
    before = path.read_bytes()

    def torn_save(obj, f) -> None:
        Path(f).write_bytes(b"\x80\x02 half a pickle")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    config = {"n": 2}
    with pytest.warns(UserWarning, match="could not write the cache entry"):
        value = cached("features", config, Counter(3.0), app="demo", cache_dir=tmp_path)
    assert value["x"][0].item() == 3.0  # the run goes on with the value
    assert path.read_bytes() == before
    assert not entry_path("features", config, app="demo", cache_dir=tmp_path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04truncated"])
def test_corrupt_entry_is_named_and_built_again(tmp_path, content) -> None:
    path = entry_path("features", {"n": 1}, app="demo", cache_dir=tmp_path)
    path.write_bytes(content)
    build = Counter(4.0)
    with pytest.warns(UserWarning, match=rf"{path.name}.*unreadable.*building it again"):
        value = cached("features", {"n": 1}, build, app="demo", cache_dir=tmp_path)
    assert build.calls == 1 and value["x"][0].item() == 4.0
    # ...and the rebuilt entry is read back on the next call.
    assert cached("features", {"n": 1}, Counter(), app="demo", cache_dir=tmp_path)["x"][0] == 4.0


def test_entry_of_another_config_under_the_same_name_is_not_used(tmp_path) -> None:
    cached("features", {"n": 1}, Counter(1.0), app="demo", cache_dir=tmp_path)
    src = entry_path("features", {"n": 1}, app="demo", cache_dir=tmp_path)
    dst = entry_path("features", {"n": 2}, app="demo", cache_dir=tmp_path)
    src.rename(dst)  # as if two configs collided on the hash
    with pytest.warns(UserWarning, match="not built from this config"):
        value = cached("features", {"n": 2}, Counter(7.0), app="demo", cache_dir=tmp_path)
    assert value["x"][0].item() == 7.0


def test_entries_written_by_the_old_vision_cache_are_read(tmp_path) -> None:
    config = {"kind": "benchmark-features", "version": 1}
    legacy = {"train": torch.ones(2), "_config": json.dumps(config, sort_keys=True, default=str)}
    torch.save(legacy, entry_path("features", config, app="vision", cache_dir=tmp_path))
    build = Counter()
    value = cached("features", config, build, app="vision", cache_dir=tmp_path)
    assert (
        build.calls == 0 and set(value) == {"train"} and torch.equal(value["train"], torch.ones(2))
    )


def test_a_build_does_not_move_the_global_random_streams(tmp_path) -> None:
    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    def noisy_build() -> dict:
        random.random(), np.random.rand(5), torch.randn(100)
        return {"x": torch.zeros(1)}

    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    expected = draws()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    cached("features", {"n": 1}, noisy_build, app="demo", cache_dir=tmp_path)  # a miss
    assert draws() == expected


def test_kind_must_be_a_plain_name(tmp_path) -> None:
    with pytest.raises(ValueError, match="plain name"):
        cached("../escape", {}, Counter(), app="demo", cache_dir=tmp_path)


# ------------------------------------------------------------------ folder entries
def write_model(folder: Path) -> None:
    (folder / "weights.bin").write_bytes(b"w" * 10)
    (folder / "config.json").write_text("{}")


def test_cached_dir_builds_once(tmp_path) -> None:
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        write_model(folder)

    path = cached_dir("base", {"layers": 2}, build, app="demo", cache_dir=tmp_path)
    assert path == entry_path("base", {"layers": 2}, app="demo", cache_dir=tmp_path, suffix="")
    assert sorted(p.name for p in path.iterdir()) == [
        "cache_entry.json",
        "config.json",
        "weights.bin",
    ]
    assert json.loads((path / DIR_MARKER).read_text())["config"] == {"layers": 2}
    assert calls[0] != path  # built in a temporary folder, then renamed
    assert cached_dir("base", {"layers": 2}, build, app="demo", cache_dir=tmp_path) == path
    assert len(calls) == 1


def test_cached_dir_crash_leaves_nothing(tmp_path) -> None:
    def crash(folder: Path) -> None:
        write_model(folder)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_dir("base", {"layers": 2}, crash, app="demo", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cached_dir_without_its_marker_is_built_again(tmp_path) -> None:
    path = entry_path("base", {"layers": 2}, app="demo", cache_dir=tmp_path, suffix="")
    path.mkdir()
    (path / "weights.bin").write_bytes(b"half")  # a copy cut short
    with pytest.warns(UserWarning, match=rf"{path.name}.*incomplete"):
        cached_dir("base", {"layers": 2}, write_model, app="demo", cache_dir=tmp_path)
    assert (path / "weights.bin").read_bytes() == b"w" * 10 and (path / DIR_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
