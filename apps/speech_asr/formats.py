"""On-disk speech corpora (``data.source``): Common Voice, FLEURS and a JSONL manifest.

Each reader returns :class:`~apps.speech_asr.utterance.Utterance` records with ``path`` set
and ``audio`` still on disk (:func:`load` decodes one), transcripts normalised for their
language by ``text.normalize``. The layouts:

``common_voice``
    ``<root>/<split>.tsv`` (``train``, ``dev``, ``test``; for ``train`` without
    ``train.tsv``, ``validated.tsv`` minus the clips of ``dev.tsv``/``test.tsv``), a header
    row with at least ``path`` and ``sentence`` (``client_id`` becomes the speaker,
    ``locale`` the language), clips under ``<root>/clips/``.
``fleurs``
    ``<root>/<split>.tsv`` without a header: id, file name, raw transcription,
    transcription, characters/phonemes, sample count, gender; audio under
    ``<root>/audio/<split>/``. The raw transcription is the one normalised (FLEURS'
    own normalised column is the fallback when the raw one is empty).
``jsonl``
    ``root`` is a manifest (``.jsonl`` or ``.jsonl.gz``) whose rows each carry a
    ``split``, or a folder holding ``<split>.jsonl``. A row: ``audio`` (relative to the
    manifest's folder, or absolute), ``text``, ``language``, optional ``speaker``,
    ``split`` and ``id``.

Languages: a Common Voice or FLEURS ``root`` is one language's folder (the language comes
from the ``locale`` column, else the ``language`` argument, else the folder's name, as in
``cv-corpus-17.0/lt`` or ``fleurs/lt_lt``), or the release's top folder holding one
sub-folder per language (``<root>/lt/``, ``<root>/lt_lt/``), of which those in
``languages`` are read. Locale and folder names map to the app's codes by their first part
(``sv-SE`` -> ``sv``, ``es_419`` -> ``es``: ``text.known_language``); an unknown code is a
``ValueError`` listing the known ones. ``languages`` also filters rows (the others are
dropped, and counted in the log).

Bad rows: a row whose audio file is missing or whose transcript is empty (after
normalisation) is skipped; the skips are counted per reason in one warning naming the first
example, and a split left with no row is an error. A malformed file (no header, too few
columns, bad JSON, a row without ``audio``) is an error naming the file, line and fix. With
``max_seconds`` set, every kept file's header is read, so an unreadable, empty or too long
clip stops the read with an :class:`~apps.speech_asr.audio.AudioError` before any training.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from core.textio import NotUtf8Error, loads_json, read_utf8, utf8_lines

from .audio import audio_duration, load_audio
from .text import known_language, normalize
from .utterance import Utterance

__all__ = [
    "FORMATS",
    "language_code",
    "load",
    "read_common_voice",
    "read_fleurs",
    "read_jsonl",
    "read_source",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- languages
def _known_code(name: str) -> str | None:
    """The app's code a name spells (``lt``, a Common Voice locale ``sv-SE``, a FLEURS folder
    ``lt_lt`` or ``es_419``), or ``None``: ``text.known_language`` does the mapping."""
    try:
        return known_language(name).code
    except ValueError:
        return None


def language_code(name: str, where: str) -> str:
    """The app's code for ``name`` (as :func:`_known_code`), or a ``ValueError`` naming
    ``where`` and listing the known codes."""
    try:
        return known_language(name).code
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _wanted(languages: Sequence[str] | None) -> set[str] | None:
    """The ``languages`` filter as app codes (each checked), or ``None`` for all."""
    if languages is None:
        return None
    if isinstance(languages, str):
        languages = [languages]
    return {language_code(c, "languages") for c in languages}


def _language_folders(
    root: Path, has_split: Callable[[Path], bool], wanted: set[str] | None
) -> list[tuple[Path, str]]:
    """``(folder, code)`` of each language sub-folder of a release's top folder that holds
    the split and is wanted, in name order."""
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        code = _known_code(sub.name)
        if code is not None and has_split(sub) and (wanted is None or code in wanted):
            found.append((sub, code))
    return found


# ---------------------------------------------------------------------------- skips
class _Tally:
    """Rows kept and skipped while reading one split, with one log line at the end."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.rows = 0
        self.skips: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        self.other_languages: Counter[str] = Counter()

    def skip(self, reason: str, example: str) -> None:
        self.skips[reason] += 1
        self.first.setdefault(reason, example)

    def finish(self, kept: list[Utterance], wanted: set[str] | None) -> list[Utterance]:
        """Log the skips and the dropped languages; raise when nothing is left."""
        if self.skips:
            detail = "; ".join(
                f"{n} {reason} (first: {self.first[reason]})" for reason, n in self.skips.items()
            )
            log.warning(
                "%s: skipped %d of %d rows: %s", self.where, self.skips.total(), self.rows, detail
            )
        if self.other_languages:
            log.info(
                "%s: left out %d rows of languages not asked for: %s",
                self.where,
                self.other_languages.total(),
                dict(sorted(self.other_languages.items())),
            )
        if not kept:
            asked = f" in languages {sorted(wanted)}" if wanted is not None else ""
            why = []
            if self.skips:
                why.append(f"{self.skips.total()} skipped (see the warning above)")
            if self.other_languages:
                why.append(f"languages present: {sorted(self.other_languages)}")
            raise ValueError(
                f"{self.where}: no usable utterance{asked} among {self.rows} rows"
                + (f" ({'; '.join(why)})" if why else "")
                + "; fix the paths and transcripts, or the languages asked for."
            )
        counts = Counter(u.language for u in kept)
        log.info("%s: %d utterances %s", self.where, len(kept), dict(counts))
        return kept


