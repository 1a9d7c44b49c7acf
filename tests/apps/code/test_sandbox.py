"""The sandbox's API: statuses, limits, the audit hook's friendly refusals, and the refusal to
run generated code when the kernel sandbox cannot start (escapes: test_sandbox_bwrap.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from apps.code import sandbox_bwrap
from apps.code.sandbox import (
    ALLOW_ENV,
    STATUSES,
    SandboxUnavailable,
    check_sandbox,
    run_program,
    unsandboxed_allowed,
)

from .conftest import kernel


@kernel
def test_statuses_of_ordinary_programs():
    ok = run_program("print('hello')\nassert 1 + 1 == 2\n")
    assert (ok.status, ok.stdout, ok.returncode) == ("passed", "hello\n", 0)
    assert ok.elapsed > 0 and ok.status in STATUSES
    assert run_program("assert 1 == 2\n").status == "failed"
    assert run_program("raise SystemExit(3)\n").status == "failed"
    assert run_program("raise SystemExit(0)\n").status == "passed"
    err = run_program("1 / 0\n")
    assert err.status == "error" and "ZeroDivisionError" in err.stderr
    assert run_program("def f(:\n").status == "error"


@kernel
def test_infinite_loop_times_out():
    r = run_program("while True:\n    pass\n", timeout=1.0)
    assert r.status == "timeout"
    assert 0.9 < r.elapsed < 5.0


@kernel
def test_sleep_times_out():
    assert run_program("import time\ntime.sleep(60)\n", timeout=0.5).status == "timeout"


@kernel
def test_memory_bomb_is_killed():
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", memory_mb=256)
    assert r.status == "killed"
    assert "memory" in r.reason
    assert run_program("x = bytearray(2**34)\n", memory_mb=256).status == "killed"


@kernel
def test_write_outside_the_working_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for src in (f"open({str(target)!r}, 'w').write('x')\n",
                f"import os\nos.remove({str(Path(__file__))!r})\n",
                "open('../escaped.txt', 'a').write('x')\n",
                f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n"):  # fmt: skip
        r = run_program(src)
        assert r.status == "refused", (src, r)
        assert "outside the working directory" in r.reason
    assert not target.exists() and Path(__file__).exists()


@kernel
def test_writes_inside_the_working_directory_work():
    r = run_program("open('a.txt', 'w').write('hi')\nprint(open('a.txt').read())\n")
    assert (r.status, r.stdout) == ("passed", "hi\n")


@kernel
def test_reading_other_files_is_refused():
    r = run_program("print(open('/etc/hostname').read())\n")
    assert r.status == "refused" and "/etc/hostname" in r.reason


@kernel
def test_network_connection_is_refused():
    # Loopback and a documentation address (RFC 5737) only: nothing real is contacted.
    for src in (
        "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n",
        "import socket\ns = socket.socket()\ns.connect(('192.0.2.1', 80))\n",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')\n",
    ):
        r = run_program(src)  # fmt: skip
        assert r.status == "refused", (src, r)


@kernel
def test_network_namespace_without_the_audit_hook():
    """The kernel layer alone: a loopback of its own, where nothing listens."""
    src = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
           "except OSError as e:\n    print(type(e).__name__, e.errno)\n")  # fmt: skip
    r = run_program(src, audit=False)
    assert (r.status, r.network, r.isolation) == ("passed", "isolated", "kernel")
    assert r.stdout.startswith("ConnectionRefusedError 111")


@kernel
def test_fork_loop_is_refused_and_bounded():
    r = run_program("import os\nwhile True:\n    os.fork()\n", timeout=2.0, max_processes=16)
    assert r.status == "refused" and "os.fork" in r.reason
    for src in ("import subprocess\nsubprocess.run(['true'])\n", "import os\nos.system('true')\n",
                "import ctypes\nctypes.CDLL(None)\n"):  # fmt: skip
        assert run_program(src).status == "refused", src


@kernel
def test_huge_output_is_capped_and_killed():
    r = run_program("print('x' * 100_000_000)\n", max_output_bytes=100_000)
    assert r.status == "killed" and r.reason == "output limit"
    assert len(r.stdout) <= 100_000


@kernel
def test_parent_survives_everything():
    pid = os.getpid()
    for src in (
        "import os\nos.kill(os.getppid(), 9)\n",
        "import os\nos.killpg(0, 9)\n",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",
    ):
        assert run_program(src).status == "refused", src  # fmt: skip
    assert os.getpid() == pid
    assert run_program("print(1)\n").passed


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout"):
        run_program("pass", timeout=0)
    with pytest.raises(ValueError, match="max_processes"):
        run_program("pass", max_processes=1)


@pytest.fixture
def no_bwrap(monkeypatch):
    """The kernel sandbox made unavailable: bwrap pointed at a missing file, no opt-in."""
    monkeypatch.setenv(sandbox_bwrap.BWRAP_ENV, "/nonexistent/bwrap")
    monkeypatch.delenv(ALLOW_ENV, raising=False)


@pytest.mark.usefixtures("no_bwrap")
def test_refuses_to_run_without_the_kernel_sandbox(tmp_path):
    marker = tmp_path / "ran.txt"
    with pytest.raises(SandboxUnavailable) as info:
        run_program(f"open({str(marker)!r}, 'w').write('x')\n", audit=False)
    message = str(info.value)
    assert "\n" not in message
    for part in ("bubblewrap not found at /nonexistent/bwrap", "apt-get install bubblewrap",
                 "user namespaces", "allow_unsandboxed=True", f"{ALLOW_ENV}=1"):  # fmt: skip
        assert part in message, part
    assert not marker.exists()
    with pytest.raises(SandboxUnavailable):
        check_sandbox()


def test_refusal_names_why_bwrap_failed(monkeypatch):
    """A bwrap that cannot create namespaces: its own error is in the message."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-fake-bwrap-"))
    fake = folder / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    folder.chmod(0o755)
    monkeypatch.setenv(sandbox_bwrap.BWRAP_ENV, str(fake))
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    try:
        with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace"):
            run_program("print(1)\n")
    finally:
        fake.unlink()
        folder.rmdir()


@pytest.mark.usefixtures("no_bwrap")
def test_opting_in_runs_without_the_kernel_sandbox(monkeypatch):
    """Benign programs only: the opt-in runs them on the machine, with the old layers."""
    with pytest.warns(RuntimeWarning, match="WITHOUT the kernel sandbox"):
        r = run_program("print('hello')\n", allow_unsandboxed=True)
    assert (r.status, r.stdout, r.isolation) == ("passed", "hello\n", "unsandboxed")
    monkeypatch.setenv(ALLOW_ENV, "1")
    with pytest.warns(RuntimeWarning):
        r = run_program("print(open('/etc/hostname').read())\n")
    assert (r.status, r.isolation) == ("refused", "unsandboxed")  # the hook still says no
    with pytest.raises(SandboxUnavailable):  # an explicit False wins over the variable
        run_program("print(1)\n", allow_unsandboxed=False)


def test_opt_in_parsing(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    assert not unsandboxed_allowed()
    for value, expected in (("1", True), ("true", True), ("YES", True), ("0", False), ("", False)):
        monkeypatch.setenv(ALLOW_ENV, value)
        assert unsandboxed_allowed() is expected, value
    assert unsandboxed_allowed(False) is False and unsandboxed_allowed(True) is True
