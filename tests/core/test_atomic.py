"""Atomic files and directories: all or nothing."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import core.atomic as atomic_module
from core.atomic import atomic_directory, atomic_write, atomic_write_text, current_umask


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


# ------------------------------------------------------------------ where, modes, durability
@pytest.fixture
def umask_027() -> Iterator[int]:
    """Run a test under umask 0o027 (0640 files, 0750 folders), then restore the old one."""
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask_027: int) -> None:
    assert current_umask() == umask_027
    assert current_umask() == umask_027


def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(
    tmp_path: Path, umask_027: int
) -> None:
    def private(tmp: Path) -> None:  # safetensors, for one, writes 0600 files
        tmp.write_text("x")
        os.chmod(tmp, 0o600)

    atomic_write(tmp_path / "a.bin", private)
    atomic_write_text(tmp_path / "b.txt", "y")
    assert _mode(tmp_path / "a.bin") == 0o640
    assert _mode(tmp_path / "b.txt") == 0o640


def test_atomic_directory_gives_the_umask_mode_not_mkdtemps_0700(
    tmp_path: Path, umask_027: int
) -> None:
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "weights").write_text("w")
        os.chmod(tmp / "sub" / "weights", 0o600)
        (tmp / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(tmp / "run.sh", 0o700)
    out = tmp_path / "out"
    assert _mode(out) == 0o750
    assert _mode(out / "sub") == 0o750
    assert _mode(out / "sub" / "weights") == 0o640
    assert _mode(out / "run.sh") == 0o750


def test_the_temporary_file_lives_next_to_the_destination_not_in_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))  # what $TMPDIR sets
    seen: list[Path] = []
    atomic_write(tmp_path / "dest" / "f.txt", lambda tmp: (seen.append(tmp), tmp.write_text("x")))
    with atomic_directory(tmp_path / "dest" / "d") as tmp:
        seen.append(tmp)
    assert [p.parent for p in seen] == [tmp_path / "dest"] * 2
    assert list(elsewhere.iterdir()) == []


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record ``("fsync", inode)`` and ``("replace", inode of the source)`` in call order."""
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", os.lstat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(atomic_module.os, "fsync", fsync)
    monkeypatch.setattr(atomic_module.os, "replace", replace)
    return events


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_syncs(monkeypatch)
    target = atomic_write_text(tmp_path / "f.txt", "data")
    file_ino, dir_ino = target.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", file_ino), ("replace", file_ino), ("fsync", dir_ino)]


def test_atomic_directory_fsyncs_every_file_before_it_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_syncs(monkeypatch)
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a").write_text("a")
        (tmp / "b").write_text("b")
    out = tmp_path / "out"
    inodes = {p.stat().st_ino for p in (out / "sub" / "a", out / "b", out / "sub", out)}
    rename = events.index(("replace", out.stat().st_ino))
    assert inodes <= {ino for kind, ino in events[:rename] if kind == "fsync"}
    assert ("fsync", tmp_path.stat().st_ino) in events[rename:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")
def test_overwriting_a_directory_never_leaves_it_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill right after any rename still leaves a complete old or new directory."""
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("old")
    real_replace = os.replace

    def replace_then_die(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        raise KeyboardInterrupt("killed right after a rename")

    monkeypatch.setattr(atomic_module.os, "replace", replace_then_die)
    try:
        with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
    except KeyboardInterrupt:
        pass
    assert (tmp_path / "out" / "a.txt").read_text() in {"old", "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
