"""Pseudo-labelled training audio: a teacher's transcripts for utterances it was not given.

A pseudo-label file is JSON written by the noisy-student pipeline
(:mod:`apps.speech_asr.noisy_student`)::

    {"teacher": "<what produced the texts>",
     "texts": {"lt-train-00030": "labas rytas", ...}}

The ids name utterances of the embedded corpus's **train** split beyond the labelled ones
(``<language>-train-<index>`` with ``index >= data.train_utterances[language]``): the same
speakers and recording conditions, but their true transcripts are never read. With
``data.pseudo_labels`` the data module synthesises those utterances and trains on the
teacher's texts for them, next to the labelled ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text

from .text import normalize
from .utterance import Utterance

_ID = re.compile(r"^(?P<language>[a-z]{2,3})-train-(?P<index>\d+)$")


def write_pseudo_labels(path: str | Path, texts: Mapping[str, str], teacher: str) -> Path:
    """Write a pseudo-label file atomically; returns its path."""
    path = Path(path)
    body = {"teacher": teacher, "texts": dict(texts)}
    atomic_write_text(path, json.dumps(body, indent=1, ensure_ascii=False) + "\n")
    return path


def read_pseudo_labels(path: str | Path, labelled: Mapping[str, int]) -> dict[str, dict[int, str]]:
    """``{language: {index: text}}`` from a pseudo-label file, checked against the labelled
    counts: every id must be a train utterance of a tail language beyond its labelled ones.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable JSON, an id of another form, another language, or an
            utterance that is labelled already; the message names the file and the id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data.pseudo_labels: {path} does not exist; write it with "
            "python -m apps.speech_asr.noisy_student (or apps.speech_asr.pseudo_labels)."
        )
    try:
        body: Any = json.loads(path.read_text(encoding="utf-8"))
        texts = body["texts"]
        if not isinstance(texts, dict):
            raise TypeError("texts is not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"data.pseudo_labels: {path} is not a pseudo-label file ({err}); expected JSON "
            '{"teacher": ..., "texts": {"<language>-train-<index>": "<text>", ...}}.'
        ) from err
    out: dict[str, dict[int, str]] = {}
    for utterance_id, text in texts.items():
        match = _ID.match(str(utterance_id))
        if match is None or not isinstance(text, str):
            raise ValueError(
                f"data.pseudo_labels: {path} has the entry {utterance_id!r}: {text!r}; ids "
                "are '<language>-train-<index>' and texts strings."
            )
        language, index = match["language"], int(match["index"])
        if language not in labelled:
            raise ValueError(
                f"data.pseudo_labels: {path} labels {utterance_id!r}, but {language!r} is not "
                f"one of data.languages {sorted(labelled)}."
            )
        if index < labelled[language]:
            raise ValueError(
                f"data.pseudo_labels: {path} labels {utterance_id!r}, one of the "
                f"{labelled[language]} labelled {language} utterances "
                f"(data.train_utterances); pseudo-labels are for the utterances after them."
            )
        out.setdefault(language, {})[index] = normalize(text, language)
    return out


def with_pseudo_labels(
    utterances: list[Utterance], labelled: int, texts: Mapping[int, str]
) -> list[Utterance]:
    """The first ``labelled`` utterances as they are, then those with a pseudo-label (its
    text in place of the true one); unlabelled ones without a usable text are left out."""
    out = list(utterances[:labelled])
    for index, utterance in enumerate(utterances[labelled:], start=labelled):
        text = texts.get(index, "")
        if text:
            out.append(replace(utterance, text=text))
    return out
