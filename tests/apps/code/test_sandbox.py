"""Containment: each attack is stopped or refused with the right status; the parent lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apps.code.sandbox import STATUSES, run_program


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


def test_infinite_loop_times_out():
    r = run_program("while True:\n    pass\n", timeout=1.0)
    assert r.status == "timeout"
    assert 0.9 < r.elapsed < 5.0


def test_sleep_times_out():
    assert run_program("import time\ntime.sleep(60)\n", timeout=0.5).status == "timeout"


def test_memory_bomb_is_killed():
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", memory_mb=256)
    assert r.status == "killed"
    assert "memory" in r.reason
    assert run_program("x = bytearray(2**34)\n", memory_mb=256).status == "killed"


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


def test_writes_inside_the_working_directory_work():
    r = run_program("open('a.txt', 'w').write('hi')\nprint(open('a.txt').read())\n")
    assert (r.status, r.stdout) == ("passed", "hi\n")


def test_reading_other_files_is_refused():
    r = run_program("print(open('/etc/hostname').read())\n")
    assert r.status == "refused" and "/etc/hostname" in r.reason


def test_network_connection_is_refused():
    # Loopback and a documentation address (RFC 5737) only: nothing real is contacted.
    for src in (
        "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n",
        "import socket\ns = socket.socket()\ns.connect(('192.0.2.1', 80))\n",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')\n",
    ):
        r = run_program(src)  # fmt: skip
        assert r.status == "refused", (src, r)


def test_network_namespace_without_the_audit_hook():
    """The OS layer alone: inside the namespace no route leaves, even to loopback."""
    src = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
           "except OSError as e:\n    print(type(e).__name__, e.errno)\n")  # fmt: skip
    r = run_program(src, audit=False)
    if r.network != "isolated":
        pytest.skip("this kernel gives no network namespace to this user")
    assert r.status == "passed"
    assert r.stdout.startswith("OSError 101")  # ENETUNREACH: the namespace's lo is down


def test_fork_loop_is_refused_and_bounded():
    r = run_program("import os\nwhile True:\n    os.fork()\n", timeout=2.0, max_processes=16)
    assert r.status == "refused" and "os.fork" in r.reason
    for src in ("import subprocess\nsubprocess.run(['true'])\n", "import os\nos.system('true')\n",
                "import ctypes\nctypes.CDLL(None)\n"):  # fmt: skip
        assert run_program(src).status == "refused", src


def test_huge_output_is_capped_and_killed():
    r = run_program("print('x' * 100_000_000)\n", max_output_bytes=100_000)
    assert r.status == "killed" and r.reason == "output limit"
    assert len(r.stdout) <= 100_000


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
