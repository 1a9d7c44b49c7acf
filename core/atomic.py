"""Write files and directories so a reader sees the old one or the new one, never half.

Everything is written under a hidden temporary name in the destination's own folder, never
in ``$TMPDIR``: a move across filesystems is a copy, and a kill during that copy leaves the
destination truncated with the old version already gone. The temporary file (or every file
of a temporary directory) is flushed to disk with ``fsync``, given the mode the umask
implies (``mkstemp``/``mkdtemp`` would leave 0600/0700), and moved onto the destination in
one ``rename``; the folder is then fsynced so the rename itself survives a power cut. A
kill at any moment leaves the previous version (or nothing, for a first write) plus, at
worst, a hidden ``.<name>.*.tmp`` file. Standard library only, so light packages (merging,
adapters) can use it without importing Lightning.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows it.

    Linux reports it in ``/proc/self/status`` (kernel 4.7+). Elsewhere it is read by setting
    and restoring it with ``os.umask``, which another thread could observe for an instant.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """Flush a file, or a directory's entries, to disk.

    Directories are best effort: some filesystems (and Windows) refuse to open or fsync
    them, and then there is nothing more a process can do. A file that cannot be flushed
    raises, since its contents may not be on disk.
    """
    path = Path(path)
    is_dir = path.is_dir()
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if not is_dir or err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _make_parents(folder: Path) -> None:
    """Create ``folder`` and its missing parents, fsyncing each new entry into its parent."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_path(created.parent)


def _settle_tree(root: Path, umask: int) -> None:
    """Give everything under ``root`` the umask's mode and fsync it (deepest first).

    Files get ``0o666 & ~umask`` (``0o777 & ~umask`` if any execute bit was set), folders
    ``0o777 & ~umask``: writers such as safetensors create 0600 files of their own.
    """
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            full = 0o777 if path.stat().st_mode & 0o111 else 0o666
            os.chmod(path, full & ~umask)
            fsync_path(path)
        os.chmod(dirpath, 0o777 & ~umask)
        fsync_path(dirpath)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the OS or the filesystem cannot (the caller then falls back to two
    renames).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, f"renameat2({str(a)!r}, {str(b)!r}, RENAME_EXCHANGE): {os.strerror(code)}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)``, then move the result onto ``path`` in one step.

    ``tmp_path`` is a hidden file in ``path``'s folder. After ``write`` returns, the file
    gets mode ``0o666 & ~umask``, is fsynced and renamed onto ``path``; the folder is then
    fsynced. If ``write`` (or anything before the rename) fails, ``path`` is untouched and
    the temporary file is removed.
    """
    path = Path(path)
    _make_parents(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it becomes ``path``.

    An existing ``path`` raises ``FileExistsError`` unless ``overwrite``, in which case it
    is swapped out only after the new directory is complete and on disk (every file
    fsynced). On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``, so ``path`` exists
    at every instant; elsewhere it takes two renames. Folders get mode ``0o777 & ~umask``
    and files ``0o666 & ~umask`` (``0o777 & ~umask`` when executable), whatever mode their
    writer chose. On error nothing is left.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"output {str(path)!r} already exists; choose another output path or set "
            "overwrite: true (--overwrite) to replace it."
        )
    _make_parents(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _settle_tree(tmp, current_umask())
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):  # tmp now holds the old version when it succeeds
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        fsync_path(path.parent)
    finally:
        _remove(tmp)
