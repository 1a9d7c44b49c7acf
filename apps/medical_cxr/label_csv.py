"""CSV tables of the real layouts (MIMIC-CXR, CheXpert): reading them and their label cells.

Tables are read as UTF-8 (plain or ``.gz``) line by line, so a line that is not UTF-8 is
named (file, line, column) and can be skipped alone; each row remembers the file line it
starts on (column :data:`LINE`), so a bad label cell is named by file, line, column, value
and the values a CheXpert label may take. What to do with a bad line or cell (raise or skip)
is the loader's error policy (:class:`apps.medical_cxr.sources.ErrorPolicy`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from core.textio import NotUtf8Error, utf8_lines

from .labeler import CHEXPERT_LABELS

#: Column that :func:`read_csv_checked` adds: the file line each row starts on.
LINE = "__line__"
#: The values a CheXpert label cell may hold (blank: not mentioned).
LABEL_VALUES = (1, 0, -1)


def read_csv_checked(
    path: str | Path,
    required: Sequence[str],
    what: str,
    on_bad_line: Callable[[str, Exception], None] | None = None,
) -> pd.DataFrame:
    """Read a UTF-8 CSV (plain or .gz) and check it has ``required`` columns, naming any gap.

    A data line that is not UTF-8 is left out after ``on_bad_line(message, error)`` (the
    loader's error policy, which may raise instead; without it the line raises); a header
    that is not UTF-8 always raises. Each row keeps the file line it starts on in column
    :data:`LINE`, so later messages can name it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} CSV {str(path)!r} does not exist.")
    lines: list[str] = []
    numbers: list[int] = []
    for number, line in utf8_lines(path):
        if isinstance(line, NotUtf8Error):
            if number == 1 or on_bad_line is None:
                raise ValueError(f"{what} CSV {line}") from line
            on_bad_line(f"{what} CSV {line}", line)
            continue
        lines.append(line)
        numbers.append(number)
    try:
        frame = pd.read_csv(io.StringIO("".join(lines)), skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(
            f"{what} CSV {str(path)!r} cannot be parsed ({err}); re-export it as "
            "comma-separated values with a header row."
        ) from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} CSV {str(path)!r} lacks column(s) {missing} (it has {list(frame.columns)}); "
            f"use the official file or add the column(s)."
        )
    cells = list(frame.columns)
    frame[LINE] = _record_lines(lines, numbers, len(frame))
    return frame.dropna(how="all", subset=cells)  # blank lines


def _record_lines(lines: list[str], numbers: list[int], rows: int) -> list[int]:
    """The file line each data record of ``lines`` starts on (a quoted field may span lines).

    Where Python's csv module and pandas disagree on the records (a file with bare ``\\r``
    line ends), the rows are numbered as if each took one line after the header.
    """
    starts: list[int] = []
    reader = csv.reader(lines)
    taken = 0  # lines the reader has consumed before the next record
    try:
        for _ in reader:
            starts.append(numbers[taken])
            taken = reader.line_num
    except csv.Error:
        starts = []
    starts = starts[1:]
    return starts if len(starts) == rows else list(range(2, rows + 2))


def label_problems(frame: pd.DataFrame, what: str, path: str | Path) -> dict[Any, str]:
    """Make the label columns numeric (blank: NaN) and name each row with an invalid cell.

    Returns ``{row index: message}``; a message names the file, the line (column
    :data:`LINE`), the first invalid column of the row, its value and the valid values.
    A column that holds text (one cell ``yes`` makes pandas read it so) still reads its
    valid cells (``"1.0"``) as numbers.
    """
    problems: dict[Any, str] = {}
    for name in CHEXPERT_LABELS:
        raw = frame[name]
        if pd.api.types.is_numeric_dtype(raw):  # the usual case, and fast
            values = raw.astype(float)
            bad = values.notna() & ~values.isin(LABEL_VALUES)
        else:
            text = raw.astype("string").str.strip()
            values = pd.to_numeric(text.where(text != ""), errors="coerce").astype(float)
            bad = text.notna() & (text != "") & ~values.isin(LABEL_VALUES)
        for index in frame.index[bad.to_numpy()]:
            value = raw[index]
            shown = repr(value) if isinstance(value, str) else f"{value:g}"
            problems.setdefault(
                index,
                f"{what} CSV {path}: line {frame.at[index, LINE]}, column {name!r} holds {shown}, "
                "but a CheXpert label is 1, 0, -1 or blank (1.0, 0.0, -1.0 read too); fix the cell",
            )
        frame[name] = values
    return problems


def labels_from_row(row: pd.Series) -> dict[str, int | None]:
    """Label cells made numeric by :func:`label_problems` as ``label_report``-style values."""
    out: dict[str, int | None] = {}
    for name in CHEXPERT_LABELS:
        value = row[name]
        out[name] = None if pd.isna(value) else int(value)
        if out[name] not in (None, *LABEL_VALUES):
            raise ValueError(f"label {name!r} has value {value!r}; expected 1, 0, -1 or blank.")
    return out
