"""The multitask JSONL format: both record shapes, folders, and errors that name the line."""

from __future__ import annotations

import json

import pytest

from apps.code.records import Record, parse_record, read_jsonl, write_jsonl


def test_round_trip_files_and_folders(tmp_path):
    recs = [Record("a", "p", "c"),
            Record("b", messages=({"role": "user", "content": "u"},
                                  {"role": "assistant", "content": "v"}))]  # fmt: skip
    write_jsonl(tmp_path / "d" / "x.jsonl", recs)
    write_jsonl(tmp_path / "d" / "sub" / "y.jsonl", recs[:1])
    assert list(read_jsonl([tmp_path / "d" / "x.jsonl"])) == recs
    assert list(read_jsonl([tmp_path / "d"])) == [recs[0], *recs]  # sorted: sub/y < x


def test_segments_mark_targets():
    rec = Record("c", messages=({"role": "system", "content": "s"},
                                {"role": "user", "content": "u"},
                                {"role": "assistant", "content": "a"}))  # fmt: skip
    assert [t for _, t in rec.segments()] == [False, False, False, True]
    assert Record("t", "p", "c").segments() == [("p", False), ("c", True)]


@pytest.mark.parametrize(
    ("obj", "message"),
    [([1], "JSON object"), ({"prompt": "p", "completion": "c"}, '"task"'),
     ({"task": "t", "prompt": "p"}, "completion"), ({"task": "t", "messages": []}, "non-empty"),
     ({"task": "t", "messages": [{"role": "bot", "content": "x"}]}, "role"),
     ({"task": "t", "messages": [{"role": "user", "content": "x"}]}, "no assistant")],
)  # fmt: skip
def test_bad_records(obj, message):
    with pytest.raises(ValueError, match=message):
        parse_record(obj, "f.jsonl:3")


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"task": "t", "prompt": "", "completion": "c"}) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON"):
        list(read_jsonl([path]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(read_jsonl([tmp_path / "missing.jsonl"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"without \.jsonl"):
        list(read_jsonl([tmp_path / "empty"]))


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    good = json.dumps({"task": "t", "prompt": "", "completion": "c"})
    path.write_bytes(f'{good}\n{{"task": "t", "completion": "caf\xe9"}}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.jsonl: line 2, column 33: byte 0xe9") as err:
        list(read_jsonl([path]))
    assert "re-save the file as UTF-8" in str(err.value) and "\n" not in str(err.value)


def test_deeply_nested_json_is_a_clear_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps({"task": "t", "prompt": "", "completion": "c"}) + "\n"
                    + "[" * 200_000 + "\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"deep\.jsonl:2: JSON nested deeper than") as err:
        list(read_jsonl([path]))
    assert not isinstance(err.value, RecursionError) and "\n" not in str(err.value)
