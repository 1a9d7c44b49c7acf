"""When the parent runs as root: a mount namespace in which the sandbox's user can reach Python.

Why: the sandbox runs bubblewrap as an unprivileged user (uid 65534) so that, outside its
namespaces too, the program is nobody: the kernel then applies ``RLIMIT_NPROC`` (it exempts
root), and files it could reach by a kernel bug are checked against an unprivileged uid.
But an interpreter installed under ``/root`` (pyenv: ``/root/.pyenv/...``) is out of that
user's reach, because ``/root`` is mode 0700, and bubblewrap resolves bind sources as the
user it runs as.

:class:`RootView` starts one small helper process that enters a private mount namespace
(nothing it mounts is seen by the rest of the machine), covers each unsearchable folder on
the way to the interpreter with an empty tmpfs, and bind-mounts the interpreter's folders
back at their own paths. It then sleeps on its stdin; ``nsenter --mount=/proc/<pid>/ns/mnt``
starts bubblewrap inside that view. The helper exits when this process closes the pipe (or
exits), and the namespace goes with it. No file or mount on the machine is changed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Sequence

_HELPER = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
plan = json.loads(sys.argv[1])
os.umask(0o022)
check(libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
fds = {root: os.open(root, os.O_PATH | os.O_DIRECTORY) for roots in plan.values() for root in roots}
for cover, roots in plan.items():
    check(libc.mount(b"tmpfs", cover.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755"),
          f"tmpfs on {cover}")
    for root in roots:
        os.makedirs(root, exist_ok=True)
        check(libc.mount(f"/proc/self/fd/{fds[root]}".encode(), root.encode(), None,
                         MS_BIND | MS_REC, None), f"bind {root}")
print("ready", flush=True)
sys.stdin.read()
"""


def unsearchable_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The top-most folder on the way to ``path`` that ``uid``/``gid`` may not search, if any."""
    parts = os.path.realpath(path).strip("/").split("/")
    for depth in range(len(parts)):
        folder = "/" + "/".join(parts[:depth])
        st = os.stat(folder)
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None


def mount_plan(roots: Sequence[str], uid: int, gid: int) -> dict[str, list[str]]:
    """``{folder to cover: [roots to bind back under it]}`` for the roots ``uid`` cannot reach."""
    plan: dict[str, list[str]] = {}
    for root in sorted({os.path.realpath(r) for r in roots}):
        cover = unsearchable_ancestor(root, uid, gid)
        if cover is not None:
            plan.setdefault(cover, []).append(root)
    return plan


class RootView:
    """A live private mount namespace where ``roots`` are reachable by ``uid``/``gid``.

    Args:
        roots: Folders the unprivileged user must be able to read (the Python installation).
        uid: The unprivileged user id bubblewrap will run as.
        gid: Its group id.
    """

    def __init__(self, roots: Sequence[str], uid: int, gid: int) -> None:
        if os.geteuid() != 0:
            raise PermissionError("RootView is only needed (and only possible) as root.")
        self.plan = mount_plan(roots, uid, gid)
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER, json.dumps(self.plan)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
        )  # fmt: skip
        assert self._proc.stdout is not None and self._proc.stderr is not None
        if self._proc.stdout.readline() != b"ready\n":
            err = self._proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            self.close()
            raise OSError(f"could not prepare a mount namespace for the sandbox user: "
                          f"{err[-1] if err else 'the helper exited'}")  # fmt: skip

    @property
    def mount_ns(self) -> str:
        """The namespace file to give ``nsenter --mount=``."""
        return f"/proc/{self._proc.pid}/ns/mnt"

    def alive(self) -> bool:
        """Whether the helper (and with it the namespace) still exists."""
        return self._proc.poll() is None

    def close(self) -> None:
        """End the helper; the namespace is freed with it."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
