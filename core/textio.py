"""Read text a user supplies (reports, CSV, JSONL) with errors that name the place and the fix.

Python's own errors here are bare: a byte that is not UTF-8 gives a ``UnicodeDecodeError``
with a byte offset but no file or line, and JSON nested a few thousand levels deep gives a
``RecursionError``. The helpers below turn both into one-line ``ValueError`` messages that
name the file, line and column and say what to do, so every app reports them alike.

Files are UTF-8 (a leading byte-order mark is dropped); a name ending in ``.gz`` is read
through gzip. Standard library only.
"""

from __future__ import annotations

import codecs
import gzip
import json
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: What to do about a file that is not UTF-8 (appended to every :class:`NotUtf8Error`).
RESAVE = "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 OLD > NEW)"


class NotUtf8Error(ValueError):
    """Bytes that are not UTF-8; ``source``, ``line`` and ``column`` (1-based) say where."""

    def __init__(self, source: str, line: int, column: int, byte: int) -> None:
        self.source, self.line, self.column, self.byte = source, line, column, byte
        super().__init__(
            f"{source}: line {line}, column {column}: byte 0x{byte:02x} is not UTF-8; {RESAVE}."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.source, self.line, self.column, self.byte)


def decode_utf8(data: bytes, source: str, line: int = 1) -> str:
    """``data`` decoded as UTF-8, or :class:`NotUtf8Error` at the first bad byte.

    Args:
        data: The bytes; they start at line ``line`` of ``source``.
        source: What the bytes are (a path), named in the error.
        line: Line number of the first byte (a byte-order mark is dropped only at line 1).
    """
    if line == 1 and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        start = before.rfind(b"\n") + 1  # the bytes before the bad one decode cleanly
        column = len(before[start:].decode("utf-8")) + 1
        raise NotUtf8Error(source, line + before.count(b"\n"), column, data[err.start]) from None


_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _bad_gzip(path: str | Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: not a readable gzip file ({err}); download it again or unzip it.")


def open_binary(path: str | Path) -> IO[bytes]:
    """``path`` opened for reading bytes, through gzip when its name ends in ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")  # the caller closes it


def read_bytes(path: str | Path) -> bytes:
    """The bytes of ``path`` (unzipped for ``.gz``); a broken gzip file is a ``ValueError``."""
    try:
        with open_binary(path) as f:
            return f.read()
    except _GZIP_ERRORS as err:
        raise _bad_gzip(path, err) from err


def read_utf8(path: str | Path) -> str:
    """The text of a UTF-8 file (``.gz`` unzipped); :class:`NotUtf8Error` names the line."""
    return decode_utf8(read_bytes(path), str(path))


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str | NotUtf8Error]]:
    """``(line number, text)`` for each line of ``path``, line ending kept, streamed.

    A line that is not UTF-8 comes as its :class:`NotUtf8Error` instead of its text, and
    the lines after it still follow, so a caller can raise it or skip that one line.
    """
    try:
        with open_binary(path) as f:
            for number, raw in enumerate(f, 1):
                try:
                    yield number, decode_utf8(raw, str(path), number)
                except NotUtf8Error as err:
                    yield number, err
    except _GZIP_ERRORS as err:
        raise _bad_gzip(path, err) from err


def loads_json(text: str, where: str) -> Any:
    """``json.loads(text)``, with errors that name ``where`` (``file`` or ``file:line``).

    Malformed JSON and JSON nested deeper than Python's parser can follow (it recurses, so
    ``[[[...]]]`` a few thousand levels deep exhausts the interpreter's stack limit) both
    become a one-line ``ValueError``.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{where}: not valid JSON ({err.msg}, column {err.colno}); fix or remove it."
        ) from None
    except RecursionError:
        raise ValueError(
            f"{where}: JSON nested deeper than Python's parser can read (about "
            f"{sys.getrecursionlimit()} levels); flatten the value or remove it."
        ) from None
