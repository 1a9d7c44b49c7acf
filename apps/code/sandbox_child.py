"""The first code that runs inside a sandboxed process (see :mod:`apps.code.sandbox`).

Started as ``python -I -S -B sandbox_child.py <json options>`` in the program's working
directory (``/sandbox`` inside the kernel sandbox), it (1) sets the resource limits, soft
and hard alike so the program cannot raise them, (2) only when running unsandboxed (opted
in), tries to move into a new, empty network namespace, (3) installs an audit hook that
refuses what a test program has no business doing, and (4) runs ``program.py`` from the
working directory as ``__main__``.

It reports through its exit status and one line on the report file descriptor:

=====  =========================================================
exit   meaning
=====  =========================================================
0      the program finished (``passed``)
1      an ``AssertionError`` or a non-zero ``SystemExit`` (``failed``)
2      any other exception, syntax errors included (``error``)
3      ``MemoryError``: the address-space limit was hit (``killed``)
4      the audit hook refused an operation (``refused``)
=====  =========================================================

The audit hook is a friendly early error, not a wall: it lives in the program's own process,
so the program can reach and switch it off (CPython documents that audit hooks cannot stop
determined code). The walls are the kernel's: bubblewrap's namespaces, the seccomp filter,
and the resource limits set here before the program runs (see ``docs/code.md``).
"""

import json
import os
import resource
import sys

EXIT_FAILED, EXIT_ERROR, EXIT_MEMORY, EXIT_REFUSED = 1, 2, 3, 4
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000

#: Events refused outright: new processes, signals, native code, sockets, raising limits.
BLOCKED = frozenset(
    {
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
        "os.kill", "os.killpg", "subprocess.Popen", "pty.spawn", "os.startfile",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
        "ctypes.call_function", "ctypes.addressof", "ctypes.string_at", "ctypes.wstring_at",
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg",
        "socket.getnameinfo", "webbrowser.open", "urllib.Request", "http.client.connect",
        "ftplib.connect", "smtplib.connect", "telnetlib.Telnet.open", "poplib.connect",
        "imaplib.open", "nntplib.connect", "resource.setrlimit", "resource.prlimit",
        "sys.addaudithook", "os.symlink", "os.link", "os.chroot", "os.setns",
        "sys.remote_exec", "signal.pthread_kill",
    }
)  # fmt: skip
#: Events whose path arguments (first, or first two) must lie inside the working directory.
PATH_WRITES = {
    "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.rename": 2, "os.replace": 2,
    "os.chmod": 1, "os.chown": 1, "os.truncate": 1, "os.utime": 1, "os.setxattr": 1,
    "os.removexattr": 1, "shutil.rmtree": 1, "shutil.chown": 1, "os.chflags": 1,
    "os.lchflags": 1, "os.lchmod": 1, "os.mkfifo": 1, "os.mknod": 1,
}  # fmt: skip
PATH_READS = {"os.listdir": 1, "os.scandir": 1, "glob.glob": 1, "os.chdir": 1}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _normalize(path, cwd):
    """Absolute, lexically normalised path (no file-system calls, no patchable helpers)."""
    if not path.startswith("/"):
        path = cwd + "/" + path
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def _within(path, root):
    return path == root or path.startswith(root + "/")


def _limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        _soft, hard = resource.getrlimit(kind)
        if hard == resource.RLIM_INFINITY or value <= hard:
            resource.setrlimit(kind, (value, hard))


def _isolate_network():
    """Enter a new network namespace (only a down loopback inside); True on success."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return any(libc.unshare(flags) == 0 for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET))


def main() -> None:
    """Set the limits, install the hook, run ``program.py``; exit with a status from above."""
    opts = json.loads(sys.argv[1])
    report_fd = opts["report_fd"]
    root = opts["root"]
    read_roots = tuple(opts["read_roots"])
    getcwd, write_fd, exit_now = os.getcwd, os.write, os._exit
    fspath, isinstance_, str_, bytes_, int_ = os.fspath, isinstance, str, bytes, int

    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_CPU, opts["cpu_seconds"])
    _limit(resource.RLIMIT_FSIZE, opts["max_file_bytes"])
    _limit(resource.RLIMIT_NOFILE, 64)
    _limit(resource.RLIMIT_NPROC, opts["max_processes"])
    network = "isolated" if opts["network"] == "kernel" else "shared"
    if opts["network"] == "try":
        try:
            network = "isolated" if _isolate_network() else "shared"
        except OSError:
            network = "shared"
    write_fd(report_fd, f"network {network}\n".encode())

    with open(os.path.join(root, "program.py"), encoding="utf-8") as f:
        source = f.read()
    # The address-space limit comes last: the interpreter and ctypes are loaded by now.
    _limit(resource.RLIMIT_AS, opts["memory_bytes"])

    def refuse(what):
        try:
            write_fd(report_fd, ("refused " + what + "\n").encode("utf-8", "replace"))
        finally:
            exit_now(EXIT_REFUSED)

    def as_path(value):
        if isinstance_(value, int_) or value is None:
            return None
        value = fspath(value)
        if isinstance_(value, bytes_):
            value = value.decode("utf-8", "surrogateescape")
        return _normalize(str_(value), getcwd())

    def may_read(path):
        return (
            _within(path, root)
            or path in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
            or any(_within(path, r) for r in read_roots)
        )

    def hook(event, args):
        if event in BLOCKED:
            refuse(event)
        elif event == "open":
            path, mode, flags = args
            target = as_path(path)
            if target is None:
                return
            writing = (isinstance_(flags, int_) and flags & WRITE_FLAGS) or (
                isinstance_(mode, str_) and any(c in mode for c in "wax+")
            )
            if writing and not _within(target, root):
                refuse(f"writing {target} (outside the working directory)")
            if not writing and not may_read(target):
                refuse(f"reading {target} (outside the working directory)")
        elif event in PATH_WRITES:
            if len(args) > 2 and event.startswith("os.") and args[-1] not in (None, -1):
                refuse(f"{event} relative to a directory descriptor")
            for value in args[: PATH_WRITES[event]]:
                target = as_path(value)
                if target is not None and not _within(target, root):
                    refuse(f"{event} on {target} (outside the working directory)")
        elif event in PATH_READS:
            target = as_path(args[0] if args and args[0] is not None else ".")
            if target is not None and not may_read(target):
                refuse(f"{event} on {target} (outside the working directory)")

    import traceback  # before the hook: its own imports read nothing the hook would refuse

    if opts["audit"]:
        sys.addaudithook(hook)
    sys.argv = ["program.py"]
    namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
    try:
        code = compile(source, "program.py", "exec")
        exec(code, namespace)
    except MemoryError:
        write_fd(report_fd, b"memory limit reached\n")
        exit_now(EXIT_MEMORY)
    except AssertionError as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        sys.stderr.flush()
        sys.stdout.flush()
        exit_now(EXIT_FAILED)
    except SystemExit as stop:
        sys.stdout.flush()
        sys.stderr.flush()
        code = stop.code
        exit_now(0 if code in (None, 0) else EXIT_FAILED)
    except BaseException as exc:  # the program's own frames only, not this file's
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        sys.stderr.flush()
        sys.stdout.flush()
        exit_now(EXIT_ERROR)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except MemoryError:
        exit_now(EXIT_MEMORY)
    exit_now(0)


if __name__ == "__main__":
    main()
