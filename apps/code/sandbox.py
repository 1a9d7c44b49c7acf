"""Run untrusted Python (model-written code + its tests) in a separate, limited process.

:func:`run_program` starts one fresh interpreter per program (``python -I -S -B``: no
environment variables, no user or site packages, no bytecode writes) with:

- a **fresh temporary working directory** (removed afterwards) holding ``program.py``;
- **resource limits** set before the program runs: address space (``memory_mb``), CPU
  seconds, size of any file it writes, open files, processes (``RLIMIT_NPROC``; the kernel
  does not apply it to root), no core dumps;
- a **new network namespace** when the kernel allows it (root or unprivileged user
  namespaces): only a loopback interface that is down, so no connection can leave;
- an **audit hook** (:mod:`apps.code.sandbox_child`) refusing new processes, signals,
  ``ctypes``, sockets, raising limits, and file writes / reads outside the working directory
  (reads of the Python installation itself stay allowed, for imports);
- a **wall-clock timeout** and an **output cap**, enforced by killing the whole process
  group (the program runs in its own session).

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
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("passed", "failed", "timeout", "error", "killed", "refused")
CHILD = Path(__file__).with_name("sandbox_child.py")
_EXIT_STATUS = {0: "passed", 1: "failed", 2: "error", 3: "killed", 4: "refused"}


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    Attributes:
        status: One of :data:`STATUSES`.
        stdout: Captured standard output (cut at the output cap).
        stderr: Captured standard error (cut at the output cap).
        elapsed: Wall-clock seconds from start to exit (or kill).
        returncode: The process's exit status (negative: killed by that signal).
        reason: Why it was stopped, when it was (``"refused os.fork"``, ``"output limit"``).
        network: ``"isolated"`` when it ran in its own network namespace, else ``"shared"``.
    """

    status: str
    stdout: str
    stderr: str
    elapsed: float
    returncode: int | None = None
    reason: str = ""
    network: str = "unknown"

    @property
    def passed(self) -> bool:
        """Whether the program ran to the end without an error."""
        return self.status == "passed"


def read_roots() -> list[str]:
    """Folders a sandboxed program may read: the Python installation (for imports)."""
    paths = sysconfig.get_paths()
    roots = {
        sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
        paths["stdlib"], paths["platstdlib"],
    }  # fmt: skip
    return sorted(os.path.realpath(r) for r in roots if r)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_program(
    source: str,
    timeout: float = 3.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1_000_000,
    max_file_bytes: int = 16_000_000,
    max_processes: int = 64,
    network_namespace: bool = True,
    audit: bool = True,
) -> SandboxResult:
    """Run ``source`` as ``__main__`` in a fresh sandboxed interpreter; never raises for it.

    Args:
        source: The program (e.g. a HumanEval prompt + completion + its tests).
        timeout: Wall-clock seconds before the process group is killed (``timeout``); the
            CPU-time limit is ``ceil(timeout) + 1`` seconds.
        memory_mb: Address-space limit of the process in MiB.
        max_output_bytes: stdout + stderr beyond this kill the program (``killed``).
        max_file_bytes: Largest file the program may write (in its working directory).
        max_processes: ``RLIMIT_NPROC`` (the kernel ignores it for root; the audit hook
            refuses process creation anyway).
        network_namespace: Enter a new, empty network namespace when possible.
        audit: Install the audit hook (turn off only to test the other layers).
    """
    if timeout <= 0 or memory_mb < 32 or max_output_bytes < 1:
        raise ValueError(
            f"run_program needs timeout > 0, memory_mb >= 32 and max_output_bytes >= 1; got "
            f"timeout={timeout}, memory_mb={memory_mb}, max_output_bytes={max_output_bytes}."
        )
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-"))
    root = os.path.realpath(workdir)
    report_r, report_w = os.pipe()
    try:
        (workdir / "program.py").write_text(source, encoding="utf-8")
        opts = {
            "report_fd": report_w, "root": root, "read_roots": read_roots(),
            "cpu_seconds": math.ceil(timeout) + 1, "memory_bytes": memory_mb * 2**20,
            "max_file_bytes": max_file_bytes, "max_processes": max_processes,
            "network_namespace": network_namespace, "audit": audit,
        }  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}  # fmt: skip
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(CHILD), json.dumps(opts)],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(report_w,), start_new_session=True,
        )  # fmt: skip
        os.close(report_w)
        report_w = -1
        out, err, stopped = _collect(proc, start + timeout, max_output_bytes)
        _kill_group(proc)  # anything it left behind in its group
        returncode = proc.wait()
        elapsed = time.monotonic() - start
        report = _read_all(report_r)
    finally:
        if report_w >= 0:
            os.close(report_w)
        os.close(report_r)
        shutil.rmtree(workdir, ignore_errors=True)
    network = "unknown"
    reason = stopped
    for line in report.splitlines():
        if line.startswith("network "):
            network = line.split(" ", 1)[1]
        elif line:
            reason = reason or line
    status = _status(returncode, stopped, report)
    text = {"stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}
    return SandboxResult(status, elapsed=elapsed, returncode=returncode, reason=reason,
                         network=network, **text)  # fmt: skip


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


def _read_all(fd: int) -> str:
    chunks = []
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
