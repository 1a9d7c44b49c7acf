"""UTF-8 and JSON reading whose errors name the file, line and column (core/textio.py)."""

from __future__ import annotations

import gzip
import json
import pickle

import pytest

from core.textio import (
    NotUtf8Error,
    decode_utf8,
    loads_json,
    read_bytes,
    read_utf8,
    utf8_lines,
)


def test_decode_names_line_and_column_of_the_first_bad_byte():
    data = "line one\nnaïve ok\n".encode() + b"caf\xe9 au lait\n"
    with pytest.raises(NotUtf8Error) as info:
        decode_utf8(data, "notes.txt")
    err = info.value
    assert (err.source, err.line, err.column) == ("notes.txt", 3, 4)
    message = str(err)
    assert message.startswith("notes.txt: line 3, column 4: byte 0xe9 is not UTF-8;")
    assert "re-save the file as UTF-8" in message and "\n" not in message
    # Columns count characters, not bytes; a chunk may start deeper in its file.
    with pytest.raises(NotUtf8Error, match=r"line 12, column 3: byte 0xff"):
        decode_utf8("é".encode() + b"x\xff", "f", line=12)
    assert pickle.loads(pickle.dumps(err)).line == 3


def test_byte_order_mark_is_dropped_at_the_start_only():
    assert decode_utf8(b"\xef\xbb\xbfpath,label\n", "a.csv") == "path,label\n"
    assert decode_utf8(b"\xef\xbb\xbfx", "a.csv", line=2) == "\ufeffx"
    with pytest.raises(NotUtf8Error, match=r"line 1, column 2: byte 0x80"):
        decode_utf8(b"\xef\xbb\xbfa\x80", "a.csv")


def test_read_utf8_plain_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_bytes("héllo\n".encode())
    assert read_utf8(tmp_path / "a.txt") == "héllo\n"
    with gzip.open(tmp_path / "b.csv.gz", "wb") as f:
        f.write(b"a,b\n1,\xe92\n")
    assert read_bytes(tmp_path / "b.csv.gz") == b"a,b\n1,\xe92\n"
    with pytest.raises(NotUtf8Error, match=r"b\.csv\.gz: line 2, column 3"):
        read_utf8(tmp_path / "b.csv.gz")
    (tmp_path / "c.csv.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(ValueError, match=r"c\.csv\.gz: not a readable gzip file"):
        read_utf8(tmp_path / "c.csv.gz")


def test_utf8_lines_hands_back_a_bad_line_and_goes_on(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xe9"}\n{"c": 3}\n')
    lines = list(utf8_lines(path))
    assert [n for n, _ in lines] == [1, 2, 3]
    assert lines[0][1] == '{"a": 1}\n' and lines[2][1] == '{"c": 3}\n'
    bad = lines[1][1]
    assert isinstance(bad, NotUtf8Error) and (bad.line, bad.column) == (2, 8)
    assert str(path) in str(bad)


def test_loads_json_errors_name_the_place():
    assert loads_json('{"a": [1, 2]}', "x.json") == {"a": [1, 2]}
    with pytest.raises(ValueError, match=r"x\.jsonl:4: not valid JSON \(Expecting"):
        loads_json("{oops", "x.jsonl:4")
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(ValueError) as info:
        loads_json(deep, "deep.json")
    assert not isinstance(info.value, RecursionError)
    message = str(info.value)
    assert message.startswith("deep.json: JSON nested deeper than") and "\n" not in message
    # Nesting the parser can follow still parses.
    assert loads_json("[" * 50 + "]" * 50, "ok.json") == json.loads("[" * 50 + "]" * 50)
