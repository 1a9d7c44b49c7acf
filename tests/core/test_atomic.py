"""Atomic files and directories: all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.atomic import atomic_directory, atomic_write


def test_directory_appears_complete(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_the_old_directory(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("crash")
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"), atomic_directory(tmp_path / "out"):
        pass
    with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.txt"]


def test_atomic_write(tmp_path: Path) -> None:
    atomic_write(tmp_path / "f.txt", lambda tmp: tmp.write_text("x"))
    assert (tmp_path / "f.txt").read_text() == "x"
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "f.txt", lambda tmp: (_ for _ in ()).throw(ValueError("no")))
    assert (tmp_path / "f.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
