"""Brute-force references the speech tests compare against."""

from __future__ import annotations

from collections.abc import Iterable

from apps.speech_asr.model import BLANK


def collapse_path(labels: Iterable[int]) -> list[int]:
    """CTC's many-to-one map of a frame labelling: merge repeats, then drop blanks."""
    out, previous = [], BLANK
    for label in labels:
        if label != BLANK and label != previous:
            out.append(label)
        previous = label
    return out