def _keep(
    tally: _Tally,
    wanted: set[str] | None,
    *,
    utt_id: str,
    language: str,
    text: str,
    speaker: str,
    path: Path,
    row_name: str,
) -> Utterance | None:
    """The row's :class:`Utterance`, or ``None`` when it is filtered out or skipped."""
    if wanted is not None and language not in wanted:
        tally.other_languages[language] += 1
        return None
    if not path.is_file():
        tally.skip("audio file missing", f"{row_name}: {path}")
        return None
    normalised = normalize(text, language)
    if not normalised:
        tally.skip("empty transcript", f"{row_name}: {text!r}")
        return None
    return Utterance(id=utt_id, language=language, text=normalised, speaker=speaker, path=str(path))


def _check_audio(utterances: Iterable[Utterance], max_seconds: float | None) -> None:
    """Read every file's header: unreadable, empty and too long clips raise here."""
    if max_seconds is None:
        return
    for u in utterances:
        audio_duration(str(u.path), max_seconds)


def _tsv_rows(path: Path) -> Any:
    """Rows of a tab-separated file, quotes taken literally (Common Voice sentences hold
    ``"``); a file that is not UTF-8 is an error naming the line."""
    return csv.reader(
        io.StringIO(read_utf8(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE
    )


def _no_split_file(fmt: str, root: Path, expected: str) -> ValueError:
    return ValueError(
        f"{fmt}: {root} holds no {expected} and no language folder with one; point "
        f"data.root at a {fmt} folder (see apps/speech_asr/formats.py for the layout)."
    )


# ---------------------------------------------------------------------------- Common Voice
def _cv_split_files(folder: Path, split: str) -> tuple[Path, list[Path]] | None:
    """The TSV to read for ``split`` and the TSVs whose clips it must leave out."""
    own = folder / f"{split}.tsv"
    if own.is_file():
        return own, []
    validated = folder / "validated.tsv"
    if split == "train" and validated.is_file():
        held_out = [folder / f"{s}.tsv" for s in ("dev", "test") if (folder / f"{s}.tsv").is_file()]
        return validated, held_out
    return None


def _cv_header(path: Path, rows: Any) -> dict[str, int]:
    header = next(rows, None)
    columns = {name.strip(): i for i, name in enumerate(header or [])}
    missing = [c for c in ("path", "sentence") if c not in columns]
    if missing:
        raise ValueError(
            f"{path}: line 1 must be a header naming the columns, with at least 'path' and "
            f"'sentence' (missing {missing}); use the TSV of a Common Voice release."
        )
    return columns


def _cv_paths(path: Path) -> set[str]:
    rows = _tsv_rows(path)
    column = _cv_header(path, rows)["path"]
    return {row[column] for row in rows if len(row) > column}


def _read_cv_folder(
    folder: Path, split: str, language: str | None, wanted: set[str] | None
) -> list[Utterance]:
    files = _cv_split_files(folder, split)
    if files is None:
        raise _no_split_file("common_voice", folder, f"{split}.tsv (or validated.tsv for train)")
    path, held_out_files = files
    held_out: set[str] = set().union(*(_cv_paths(p) for p in held_out_files))
    tally = _Tally(f"common_voice {path}")
    rows = _tsv_rows(path)
    columns = _cv_header(path, rows)
    fallback = language or _known_code(folder.name)
    kept: list[Utterance] = []
    for row in rows:
        if not row or row == [""]:
            continue
        where = f"{path}:{rows.line_num}"
        if len(row) < len(columns):
            raise ValueError(
                f"{where}: {len(row)} tab-separated fields, the header has {len(columns)}; "
                "fix the row (a stray tab or a cut line) or remove it."
            )
        clip = row[columns["path"]]
        if clip in held_out:
            continue
        tally.rows += 1
        locale = row[columns["locale"]].strip() if "locale" in columns else ""
        if locale:
            code = language_code(locale, f"{where}: locale")
        elif fallback is not None:
            code = fallback
        else:
            raise ValueError(
                f"{where}: no locale column and no language for {folder}; pass language=, or "
                "name the folder after its language (e.g. .../lt)."
            )
        utt = _keep(
            tally,
            wanted,
            utt_id=Path(clip).stem,
            language=code,
            text=row[columns["sentence"]],
            speaker=row[columns["client_id"]] if "client_id" in columns else "",
            path=folder / "clips" / clip,
            row_name=where,
        )
        if utt is not None:
            kept.append(utt)
    if held_out:
        log.info("%s: left out the clips of %s", tally.where, [p.name for p in held_out_files])
    return tally.finish(kept, wanted)


def read_common_voice(
    root: str | Path,
    split: str,
    languages: Sequence[str] | None = None,
    language: str | None = None,
    max_seconds: float | None = None,
) -> list[Utterance]:
    """The ``split`` of a Common Voice folder (one language's, or a release's top folder).

    Args:
        root: ``<root>/<split>.tsv`` + ``<root>/clips/``, or ``<root>/<locale>/`` folders.
        split: ``train``, ``dev`` or ``test``.
        languages: Keep only these languages (``None``: all).
        language: The language when the TSV has no ``locale`` column and the folder's name
            is not a language code.
        max_seconds: When set, each clip's header is checked (readable, not empty, at most
            this long); ``None`` leaves that to :func:`load`.
    """
    root, wanted = Path(root), _wanted(languages)
    language = None if language is None else language_code(language, "language")
    _check_root(root, "common_voice")
    if _cv_split_files(root, split) is not None:
        out = _read_cv_folder(root, split, language, wanted)
    else:
        folders = _language_folders(root, lambda f: _cv_split_files(f, split) is not None, wanted)
        if not folders:
            raise _no_split_file("common_voice", root, f"{split}.tsv (or validated.tsv for train)")
        out = [u for f, code in folders for u in _read_cv_folder(f, split, code, wanted)]
    _check_audio(out, max_seconds)
    return out


# ---------------------------------------------------------------------------- FLEURS
def _read_fleurs_folder(
    folder: Path, split: str, language: str, wanted: set[str] | None
) -> list[Utterance]:
    path = folder / f"{split}.tsv"
    audio_dir = folder / "audio" / split
    tally = _Tally(f"fleurs {path}")
    rows = _tsv_rows(path)
    kept: list[Utterance] = []
    for row in rows:
        if not row or row == [""]:
            continue
        where = f"{path}:{rows.line_num}"
        if len(row) < 4:
            raise ValueError(
                f"{where}: {len(row)} tab-separated fields; a FLEURS row has id, file name, "
                "raw transcription, transcription, ... (no header); fix or remove the row."
            )
        tally.rows += 1
        file_name = row[1].strip()
        text = row[2] if row[2].strip() else row[3]
        utt = _keep(
            tally,
            wanted,
            utt_id=f"{language}_{Path(file_name).stem}",
            language=language,
            text=text,
            speaker="",  # FLEURS rows do not say who spoke
            path=audio_dir / file_name,
            row_name=where,
        )
        if utt is not None:
            kept.append(utt)
    return tally.finish(kept, wanted)


def read_fleurs(
    root: str | Path,
    split: str,
    languages: Sequence[str] | None = None,
    language: str | None = None,
    max_seconds: float | None = None,
) -> list[Utterance]:
    """The ``split`` of a FLEURS-style folder (one language's, or one per language).

    Args:
        root: ``<root>/<split>.tsv`` + ``<root>/audio/<split>/``, or ``<root>/<lang_code>/``
            folders as in the FLEURS release (``lt_lt``, ``es_419``).
        split: ``train``, ``dev`` or ``test``.
        languages: Keep only these languages (``None``: all).
        language: The language of a one-language folder whose name is not a language code
            (FLEURS rows do not carry one).
        max_seconds: As in :func:`read_common_voice`.
    """
    root, wanted = Path(root), _wanted(languages)
    language = None if language is None else language_code(language, "language")
    _check_root(root, "fleurs")
    if (root / f"{split}.tsv").is_file():
        code = language or _known_code(root.name)
        if code is None:
            raise ValueError(
                f"fleurs: the language of {root} is unknown (FLEURS rows do not carry one); "
                "pass language=, or name the folder after it (e.g. .../lt_lt)."
            )
        out = _read_fleurs_folder(root, split, code, wanted)
    else:
        folders = _language_folders(root, lambda f: (f / f"{split}.tsv").is_file(), wanted)
        if not folders:
            raise _no_split_file("fleurs", root, f"{split}.tsv")
        out = [u for f, code in folders for u in _read_fleurs_folder(f, split, code, wanted)]
    _check_audio(out, max_seconds)
    return out


# ---------------------------------------------------------------------------- JSONL
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


def _manifest(root: Path, split: str) -> tuple[Path, bool]:
    """The manifest to read and whether it is the split's own file (rows need no split)."""
    if root.is_dir():
        for suffix in _JSONL_SUFFIXES:
            if (root / f"{split}{suffix}").is_file():
                return root / f"{split}{suffix}", True
        raise ValueError(
            f"jsonl: {root} holds no {split}.jsonl; write one manifest per split there, or "
            "point data.root at a single .jsonl whose rows carry a 'split'."
        )
    if not root.name.endswith(_JSONL_SUFFIXES):
        raise ValueError(f"jsonl: {root} is not a .jsonl manifest or a folder of them.")
    return root, False


def _field(row: dict[str, Any], key: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: {key!r} is {type(value).__name__} {value!r}; it must be a string."
        )
    return value


def read_jsonl(
    root: str | Path,
    split: str,
    languages: Sequence[str] | None = None,
    language: str | None = None,
    max_seconds: float | None = None,
) -> list[Utterance]:
    """The ``split`` rows of a JSONL manifest.

    Args:
        root: A manifest whose rows each carry ``split``, or a folder with
            ``<split>.jsonl`` (whose rows' ``split``, if given, must match).
        split: ``train``, ``dev`` or ``test``.
        languages: Keep only these languages (``None``: all).
        language: The language of rows without a ``language`` field.
        max_seconds: As in :func:`read_common_voice`.
    """
    root, wanted = Path(root), _wanted(languages)
    language = None if language is None else language_code(language, "language")
    _check_root(root, "jsonl")
    path, own_file = _manifest(root, split)
    tally = _Tally(f"jsonl {path}")
    kept: list[Utterance] = []
    for number, line in utf8_lines(path):
        if isinstance(line, NotUtf8Error):
            raise line
        if not line.strip():
            continue
        where = f"{path}:{number}"
        row = loads_json(line, where)
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a row must be a JSON object, got {type(row).__name__}.")
        missing = [k for k in ("audio", "text") if k not in row]
        if missing:
            raise ValueError(
                f"{where}: no {missing}; every row needs 'audio' (a path) and 'text' (its "
                "transcript), with 'language' unless language= is given."
            )
        row_split = row.get("split")
        if row_split is None and not own_file:
            raise ValueError(
                f"{where}: no 'split'; give every row of a single manifest a 'split' "
                "(train/dev/test), or write one file per split (<folder>/<split>.jsonl)."
            )
        if row_split is not None and not isinstance(row_split, str):
            raise ValueError(f"{where}: 'split' must be a string, got {row_split!r}.")
        if own_file and row_split not in (None, split):
            raise ValueError(
                f"{where}: the row says split {row_split!r} inside {path.name}; move it to "
                f"its own split's file or fix the field."
            )
        if row_split is not None and row_split != split:
            continue
        tally.rows += 1
        if "language" in row:
            code = language_code(_field(row, "language", where), f"{where}: language")
        elif language is not None:
            code = language
        else:
            raise ValueError(f"{where}: no 'language'; add one to the row or pass language=.")
        audio = Path(_field(row, "audio", where))
        speaker = row.get("speaker")
        utt = _keep(
            tally,
            wanted,
            utt_id=str(row["id"]) if row.get("id") is not None else audio.as_posix(),
            language=code,
            text=_field(row, "text", where),
            speaker="" if speaker is None else str(speaker),
            path=audio if audio.is_absolute() else path.parent / audio,
            row_name=where,
        )
        if utt is not None:
            kept.append(utt)
    out = tally.finish(kept, wanted)
    _check_audio(out, max_seconds)
    return out


# ---------------------------------------------------------------------------- dispatch
_READERS: dict[str, Callable[..., list[Utterance]]] = {
    "common_voice": read_common_voice,
    "fleurs": read_fleurs,
    "jsonl": read_jsonl,
}

#: The on-disk formats :func:`read_source` reads.
FORMATS = tuple(_READERS)


def _check_root(root: Path, fmt: str) -> None:
    if not root.exists():
        raise ValueError(f"{fmt}: data.root {root} does not exist; fix the path.")


def read_source(
    source: str,
    root: str | Path,
    split: str,
    languages: Sequence[str] | None = None,
    language: str | None = None,
    max_seconds: float | None = None,
) -> list[Utterance]:
    """The ``split`` of an on-disk corpus in format ``source`` (one of :data:`FORMATS`).

    Utterances come with ``path`` set and ``audio=None``; :func:`load` decodes one. See the
    module docstring for the layouts and the rules for bad rows.
    """
    if source not in _READERS:
        raise ValueError(f"unknown source {source!r}; the on-disk formats are {list(FORMATS)}.")
    return _READERS[source](
        root, split, languages=languages, language=language, max_seconds=max_seconds
    )


def load(utterance: Utterance, max_seconds: float | None = 30.0) -> Utterance:
    """``utterance`` with its waveform read from ``path`` (mono float32, 16 kHz).

    An utterance whose audio is already in memory comes back unchanged; otherwise a new
    record is returned (the input is not modified). Errors are those of
    :func:`~apps.speech_asr.audio.load_audio`.
    """
    if utterance.audio is not None:
        return utterance
    if utterance.path is None:
        raise ValueError(f"utterance {utterance.id!r} has neither audio nor a path to read.")
    return dataclasses.replace(utterance, audio=load_audio(utterance.path, max_seconds))
