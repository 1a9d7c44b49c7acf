"""The seccomp filter of the code sandbox, compiled here to classic BPF for ``bwrap --seccomp``.

Why a hand-built filter: libseccomp's Python binding is not installable from PyPI for this
interpreter, and bubblewrap only needs the compiled program (an array of ``sock_filter``).
The filter is a short deny list on top of what the namespaces and the missing capabilities
already forbid, so a mistake in it can only make the sandbox weaker, never break a test
program (every call it denies is one a test program has no use for):

- calls that need a capability the sandbox does not have (``mount``, ``setns``, ``unshare``,
  ``pivot_root``, module loading, ``kexec``, ``reboot``, ``swapon`` ...): defence in depth;
- kernel interfaces that are reachable without privileges but are large attack surfaces a
  test never needs: ``io_uring_*`` (it can also open sockets without ``socket()``), ``bpf``,
  ``perf_event_open``, ``userfaultfd``, the key-ring calls, ``ptrace`` and
  ``process_vm_*``, System V shared memory (memory that outlives every process's limit);
- ``socket()`` / ``socketpair()`` of any family but ``AF_UNIX``, ``AF_INET`` and ``AF_INET6``:
  families such as ``AF_VSOCK`` are not confined by network namespaces and would reach the
  host of a virtual machine.

Denied calls fail with ``EPERM`` (``EAFNOSUPPORT`` for socket families); a call made through
another architecture's system-call table (``int 0x80`` on x86-64) kills the process, and the
x32 table fails with ``ENOSYS``. Supported machines: x86-64 and aarch64 (numbers from the
kernel's ``asm/unistd_64.h`` and ``asm-generic/unistd.h``); elsewhere
:func:`syscall_filter` returns ``None`` and the sandbox runs without this layer.
"""

from __future__ import annotations

import platform
import struct
import sys

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_NR, _ARCH = 0, 4
_ARG0 = 16 if sys.byteorder == "little" else 20  # the low 32 bits of args[0]
_LD_W_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
RET_ALLOW, RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97
ALLOWED_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6
X32_SYSCALL_BIT = 0x40000000

#: ``platform.machine()`` -> (AUDIT_ARCH_* value, has an x32 table).
ARCHES = {"x86_64": (0xC000003E, True), "aarch64": (0xC00000B7, False)}

#: Denied system calls: name -> (x86-64 number, aarch64 number); ``None`` where absent.
DENIED = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "syslog": (103, 116), "chroot": (161, 51), "acct": (163, 89),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "swapon": (167, 224),
    "swapoff": (168, 225), "reboot": (169, 142), "iopl": (172, None), "ioperm": (173, None),
    "modify_ldt": (154, None), "uselib": (134, None), "vhangup": (153, 58),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "quotactl": (179, 60), "nfsservctl": (180, 42), "lookup_dcookie": (212, 18),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "add_key": (248, 217),
    "request_key": (249, 218), "keyctl": (250, 219), "unshare": (272, 97), "setns": (308, 268),
    "perf_event_open": (298, 241), "fanotify_init": (300, 262), "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265), "bpf": (321, 280), "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195),
}  # fmt: skip
#: socket(2) and socketpair(2): their family argument is checked.
SOCKET_CALLS = {"socket": (41, 198), "socketpair": (53, 199)}


def syscall_numbers(table: dict[str, tuple[int | None, int | None]], machine: str) -> list[int]:
    """The numbers of ``table``'s calls on ``machine`` (calls the machine lacks are skipped)."""
    column = list(ARCHES).index(machine)
    return [nums[column] for nums in table.values() if nums[column] is not None]


def syscall_filter(machine: str | None = None) -> bytes | None:
    """The compiled filter (``struct sock_filter[]``) for ``machine``, ``None`` if unsupported.

    Args:
        machine: A ``platform.machine()`` value; default: this machine's.
    """
    machine = machine or platform.machine()
    if machine not in ARCHES:
        return None
    audit_arch, has_x32 = ARCHES[machine]
    # (code, jump-if-true label, jump-if-false label, k); a label is a name or None (next).
    prog: list[tuple[int, str | None, str | None, int]] = [
        (_LD_W_ABS, None, None, _ARCH),
        (_JEQ, None, "kill", audit_arch),
        (_LD_W_ABS, None, None, _NR),
    ]
    if has_x32:
        prog.append((_JGE, "enosys", None, X32_SYSCALL_BIT))
    prog += [(_JEQ, "eperm", None, nr) for nr in syscall_numbers(DENIED, machine)]
    prog += [(_JEQ, "family", None, nr) for nr in syscall_numbers(SOCKET_CALLS, machine)]
    prog.append((_RET, None, None, RET_ALLOW))
    labels = {"family": len(prog)}
    prog.append((_LD_W_ABS, None, None, _ARG0))
    prog += [(_JEQ, "allow", None, family) for family in ALLOWED_SOCKET_FAMILIES]
    returns = {
        "badfamily": _RET_ERRNO | EAFNOSUPPORT, "allow": RET_ALLOW,
        "eperm": _RET_ERRNO | EPERM, "enosys": _RET_ERRNO | ENOSYS, "kill": RET_KILL_PROCESS,
    }  # fmt: skip
    for name, value in returns.items():
        labels[name] = len(prog)
        prog.append((_RET, None, None, value))
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(prog):
        offsets = [0 if label is None else labels[label] - i - 1 for label in (jt, jf)]
        if not all(0 <= off <= 255 for off in offsets):  # classic BPF jumps forward, 8 bits
            raise RuntimeError(f"seccomp filter jump out of range at instruction {i}")
        out += struct.pack("=HBBI", code, offsets[0], offsets[1], k)
    return bytes(out)
