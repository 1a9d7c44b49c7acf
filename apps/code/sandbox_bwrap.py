"""The kernel walls of the code sandbox: the bubblewrap command line, and whether it can start.

:func:`launch` builds the command that runs one program inside fresh namespaces with
bubblewrap (``bwrap``, from the ``bubblewrap`` Debian package):

- **user namespace**, unprivileged inside (uid/gid 65534, no capabilities, ``no_new_privs``)
  and not allowed to create further user namespaces; when this process is root, bubblewrap
  itself runs as uid 65534 (through ``nsenter``, see :mod:`apps.code.sandbox_rootview`), so
  the program is nobody outside its namespaces too and the kernel's ``RLIMIT_NPROC`` holds;
- **pid namespace**: ``/proc`` shows only the sandbox's processes; bubblewrap's init is pid
  1, and when the program's first process ends (or the parent kills bubblewrap) init is
  killed and the kernel kills every process left in the namespace;
- **network namespace** with only a loopback (nothing outside it is reachable; a listener
  on the machine's 127.0.0.1 is another namespace's), plus **ipc**, **uts** and **cgroup**
  namespaces;
- **mount namespace**: an empty read-only root holding only the Python installation and
  ``/usr/lib`` read-only, a fresh ``/proc`` and minimal ``/dev``, and size-capped private
  tmpfs folders for the working directory ``/sandbox`` and ``/tmp`` (nothing is written to
  the machine's disk; everything goes when the namespace does);
- a **seccomp filter** (:mod:`apps.code.sandbox_seccomp`).

Resource limits are set inside by :mod:`apps.code.sandbox_child` before the program runs.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from .sandbox_rootview import RootView
from .sandbox_seccomp import syscall_filter

BWRAP_ENV = "SPECIALIST_FINETUNERS_BWRAP"
SANDBOX_UID = SANDBOX_GID = 65534
WORKDIR = "/sandbox"  # the program's working directory inside the sandbox
CHILD_PATH = "/run/sandbox/child.py"
#: The program's environment (the interpreter runs with -I, so PYTHON* variables are ignored).
ENV = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": WORKDIR, "LANG": "C.UTF-8",
       "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}  # fmt: skip
#: The environment of bubblewrap itself (its init, pid 1 inside, is visible in /proc there).
LAUNCHER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class SandboxUnavailable(RuntimeError):
    """The kernel sandbox cannot start on this machine, and running unsandboxed was not allowed."""


def bwrap_path() -> str:
    """``$SPECIALIST_FINETUNERS_BWRAP``, else ``bwrap`` on ``PATH``, else ``/usr/bin/bwrap``."""
    return os.environ.get(BWRAP_ENV) or shutil.which("bwrap") or "/usr/bin/bwrap"


def interpreter() -> str:
    """The real (non-venv) interpreter the sandbox runs: only its standard library is needed."""
    return os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)


def python_roots() -> list[str]:
    """Folders of the Python installation, bound read-only at the same paths inside."""
    base = {
        "base": sys.base_prefix,
        "installed_base": sys.base_prefix,
        "platbase": sys.base_exec_prefix,
        "installed_platbase": sys.base_exec_prefix,
    }
    paths = sysconfig.get_paths(vars=base)  # the installation's, never a venv's site-packages
    found = {
        sys.base_prefix, sys.base_exec_prefix, paths["stdlib"], paths["platstdlib"],
        os.path.dirname(interpreter()),
    }  # fmt: skip
    roots = sorted({os.path.realpath(r) for r in found if r})
    return [r for r in roots if not any(r.startswith(p + "/") for p in roots if p != r)]


def _system_args() -> list[str]:
    """Shared libraries: ``/usr/lib*`` read-only; ``/lib*`` as on the machine (link or bind)."""
    args: list[str] = []
    for lib in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(lib):
            args += ["--ro-bind", lib, lib]
    for lib in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(lib):
            args += ["--symlink", os.readlink(lib), lib]
        elif os.path.isdir(lib):
            args += ["--ro-bind", lib, lib]
    return args


_VIEW_LOCK = threading.Lock()
_VIEW: list[RootView] = []


def _root_view() -> RootView:
    """The (one, lazily started) private mount namespace used when this process is root."""
    with _VIEW_LOCK:
        if not _VIEW or not _VIEW[0].alive():
            if _VIEW:
                _VIEW.pop().close()
            else:
                atexit.register(_close_root_view)
            _VIEW.append(RootView(python_roots(), SANDBOX_UID, SANDBOX_GID))
        return _VIEW[0]


def _close_root_view() -> None:
    with _VIEW_LOCK:
        while _VIEW:
            _VIEW.pop().close()


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, for bwrap to copy into the sandbox."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass
class Launch:
    """A ready command: run ``argv`` with ``pass_fds``; ``status_fd`` is bwrap's JSON status."""

    argv: list[str]
    pass_fds: tuple[int, ...]
    status_fd: int


