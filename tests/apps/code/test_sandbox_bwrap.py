"""Escape attempts against the kernel walls, with the audit hook off or switched off from inside.

Each attempt aims at an effect the test can see from outside the sandbox (a marker file on
the machine, a connection to a listener in this process, a secret of this process's
environment in the output, a process that outlives the run) and asserts that it did not
happen. Spawning processes inside the sandbox is allowed: they are inside the same walls.

Safety: every run passes ``allow_unsandboxed=False`` (a machine without the kernel sandbox
refuses instead of running these programs on the machine itself), and every attempt is
built to do no harm should a wall be missing: it only targets files, processes and sockets
this test made, and its bombs are bounded (a missing limit fails the test, it does not
take the machine down).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from apps.code import sandbox_bwrap
from apps.code.sandbox import SandboxResult, run_program

pytestmark = pytest.mark.skipif(
    sandbox_bwrap.problem() != "",
    reason=f"the kernel sandbox cannot start here: {sandbox_bwrap.problem()}",
)
SANDBOX_UID = sandbox_bwrap.SANDBOX_UID if os.geteuid() == 0 else os.geteuid()


def _run(source: str, **kwargs) -> SandboxResult:
    """Run with the audit hook off, inside the kernel sandbox only (never on the machine)."""
    result = run_program(source, **{"audit": False, **kwargs, "allow_unsandboxed": False})
    assert result.isolation == "kernel"
    return result


def _processes_named(comm: str) -> list[tuple[int, int]]:
    """(pid, real uid) of the machine's processes whose name is ``comm``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != comm:
                    continue
            with open(f"/proc/{pid}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        found.append((int(pid), uid))
    return found


class _Watch:
    """Polls the machine's processes named ``comm`` while a run is going on."""

    def __init__(self, comm: str) -> None:
        self.comm, self.most, self.uids, self._stop = comm, 0, set(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            procs = _processes_named(self.comm)
            self.most = max(self.most, len(procs))
            self.uids.update(uid for _pid, uid in procs)
            time.sleep(0.02)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _name_self(comm: str) -> str:
    """Program lines giving its process a name the test can find from outside."""
    return f"with open('/proc/self/comm', 'w') as _f:\n    _f.write({comm!r})\n"


@pytest.fixture
def listener():
    """A TCP listener on this machine's 127.0.0.1 and an abstract unix socket; no client may
    reach either from inside the sandbox."""
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    name = f"\0sandbox-test-{secrets.token_hex(4)}"
    unix.bind(name)
    for s in (tcp, unix):
        s.listen(8)
        s.setblocking(False)
    yield tcp.getsockname()[1], name
    ready, _, _ = select.select([tcp, unix], [], [], 0.3)
    tcp.close()
    unix.close()
    assert not ready, "a sandboxed program connected to a listener outside the sandbox"


_ATTEMPT = """
def attempt(tag, fn):
    try:
        fn()
        print(tag, "DONE", flush=True)
    except BaseException as e:
        print(tag, "held", type(e).__name__, flush=True)
"""


def _harm(tag: str, marker: str, port: int, unix_name: str) -> str:
    """A program that tries to write ``marker`` on the machine and reach the listeners."""
    return _ATTEMPT + (
        "import socket\n"
        f"print({tag!r}, 'ran', flush=True)\n"
        f"attempt({tag + ' write'!r}, lambda: open({marker!r}, 'w').write('x'))\n"
        f"attempt({tag + ' tcp'!r}, lambda: socket.create_connection(('127.0.0.1', {port}), 1))\n"
        f"attempt({tag + ' unix'!r},"
        f" lambda: socket.socket(socket.AF_UNIX).connect({unix_name!r}))\n"
    )  # fmt: skip


def test_spawned_processes_stay_inside(tmp_path, listener):
    """Every way to start a process: the children run, but inside the same walls."""
    port, unix_name = listener
    routes = {
        "subprocess": "subprocess.run([sys.executable, '-c', CODE], check=False)",
        "posix_spawn": "os.waitpid(os.posix_spawn(sys.executable, [sys.executable, '-c', CODE],"
                       " {}), 0)",
        "fork_exec": "os.waitpid(multiprocessing.util.spawnv_passfds("
                     "os.fsencode(sys.executable), [sys.executable, '-c', CODE], ()), 0)",
        "fork": "pid = os.fork()\nif pid == 0:\n    exec(CODE)\n    os._exit(0)\n"
                "os.waitpid(pid, 0)",
        "fork_execv": "pid = os.fork()\nif pid == 0:\n    os.execv(sys.executable,"
                      " [sys.executable, '-c', CODE])\nos.waitpid(pid, 0)",
        "mp_spawn": "p = multiprocessing.get_context('spawn').Process(target=exec, args=(CODE, {}))"
                    "\np.start()\np.join()",
        "mp_fork": "p = multiprocessing.get_context('fork').Process(target=exec, args=(CODE, {}))"
                   "\np.start()\np.join()",
        "os_system": "print('os_system status', os.system(f'{sys.executable} -c \"pass\"'))",
    }  # fmt: skip
    source = "import os, sys, subprocess, multiprocessing, multiprocessing.util\n"
    for tag, route in routes.items():
        code = _harm(tag, str(tmp_path / f"{tag}.marker"), port, unix_name)
        body = "".join(f"    {line}\n" for line in route.split("\n"))
        source += f"CODE = {code!r}\ntry:\n{body}"
        source += f"except Exception as e:\n    print({tag!r}, 'could not start', repr(e))\n"
    r = _run(source, timeout=20.0)
    assert r.status == "passed", r
    for tag in ("subprocess", "posix_spawn", "fork_exec", "fork", "fork_execv", "mp_fork"):
        assert f"{tag} ran" in r.stdout, (tag, r.stdout, r.stderr)
    assert " DONE" not in r.stdout, r.stdout
    assert not list(tmp_path.iterdir())


def test_files_outside_the_working_directory_are_out_of_reach():
    """Reads and writes by every file API, dir_fd and links included, reach nothing.

    The machine's files are open to anyone here (a world-readable secret in a world-writable
    folder), so only the mount namespace stands in the way. The only machine folders inside
    are read-only (the Python installation, /usr/lib); the victim is a file this test
    creates there and removes again.
    """
    token, content = secrets.token_hex(8), secrets.token_hex(16)  # a name, a secret
    shared = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    shared.chmod(0o777)
    secret = shared / "secret.txt"
    secret.write_text(content)
    secret.chmod(0o644)
    shadow = Path("/etc/shadow").read_text() if os.access("/etc/shadow", os.R_OK) else ""
    stdlib = os.path.dirname(os.__file__)
    victim = os.path.join(stdlib, f"sandbox-victim-{token}.txt")  # exists, must stay as is
    targets = [str(shared / "escaped.txt"), os.path.join(stdlib, f"sandbox-escape-{token}"),
               f"/usr/lib/sandbox-escape-{token}", f"/sandbox-escape-{token}"]  # fmt: skip
    src = (
        _ATTEMPT
        + f"""
import os, shutil, pathlib
SECRET, VICTIM, TARGETS = {str(secret)!r}, {victim!r}, {targets!r}
def dir_fd_read(path):
    fd = os.open('/', os.O_RDONLY | os.O_DIRECTORY)
    print(os.read(os.open(path.lstrip('/'), os.O_RDONLY, dir_fd=fd), 4096))
def dir_fd_write(path):
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    os.write(os.open(os.path.basename(path), os.O_WRONLY | os.O_CREAT, dir_fd=fd), b'x')
def via_symlink(path, link, mode):
    os.symlink(path, link)
    with open(link, mode) as f:
        print(f.read() if mode == 'r' else f.write('x'))
for path in (SECRET, '/etc/shadow', '/proc/1/root' + SECRET, '/proc/self/root' + SECRET):
    attempt('read ' + path, lambda: print(open(path).read()))
    attempt('read dir_fd ' + path, lambda: dir_fd_read(path))
    attempt('read pathlib ' + path, lambda: print(pathlib.Path(path).read_text()))
attempt('read symlink', lambda: via_symlink(SECRET, 'rlink', 'r'))
attempt('read hardlink', lambda: (os.link(SECRET, 'hard'), print(open('hard').read())))
attempt('copy in', lambda: (shutil.copy(SECRET, 'copy'), print(open('copy').read())))
for path in TARGETS:
    attempt('write ' + path, lambda: open(path, 'w').write('x'))
    attempt('write dir_fd ' + path, lambda: dir_fd_write(path))
    attempt('write pathlib ' + path, lambda: pathlib.Path(path).write_text('x'))
    attempt('mkdir ' + path, lambda: os.mkdir(path))
attempt('write symlink', lambda: via_symlink(TARGETS[0], 'wlink', 'w'))
attempt('rename out', lambda: (open('mine', 'w').write('x'), os.rename('mine', TARGETS[0])))
attempt('copy out', lambda: (open('mine2', 'w').write('x'), shutil.copy('mine2', TARGETS[0])))
attempt('overwrite victim', lambda: open(VICTIM, 'w').write('x'))
attempt('chmod victim', lambda: os.chmod(VICTIM, 0o777))
attempt('rename victim', lambda: os.rename(VICTIM, VICTIM + '.moved'))
attempt('remove victim', lambda: os.remove(VICTIM))
open('inside.txt', 'w').write('fine')
print(open('inside.txt').read(), open(VICTIM).read())
"""
    )
    with open(victim, "w") as f:
        f.write("victim")
    os.chmod(victim, 0o644)
    try:
        r = _run(src, timeout=10.0)
        assert r.status == "passed", r
        assert content not in r.stdout and content not in r.stderr
        if shadow:
            assert shadow.splitlines()[0] not in r.stdout
        assert " DONE" not in r.stdout, r.stdout
        assert "fine victim" in r.stdout  # the working directory is writable; the victim seen
        assert not [t for t in targets if os.path.exists(t)]
        assert Path(victim).read_text() == "victim" and os.stat(victim).st_mode & 0o777 == 0o644
    finally:
        shutil.rmtree(shared)
        for path in [victim, victim + ".moved", *targets[1:]]:
            with contextlib.suppress(OSError):
                os.remove(path) if not os.path.isdir(path) else os.rmdir(path)


def test_no_other_process_is_visible(monkeypatch):
    """/proc shows only the sandbox: no parent, no neighbour, no environment to steal."""
    secret = secrets.token_hex(16)
    monkeypatch.setenv("SANDBOX_TEST_SECRET", secret)  # would reach a launcher that inherits env
    neighbour = subprocess.Popen(["sleep", "30"], env={"SANDBOX_TEST_SECRET": secret})
    try:
        src = (
            _ATTEMPT
            + f"""
import json, os
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print('pids', json.dumps(pids), 'ppid', os.getppid())
for pid in pids + [{os.getpid()}, {neighbour.pid}, {os.getppid()}]:
    for what in ('environ', 'cmdline'):
        attempt(f'{{pid}} {{what}}', lambda: print(open(f'/proc/{{pid}}/{{what}}', 'rb').read()))
"""
        )
        r = _run(src)
    finally:
        neighbour.kill()
        neighbour.wait()
    assert r.status == "passed", r
    assert secret not in r.stdout and secret not in r.stderr
    pids = json.loads(r.stdout.split("pids ", 1)[1].split(" ppid", 1)[0])
    assert max(pids) < 10 and neighbour.pid not in pids and os.getpid() not in pids
    assert f"{neighbour.pid} environ held" in r.stdout


def test_network_and_setns(listener):
    """No route to the machine's loopback, not even after setns into another namespace."""
    port, unix_name = listener
    src = (
        _ATTEMPT
        + f"""
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def setns(path):
    fd = os.open(path, os.O_RDONLY)
    if libc.setns(fd, 0) != 0:
        raise OSError(ctypes.get_errno(), 'setns ' + path)
for path in ('/proc/1/ns/net', '/proc/{os.getpid()}/ns/net', '/proc/1/ns/user', '/proc/1/ns/mnt'):
    attempt('setns ' + path, lambda: setns(path))
attempt('tcp', lambda: socket.create_connection(('127.0.0.1', {port}), 1))
attempt('tcp6', lambda: socket.create_connection(('::1', {port}), 1))
attempt('unix', lambda: socket.socket(socket.AF_UNIX).connect({unix_name!r}))
def unshare(flags):
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), 'unshare')
attempt('unshare user', lambda: unshare(0x10000000))
attempt('unshare net', lambda: unshare(0x40000000))
print('hostname', socket.gethostname())
"""
    )
    r = _run(src)
    assert r.status == "passed", r
    assert " DONE" not in r.stdout, r.stdout
    assert "hostname sandbox" in r.stdout


def test_privileges_inside_and_outside():
    """Nobody inside (no capabilities, no_new_privs, seccomp) and nobody outside too."""
    comm = f"sbx{secrets.token_hex(5)}"
    src = _name_self(comm) + (
        "import os, time\n"
        "status = open('/proc/self/status').read()\n"
        "print(os.getuid(), os.getgid(), os.getgroups())\n"
        "print(status)\n"
        "time.sleep(0.5)\n"
    )
    with _Watch(comm) as watch:
        r = _run(src)
    assert r.status == "passed", r
    assert r.stdout.startswith(f"{sandbox_bwrap.SANDBOX_UID} {sandbox_bwrap.SANDBOX_GID} []")
    for line in ("CapEff:\t0000000000000000", "CapPrm:\t0000000000000000",
                 "CapBnd:\t0000000000000000", "NoNewPrivs:\t1"):  # fmt: skip
        assert line in r.stdout, line
    if sandbox_bwrap.syscall_filter() is not None:
        assert "Seccomp:\t2" in r.stdout
    assert watch.most == 1 and watch.uids == {SANDBOX_UID}


@pytest.mark.parametrize("ending", ["exit", "timeout"])
def test_detached_children_die_with_the_run(ending):
    """setsid + double fork, signals ignored: every descendant is gone when the run ends."""
    comm = f"sbx{secrets.token_hex(5)}"
    src = _name_self(comm) + (
        "import os, signal, time\n"
        "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
        "    signal.signal(sig, signal.SIG_IGN)\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(20)\n"
        "        os._exit(0)\n"
        "time.sleep(0.6)\n"
        + ("while True:\n    pass\n" if ending == "timeout" else "")
    )  # fmt: skip
    with _Watch(comm) as watch:
        r = _run(src, timeout=1.5)
    assert r.status == ("passed" if ending == "exit" else "timeout"), r
    assert watch.most >= 3  # the program and its two grandchildren did run
    deadline = time.monotonic() + 1.0
    while _processes_named(comm) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_named(comm) == []


def test_process_limit_holds_and_everything_is_cleaned_up():
    """A (bounded) fork bomb: 40 processes asked for, at most ``max_processes`` get through."""
    comm = f"sbx{secrets.token_hex(5)}"
    src = _name_self(comm) + (
        "import os, time\nmade = 0\n"
        "for _ in range(40):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        continue\n"
        "    if pid == 0:\n        time.sleep(20)\n        os._exit(0)\n"
        "    made += 1\n"
        "print('made', made, flush=True)\ntime.sleep(20)\n"
    )  # fmt: skip
    with _Watch(comm) as watch:
        r = _run(src, timeout=1.5, max_processes=8)
    assert r.status == "timeout", r
    made = int(r.stdout.split("made ", 1)[1].split()[0])
    assert 1 <= made <= 7 and watch.most <= 8, (made, watch.most)
    time.sleep(0.2)
    assert _processes_named(comm) == []


def test_memory_limit_and_output_cap():
    big = "x = []\nfor _ in range(300):\n    x.append(bytearray(10**7))\n"  # 3 GB at most
    r = _run(big, memory_mb=256)
    assert r.status == "killed" and "memory" in r.reason, r
    flood = "import os\nos.fork()\nfor _ in range(20_000):\n    print('x' * 10_000)\n"
    r = _run(flood, max_output_bytes=100_000)
    assert r.status == "killed" and r.reason == "output limit" and len(r.stdout) <= 100_000


def test_ignored_signals_and_kills_aimed_outside():
    """A program ignoring every signal still ends at the timeout, and its kills reach only
    its own namespace: a neighbour with the same uid outside is untouched."""
    neighbour = subprocess.Popen(
        ["sleep", "30"], start_new_session=True,
        **({"user": SANDBOX_UID, "extra_groups": []} if os.geteuid() == 0 else {}),
    )  # fmt: skip
    stubborn = (
        "import os, signal\n"
        "for sig in range(1, signal.NSIG):\n"
        "    try:\n        signal.signal(sig, signal.SIG_IGN)\n"
        "    except (OSError, ValueError):\n        pass\n"
        f"for pid in ({neighbour.pid},):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        f"try:\n    os.killpg({neighbour.pid}, signal.SIGKILL)\nexcept OSError:\n    pass\n"
        "while True:\n    pass\n"
    )  # fmt: skip
    try:
        r = _run(stubborn, timeout=1.0)
        assert r.status == "timeout" and r.elapsed < 3.0, r
        assert neighbour.poll() is None
    finally:
        neighbour.kill()
        neighbour.wait()


def test_switching_the_audit_hook_off_from_inside_changes_nothing(tmp_path, listener):
    """The hook is reachable from the program; with it disarmed, the kernel still holds."""
    port, unix_name = listener
    marker = str(tmp_path / "hook.marker")
    src = (
        "import sys\n"
        "child = sys.modules['__main__']\n"  # the sandbox's own first module
        "child.BLOCKED = frozenset()\n"
        "child.PATH_WRITES.clear()\n"
        "child._within = lambda path, root: True\n"
        "import subprocess\n"
        f"CODE = {_harm('hookless', marker, port, unix_name)!r}\n"
        "subprocess.run([sys.executable, '-c', CODE])\n"
        "exec(CODE)\n"
    )
    r = _run(src, audit=True)  # the hook is on, then switched off
    assert r.status == "passed", r
    assert r.stdout.count("hookless ran") == 2 and " DONE" not in r.stdout, r.stdout
    assert not os.path.exists(marker)


def test_launcher_environment_is_not_the_parents(monkeypatch):
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "do-not-leak")
    r = _run("import os\nprint(dict(os.environ))\nprint(open('/proc/1/environ').read())\n")
    assert r.status == "passed", r
    assert "do-not-leak" not in r.stdout
