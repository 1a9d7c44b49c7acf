"""CSV tables of the real layouts: line numbers of rows, UTF-8 lines, label cells."""

from __future__ import annotations

import pytest

from apps.medical_cxr.label_csv import LINE, label_problems, labels_from_row, read_csv_checked
from apps.medical_cxr.labeler import CHEXPERT_LABELS

HEADER = ",".join(["Path", *CHEXPERT_LABELS])


def _row(path: str, edema: str) -> str:
    return ",".join([path, *(edema if n == "Edema" else "" for n in CHEXPERT_LABELS)])


def test_rows_keep_the_line_they_start_on(tmp_path):
    # A quoted field spanning two lines and a blank line shift the later rows' lines.
    text = "\n".join([HEADER, _row('"a\nb"', "1"), "", _row("c", "0"), _row("d", "-1")]) + "\n"
    (tmp_path / "t.csv").write_text(text)
    frame = read_csv_checked(tmp_path / "t.csv", ["Path"], "test")
    assert frame["Path"].tolist() == ["a\nb", "c", "d"]
    assert frame[LINE].tolist() == [2, 5, 6]


def test_a_line_not_in_utf8_goes_to_the_policy_the_header_always_raises(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(f"{HEADER}\n{_row('a', '1')}\n".encode() + b"caf\xe9" + _row("", "0").encode())
    with pytest.raises(ValueError, match=r"test CSV .*t\.csv: line 3, column 4: byte 0xe9"):
        read_csv_checked(path, ["Path"], "test")
    seen: list[str] = []
    frame = read_csv_checked(path, ["Path"], "test", lambda message, err: seen.append(message))
    assert frame["Path"].tolist() == ["a"] and len(seen) == 1 and "line 3" in seen[0]
    path.write_bytes(b"P\xe4th," + HEADER.encode() + b"\n")
    with pytest.raises(ValueError, match=r"line 1, column 2"):
        read_csv_checked(path, ["Path"], "test", lambda message, err: seen.append(message))


def test_label_cells_numbers_text_and_invalid_values(tmp_path):
    path = tmp_path / "t.csv"
    rows = [_row("a", "1.0"), _row("b", "2"), _row("c", " -1 "), _row("d", "")]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    frame = read_csv_checked(path, ["Path"], "test")
    problems = label_problems(frame, "test", path)
    assert list(problems) == [1]
    assert "t.csv: line 3, column 'Edema' holds 2," in problems[1]
    assert "1, 0, -1 or blank" in problems[1]
    good = [labels_from_row(frame.loc[i])["Edema"] for i in (0, 2, 3)]
    assert good == [1, -1, None]