@contextlib.contextmanager
def launch(
    source: str, child: bytes, command: list[str], disk_bytes: int, keep_fds: tuple[int, ...] = ()
) -> Iterator[Launch]:
    """The bubblewrap command that runs ``command`` in a fresh sandbox (its fds closed on exit).

    Args:
        source: The program, written to ``/sandbox/program.py`` (the working directory).
        child: The bytes of ``/run/sandbox/child.py`` (read-only inside).
        command: What to run inside (starting with :func:`interpreter`).
        disk_bytes: Size cap of each private tmpfs: ``/sandbox``, ``/tmp`` and ``/dev/shm``.
        keep_fds: Descriptors of the caller's that the program inherits (same numbers).
    """
    fds: list[int] = []
    try:
        fds.append(program_fd := _memfd("program", source.encode("utf-8")))
        fds.append(child_fd := _memfd("child", child))
        status_r, status_w = os.pipe()
        fds += [status_r, status_w]
        argv = [bwrap_path()]
        if os.geteuid() == 0:  # run bwrap itself as nobody, inside the root view
            nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
            argv = [nsenter, f"--mount={_root_view().mount_ns}", "--setuid", str(SANDBOX_UID),
                    "--setgid", str(SANDBOX_GID), "--", *argv]  # fmt: skip
        size = str(disk_bytes)
        argv += [
            "--unshare-all", "--unshare-user", "--disable-userns",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--cap-drop", "ALL",
            "--die-with-parent", "--new-session", "--hostname", "sandbox",
            *_system_args(),
            *[arg for root in python_roots() for arg in ("--ro-bind", root, root)],
            "--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev",
            "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", WORKDIR,
            "--file", str(program_fd), f"{WORKDIR}/program.py",
            "--perms", "0444", "--ro-bind-data", str(child_fd), CHILD_PATH,
            "--remount-ro", "/", "--chdir", WORKDIR, "--clearenv",
            *[arg for key, value in ENV.items() for arg in ("--setenv", key, value)],
            "--json-status-fd", str(status_w),
        ]  # fmt: skip
        passed = [program_fd, child_fd, status_w, *keep_fds]
        bpf = syscall_filter()
        if bpf is not None:
            fds.append(seccomp_fd := _memfd("seccomp", bpf))
            argv += ["--seccomp", str(seccomp_fd)]
            passed.append(seccomp_fd)
        yield Launch([*argv, "--", *command], tuple(passed), status_r)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def read_fd(fd: int) -> str:
    """What is waiting on a pipe, without blocking (for pipes whose writer has finished)."""
    chunks = []
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def setup_finished(status: str) -> bool:
    """Whether bwrap's JSON status says the sandbox was set up (it reports an exit code)."""
    return '"exit-code"' in status


_PROBES: dict[tuple[str, int], str] = {}
_PROBE_LOCK = threading.Lock()


def problem() -> str:
    """Why the kernel sandbox cannot start here ("" when it can); probed once per bwrap path."""
    key = (bwrap_path(), os.geteuid())
    with _PROBE_LOCK:
        if key not in _PROBES:
            _PROBES[key] = _probe()
        return _PROBES[key]


def _probe() -> str:
    """Start one sandbox running ``pass``; "" on success, else the reason it failed."""
    path = bwrap_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return f"bubblewrap not found at {path}"
    if os.geteuid() == 0 and shutil.which("nsenter") is None:
        return "nsenter (util-linux) not found"
    try:
        with launch("", b"", [interpreter(), "-I", "-S", "-c", "pass"], 1 << 20) as cmd:
            proc = subprocess.run(
                cmd.argv, pass_fds=cmd.pass_fds, stdin=subprocess.DEVNULL, capture_output=True,
                timeout=60, cwd="/", env=LAUNCHER_ENV,
            )  # fmt: skip
            status = read_fd(cmd.status_fd)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if proc.returncode == 0 and setup_finished(status):
        return ""
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return err[-1] if err else f"bubblewrap exited with status {proc.returncode}"
