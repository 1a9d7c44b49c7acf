"""The seccomp filter: its decisions (run by a classic-BPF interpreter), its system-call numbers
(against the kernel headers), and its effect inside the sandbox."""

from __future__ import annotations

import platform
import re
import struct
from pathlib import Path

import pytest

from apps.code import sandbox_bwrap
from apps.code.sandbox import run_program
from apps.code.sandbox_seccomp import (
    ARCHES,
    DENIED,
    EAFNOSUPPORT,
    ENOSYS,
    EPERM,
    RET_ALLOW,
    RET_KILL_PROCESS,
    SOCKET_CALLS,
    syscall_filter,
    syscall_numbers,
)

GETPID = {"x86_64": 39, "aarch64": 172}
HEADERS = {
    "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),
}


def _errno(value: int) -> int:
    return 0x00050000 | value


def _decide(prog: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Run the classic-BPF program on one ``seccomp_data`` (the four opcodes it uses)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    pc, acc = 0, 0
    for _ in range(len(insns)):
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld [k]
            acc, pc = struct.unpack_from("=I", data, k)[0], pc + 1
        elif code == 0x15:  # jeq
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x35:  # jge
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x06:  # ret
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("the filter ran off its end")


@pytest.mark.parametrize("machine", list(ARCHES))
def test_filter_decisions(machine):
    prog = syscall_filter(machine)
    assert prog is not None and len(prog) % 8 == 0
    arch, has_x32 = ARCHES[machine]
    assert _decide(prog, GETPID[machine], arch) == RET_ALLOW
    assert _decide(prog, GETPID[machine], 0x40000003) == RET_KILL_PROCESS  # i386 table
    for nr in syscall_numbers(DENIED, machine):
        assert _decide(prog, nr, arch) == _errno(EPERM), nr
    for nr in syscall_numbers(SOCKET_CALLS, machine):
        for family in (1, 2, 10):  # AF_UNIX, AF_INET, AF_INET6
            assert _decide(prog, nr, arch, family) == RET_ALLOW
        for family in (16, 17, 40, (1 << 32) | 40):  # netlink, packet, vsock; int truncation
            assert _decide(prog, nr, arch, family) == _errno(EAFNOSUPPORT)
    x32_getpid = 0x40000000 | GETPID[machine]
    assert _decide(prog, x32_getpid, arch) == (_errno(ENOSYS) if has_x32 else RET_ALLOW)


def test_unknown_machine_has_no_filter():
    assert syscall_filter("sparc64") is None


@pytest.mark.parametrize("machine", list(ARCHES))
def test_numbers_match_the_kernel_headers(machine):
    header = HEADERS[machine]
    if not header.exists():
        pytest.skip(f"{header} is not installed (Debian: linux-libc-dev)")
    defined = dict(re.findall(r"#define __NR3?2?_(\w+)\s+(\d+)\b", header.read_text()))
    column = list(ARCHES).index(machine)
    for name, numbers in {**DENIED, **SOCKET_CALLS}.items():
        if numbers[column] is not None:
            assert int(defined[name]) == numbers[column], (machine, name)


_INSIDE = """
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(name, nr, *args):
    ctypes.set_errno(0)
    res = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    print(name, res, errno.errorcode.get(ctypes.get_errno(), 0) if res == -1 else 'ok')
for name, nr, args in CALLS:
    call(name, nr, *args)
for family in (socket.AF_VSOCK, socket.AF_NETLINK, socket.AF_PACKET, socket.AF_INET,
               socket.AF_INET6, socket.AF_UNIX):
    try:
        socket.socket(family, socket.SOCK_DGRAM if family != socket.AF_VSOCK else 1).close()
        print('family', int(family), 'ok')
    except OSError as e:
        print('family', int(family), errno.errorcode[e.errno])
"""


@pytest.mark.skipif(
    sandbox_bwrap.problem() != "" or platform.machine() not in ARCHES,
    reason=f"needs the kernel sandbox ({sandbox_bwrap.problem() or 'ok'}) on x86_64/aarch64",
)
def test_denied_calls_fail_inside_the_sandbox():
    """Calls picked to succeed (or fail otherwise than EPERM) without the filter."""
    machine = platform.machine()
    column = list(ARCHES).index(machine)
    nums = {name: numbers[column] for name, numbers in DENIED.items()}
    calls = [
        ("ptrace", nums["ptrace"], (0, 0, 0, 0)),  # PTRACE_TRACEME: allowed on oneself
        ("keyctl", nums["keyctl"], (0, -3, 0)),  # the session key-ring's id
        ("unshare", nums["unshare"], (0,)),  # a no-op
        ("setns", nums["setns"], (-1, 0)),  # EBADF
        ("chroot", nums["chroot"], (0,)),  # EFAULT
        ("shmget", nums["shmget"], (0, 4096, 0o600)),  # IPC_PRIVATE: allowed
        ("io_uring_setup", nums["io_uring_setup"], (1, 0)),  # EFAULT
        ("perf_event_open", nums["perf_event_open"], (0, 0, -1, -1, 0)),  # EFAULT
        ("userfaultfd", nums["userfaultfd"], (1,)),  # UFFD_USER_MODE_ONLY: allowed
        ("process_vm_readv", nums["process_vm_readv"], (1 << 22, 0, 0, 0, 0, 0)),  # ESRCH
    ]
    if ARCHES[machine][1]:
        calls.append(("x32_getpid", 0x40000000 | GETPID[machine], ()))
    r = run_program(f"CALLS = {calls!r}\n" + _INSIDE, audit=False, allow_unsandboxed=False)
    assert r.status == "passed", r
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line)
    for name, _nr, _args in calls:
        expected = "ENOSYS" if name == "x32_getpid" else "EPERM"
        assert lines[name] == f"-1 {expected}", (name, lines[name])
    families = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("family")]
    assert families == [["40", "EAFNOSUPPORT"], ["16", "EAFNOSUPPORT"], ["17", "EAFNOSUPPORT"],
                        ["2", "ok"], ["10", "ok"], ["1", "ok"]]  # fmt: skip
