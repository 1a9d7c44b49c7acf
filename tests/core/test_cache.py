"""The shared cache location and config hash the apps name their cached entries with."""

from __future__ import annotations

from pathlib import Path

from core.cache import CACHE_ENV, app_cache_dir, config_hash


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
