"""Run untrusted Python (model-written code + its tests) inside a kernel sandbox.

:func:`run_program` runs each program in a fresh ``python -I -S -B`` inside fresh kernel
namespaces made by bubblewrap (:mod:`apps.code.sandbox_bwrap`): unprivileged user, own pid
namespace, no network, a read-only system with only the Python installation in it, private
size-capped ``/sandbox`` (the working directory) and ``/tmp``, and a seccomp filter. Inside,
:mod:`apps.code.sandbox_child` sets resource limits (address space, CPU seconds, file size,
processes, open files, no core dumps) and installs an audit hook that stops what a test
program has no business doing with a clear ``refused`` status. The hook is a friendly early
error only: a program can switch it off, and the walls above still hold. The parent keeps a
wall-clock timeout and an output cap; when the run ends, the sandbox's pid namespace is
torn down, which kills every process the program started.

When the kernel sandbox cannot start (no ``bwrap``, no user namespaces), :func:`run_program`
raises :class:`SandboxUnavailable` unless the caller opts in to running generated code with
only the in-process layers (``allow_unsandboxed=True`` or
``SPECIALIST_FINETUNERS_ALLOW_UNSANDBOXED_CODE=1``), as bigcode's ``--allow_code_execution``.

Statuses: ``passed`` (exit 0), ``failed`` (an ``AssertionError`` / non-zero exit),
``error`` (any other exception), ``timeout`` (wall clock or CPU limit), ``killed`` (memory
limit, output cap, or a signal), ``refused`` (the audit hook stopped an operation).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import sandbox_bwrap
from .sandbox_bwrap import SandboxUnavailable

__all__ = [
    "ALLOW_ENV", "STATUSES", "SandboxResult", "SandboxUnavailable", "check_sandbox",
    "run_program", "unsandboxed_allowed",
]  # fmt: skip

STATUSES = ("passed", "failed", "timeout", "error", "killed", "refused")
CHILD = Path(__file__).with_name("sandbox_child.py")
ALLOW_ENV = "SPECIALIST_FINETUNERS_ALLOW_UNSANDBOXED_CODE"
_EXIT_STATUS = {0: "passed", 1: "failed", 2: "error", 3: "killed", 4: "refused"}


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    Attributes:
        status: One of :data:`STATUSES`.
        stdout: Captured standard output (cut at the output cap).
        stderr: Captured standard error (cut at the output cap).
        elapsed: Wall-clock seconds from start to exit (or kill).
        returncode: The program's exit status (negative: killed by that signal).
        reason: Why it was stopped, when it was (``"refused os.fork"``, ``"output limit"``).
        network: ``"isolated"`` when it ran in its own network namespace, else ``"shared"``.
        isolation: ``"kernel"`` (bubblewrap namespaces) or ``"unsandboxed"`` (opted in).
    """

    status: str
    stdout: str
    stderr: str
    elapsed: float
    returncode: int | None = None
    reason: str = ""
    network: str = "unknown"
    isolation: str = "kernel"

    @property
    def passed(self) -> bool:
        """Whether the program ran to the end without an error."""
        return self.status == "passed"


def unsandboxed_allowed(allow: bool | None = None) -> bool:
    """``allow`` if given, else whether ``$SPECIALIST_FINETUNERS_ALLOW_UNSANDBOXED_CODE`` is 1."""
    if allow is not None:
        return allow
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def check_sandbox(allow_unsandboxed: bool | None = None) -> str:
    """How programs will run here: ``"kernel"``, or ``"unsandboxed"`` when allowed.

    Call it before expensive work (sampling) so a machine without the kernel sandbox fails
    at once. Raises :class:`SandboxUnavailable` (why, and how to fix it or opt in) when the
    kernel sandbox cannot start and running without it was not allowed.
    """
    why = sandbox_bwrap.problem()
    if not why:
        return "kernel"
    if unsandboxed_allowed(allow_unsandboxed):
        warnings.warn(
            f"running generated code WITHOUT the kernel sandbox ({why}); only resource "
            "limits and an audit hook the program can switch off stand in its way",
            RuntimeWarning, stacklevel=2,
        )  # fmt: skip
        return "unsandboxed"
    raise SandboxUnavailable(
        f"Refusing to run generated code: the kernel sandbox could not start ({why}). Fix: "
        "install bubblewrap (`make install`, or `apt-get install bubblewrap`) on a kernel "
        "that allows user namespaces (`sysctl user.max_user_namespaces=15000`; on Ubuntu also "
        "`kernel.apparmor_restrict_unprivileged_userns=0`), or accept the risk with "
        f"run_program(..., allow_unsandboxed=True) / {ALLOW_ENV}=1."
    )


