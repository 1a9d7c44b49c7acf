"""The root view: which folders need covering, and a live view that the unprivileged sandbox
user can read while the same folder stays closed to it on the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from apps.code.sandbox_rootview import RootView, mount_plan, unsearchable_ancestor

NOBODY = 65534


@pytest.fixture
def open_dir():
    """A folder under /tmp that anyone may search (pytest's own tmp_path is owner-only)."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-rootview-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_unsearchable_ancestor(open_dir):
    closed = open_dir / "closed"
    inner = closed / "a" / "b"
    inner.mkdir(parents=True)
    os.chmod(closed, 0o700)
    me, my_group = os.getuid(), os.getgid()
    assert unsearchable_ancestor(str(inner), NOBODY, NOBODY) == str(closed)
    assert unsearchable_ancestor(str(inner), me, my_group) is None  # the owner may search
    os.chmod(closed, 0o750)
    assert unsearchable_ancestor(str(inner), NOBODY, my_group) is None  # the group may search
    assert unsearchable_ancestor(str(inner), NOBODY, NOBODY) == str(closed)
    os.chmod(closed, 0o711)
    assert unsearchable_ancestor(str(inner), NOBODY, NOBODY) is None
    assert unsearchable_ancestor("/usr/lib", NOBODY, NOBODY) is None


def test_mount_plan_groups_roots_by_the_folder_to_cover(open_dir):
    closed = open_dir / "closed"
    for name in ("x", "y"):
        (closed / name).mkdir(parents=True)
    os.chmod(closed, 0o700)
    plan = mount_plan([str(closed / "x"), str(closed / "y"), "/usr/lib"], NOBODY, NOBODY)
    assert plan == {str(closed): [str(closed / "x"), str(closed / "y")]}


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None, reason="needs root and nsenter"
)
def test_view_opens_a_closed_folder_to_nobody_only_inside(open_dir):
    closed = open_dir / "closed"
    root = closed / "python"
    root.mkdir(parents=True)
    (root / "stdlib.py").write_text("ok")
    os.chmod(root / "stdlib.py", 0o644)
    os.chmod(closed, 0o700)
    (closed / "private.txt").write_text("secret")
    read = ["cat", str(root / "stdlib.py")]
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": [], "capture_output": True}
    assert subprocess.run(read, **as_nobody).returncode != 0  # closed on the machine
    view = RootView([str(root)], NOBODY, NOBODY)
    try:
        enter = ["nsenter", f"--mount={view.mount_ns}", "--setuid", str(NOBODY), "--setgid",
                 str(NOBODY), "--"]  # fmt: skip
        inside = subprocess.run([*enter, *read], capture_output=True, text=True)
        assert (inside.returncode, inside.stdout) == (0, "ok"), inside.stderr
        hidden = subprocess.run([*enter, "ls", str(closed)], capture_output=True, text=True)
        assert hidden.stdout.split() == ["python"]  # the rest of the closed folder is covered
        assert subprocess.run(read, **as_nobody).returncode != 0  # still closed outside
        assert view.alive()
    finally:
        view.close()
    assert not view.alive()
    assert view.plan == {str(closed): [str(root)]}


def test_view_needs_root():
    if os.geteuid() == 0:
        pytest.skip("runs as root")
    with pytest.raises(PermissionError, match="root"):
        RootView(["/usr/lib"], NOBODY, NOBODY)