@dataclass
class _Command:
    argv: list[str]
    pass_fds: tuple[int, ...]
    cwd: str
    env: dict[str, str]
    status_fd: int | None  # bwrap's JSON status (kernel sandbox only)


@contextlib.contextmanager
def _kernel_command(source: str, opts: dict, disk_bytes: int) -> Iterator[_Command]:
    opts = {**opts, "root": sandbox_bwrap.WORKDIR, "network": "kernel"}
    command = [sandbox_bwrap.interpreter(), "-I", "-S", "-B", sandbox_bwrap.CHILD_PATH,
               json.dumps(opts)]  # fmt: skip
    with sandbox_bwrap.launch(source, CHILD.read_bytes(), command, disk_bytes,
                              keep_fds=(opts["report_fd"],)) as cmd:  # fmt: skip
        yield _Command(cmd.argv, cmd.pass_fds, "/", sandbox_bwrap.LAUNCHER_ENV, cmd.status_fd)


@contextlib.contextmanager
def _unsandboxed_command(source: str, opts: dict, network: bool) -> Iterator[_Command]:
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-"))
    root = os.path.realpath(workdir)
    try:
        (workdir / "program.py").write_text(source, encoding="utf-8")
        opts = {**opts, "root": root, "network": "try" if network else "off"}
        env = {**sandbox_bwrap.ENV, "HOME": root, "TMPDIR": root}
        argv = [sys.executable, "-I", "-S", "-B", str(CHILD), json.dumps(opts)]
        yield _Command(argv, (opts["report_fd"],), root, env, None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_program(
    source: str,
    timeout: float = 3.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1_000_000,
    max_file_bytes: int = 16_000_000,
    max_processes: int = 16,
    network_namespace: bool = True,
    audit: bool = True,
    allow_unsandboxed: bool | None = None,
    max_disk_bytes: int = 64_000_000,
) -> SandboxResult:
    """Run ``source`` as ``__main__`` in a fresh sandboxed interpreter; never raises for it.

    Args:
        source: The program (e.g. a HumanEval prompt + completion + its tests).
        timeout: Wall-clock seconds before the sandbox is killed (``timeout``); the CPU-time
            limit is ``ceil(timeout) + 1`` seconds.
        memory_mb: Address-space limit of each process in MiB.
        max_output_bytes: stdout + stderr beyond this kill the program (``killed``).
        max_file_bytes: Largest file the program may write.
        max_processes: ``RLIMIT_NPROC``: processes and threads of the sandbox's user (the
            kernel enforces it in the kernel sandbox, which never runs the program as root).
        network_namespace: Unsandboxed mode only: try a new, empty network namespace (the
            kernel sandbox always has its own).
        audit: Install the audit hook (turn off only to test the kernel walls alone).
        allow_unsandboxed: Run anyway when the kernel sandbox cannot start (default: the
            ``SPECIALIST_FINETUNERS_ALLOW_UNSANDBOXED_CODE`` environment variable).
        max_disk_bytes: Size cap of each private tmpfs (``/sandbox``, ``/tmp``, ``/dev/shm``).

    Raises:
        SandboxUnavailable: The kernel sandbox cannot start and running without it was not
            allowed; or it failed to set up for this run.
        ValueError: A limit out of range.
    """
    if timeout <= 0 or memory_mb < 32 or max_output_bytes < 1 or max_processes < 2:
        raise ValueError(
            f"run_program needs timeout > 0, memory_mb >= 32, max_output_bytes >= 1 and "
            f"max_processes >= 2; got timeout={timeout}, memory_mb={memory_mb}, "
            f"max_output_bytes={max_output_bytes}, max_processes={max_processes}."
        )
    isolation = check_sandbox(allow_unsandboxed)
    report_r, report_w = os.pipe()
    opts = {
        "report_fd": report_w, "read_roots": sandbox_bwrap.python_roots(),
        "cpu_seconds": math.ceil(timeout) + 1, "memory_bytes": memory_mb * 2**20,
        "max_file_bytes": max_file_bytes, "max_processes": max_processes, "audit": audit,
    }  # fmt: skip
    if isolation == "kernel":
        context = _kernel_command(source, opts, max_disk_bytes)
    else:
        context = _unsandboxed_command(source, opts, network_namespace)
    status = ""
    try:
        with context as cmd:
            start = time.monotonic()
            proc = subprocess.Popen(
                cmd.argv, cwd=cmd.cwd, env=cmd.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=cmd.pass_fds,
                start_new_session=True,
            )  # fmt: skip
            os.close(report_w)
            report_w = -1
            out, err, stopped = _collect(proc, start + timeout, max_output_bytes)
            _kill_group(proc)  # the launcher: the sandbox's init and everything inside die too
            returncode = proc.wait()
            elapsed = time.monotonic() - start
            report = sandbox_bwrap.read_fd(report_r)
            if cmd.status_fd is not None:
                status = sandbox_bwrap.read_fd(cmd.status_fd)
    finally:
        if report_w >= 0:
            os.close(report_w)
        os.close(report_r)
    text = {"stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}
    if isolation == "kernel":
        if not stopped and not sandbox_bwrap.setup_finished(status):
            last = text["stderr"].strip().splitlines()
            raise SandboxUnavailable(
                f"The kernel sandbox failed to start this program "
                f"({last[-1] if last else f'exit status {returncode}'}); run "
                f"apps.code.sandbox.check_sandbox() for a diagnosis."
            )
        if returncode > 128:  # bwrap reports death by signal n as 128 + n
            returncode = -(returncode - 128)
    network = "isolated" if isolation == "kernel" else "unknown"
    reason = stopped
    for line in report.splitlines():
        if line.startswith("network "):
            network = line.split(" ", 1)[1]
        elif line:
            reason = reason or line
    return SandboxResult(
        _status(returncode, stopped, report), elapsed=elapsed, returncode=returncode,
        reason=reason, network=network, isolation=isolation, **text,
    )  # fmt: skip


def _status(returncode: int, stopped: str, report: str) -> str:
    if stopped == "timeout":
        return "timeout"
    if stopped:
        return "killed"
    if "\nrefused " in f"\n{report}":
        return "refused"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and "memory" not in report:
        # The CPU limit sends SIGXCPU, then SIGKILL at the hard limit.
        return "timeout" if returncode == -signal.SIGXCPU else "killed"
    if returncode < 0:
        return "killed"
    return _EXIT_STATUS.get(returncode, "error")


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, str]:
    """Read stdout/stderr until exit, the deadline or the cap; returns (out, err, stop)."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for stream in bufs:
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ)
    stopped, total = "", 0
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = "timeout"
                break
            for key, _ in sel.select(timeout=min(left, 0.25)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                room = cap - total
                buf += chunk[:room]
                total += len(chunk)
                if total > cap:
                    stopped = "output limit"
                    break
            if stopped:
                break
        if not stopped:
            left = deadline - time.monotonic()
            try:
                proc.wait(timeout=max(left, 0))
            except subprocess.TimeoutExpired:
                stopped = "timeout"
    finally:
        if stopped:
            _kill_group(proc)
        sel.close()
        for stream in bufs:
            stream.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), stopped
