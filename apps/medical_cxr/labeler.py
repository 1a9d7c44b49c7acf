"""Rule-based CheXpert-style labeler: radiology report text -> 14 observation labels.

``label_report(text)`` reads a report sentence by sentence, finds mentions of each of the 14
CheXpert observations and classifies every mention as positive (1), negative (0) or uncertain
(-1) from the trigger words around it, in the spirit of the CheXpert labeler and NegEx:

* a negation trigger ("no", "without", "free of", "negative for", ...) or an uncertainty
  trigger ("possible", "may", "cannot exclude", ...) before the mention in the same clause;
  the *nearest* trigger wins, so "no pneumothorax, possible small effusion" gives a negative
  pneumothorax and an uncertain effusion;
* a post-trigger after the mention in the same phrase ("... has resolved", "... is not seen",
  "... cannot be excluded");
* observation-specific phrases that carry the value themselves ("heart size is normal" is a
  negative Cardiomegaly, "borderline heart size" an uncertain one).

Per report, mentions are aggregated as the CheXpert labeler does: positive if any mention is
positive, else uncertain if any is uncertain, else negative; ``None`` when never mentioned.
"No Finding" is 1 when no pathology (every observation except "No Finding" and "Support
Devices") is positive or uncertain, and 0 otherwise; all labels are ``None`` for empty text.

The rules favour precision on the phrasing of chest X-ray reports (IU X-ray, MIMIC-CXR); they
are a transparent stand-in for the CheXpert/CheXbert labelers, not a reimplementation of them.
Measured agreement with hand labels is in docs/medical_cxr.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .labeler_phrases import (
    FIXED,
    INHERITING_PRE,
    MENTIONS,
    NEGATION_POST,
    NEGATION_PRE,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    UNCERTAIN_POST,
    UNCERTAIN_PRE,
)

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)


#: Observations that count as pathology for "No Finding".
PATHOLOGIES: tuple[str, ...] = tuple(
    name for name in CHEXPERT_LABELS if name not in ("No Finding", "Support Devices")
)

_CLAUSE_BREAK = re.compile(
    r";|:|\b(?:but|however|although|though|which|whereas|except|otherwise|aside from)\b"
)
_SENTENCE_BREAK = re.compile(r"(?<=[.!])\s+|\n+|(?<=\.)(?=[A-Z])")


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])(?:" + "|".join(patterns) + r")(?![\w])")


_MENTION_RE = {name: _compile(pats) for name, pats in MENTIONS.items()}
_FIXED_RE = [(name, value, _compile([pat])) for name, value, pat in FIXED]
_TRIGGER_PRE = re.compile(
    r"(?<![\w])(?:(?P<inh>"
    + "|".join(INHERITING_PRE)
    + r")|(?P<unc>"
    + "|".join(UNCERTAIN_PRE)
    + r")|(?P<neg>"
    + "|".join(NEGATION_PRE)
    + r"))(?![\w])"
)
_UNCERTAIN_POST_RE = re.compile(r"^\W*(?:" + "|".join(UNCERTAIN_POST) + r")")
_NEGATION_POST_RE = re.compile(r"^\W*(?:" + "|".join(NEGATION_POST) + r")(?![\w])")
# How far (in characters) the post-trigger of a mention may be: the phrase right after it,
# up to the next comma ("Effusion and pneumothorax are not seen" negates both mentions).
_POST_WINDOW = 60


@dataclass(frozen=True)
class Mention:
    """One observation found in one clause, with the value its context gives it."""

    observation: str
    value: int
    sentence: str
    start: int
    end: int


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (on '.', '!' and line breaks); keeps '?' inside."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text) if s and s.strip()]


def _normalise(sentence: str) -> str:
    sentence = sentence.lower().replace("x-xxxx", "x-ray")
    sentence = re.sub(r"\bxxxx\b", " ", sentence)  # IU X-ray's anonymisation token
    sentence = re.sub(r"[ \t]+", " ", sentence)
    return sentence


def _clause_bounds(sentence: str, position: int) -> tuple[int, int]:
    """Start and end of the clause of ``sentence`` that contains ``position``."""
    start, end = 0, len(sentence)
    for match in _CLAUSE_BREAK.finditer(sentence):
        if match.end() <= position:
            start = match.end()
        elif match.start() >= position:
            end = match.start()
            break
    return start, end


def _context_value(sentence: str, start: int, end: int) -> int:
    """Value of the mention at ``sentence[start:end]`` from the triggers around it."""
    clause_start, clause_end = _clause_bounds(sentence, start)
    after = sentence[end:clause_end]
    comma = after.find(",")
    after = after[: comma if comma >= 0 else _POST_WINDOW][:_POST_WINDOW]
    candidates = _post_candidates(after)
    if any(_UNCERTAIN_POST_RE.search(text) for text in candidates):
        return UNCERTAIN
    if any(_NEGATION_POST_RE.search(text) for text in candidates):
        return NEGATIVE
    before = sentence[clause_start:start]
    triggers = list(_TRIGGER_PRE.finditer(before))
    if not triggers:
        return POSITIVE
    nearest = triggers[-1]
    if nearest.group("neg"):
        return NEGATIVE
    if nearest.group("inh") and any(t.group("neg") for t in triggers):
        return NEGATIVE
    # "no suspicious nodule", "no definite effusion": a negation right before the hedge.
    if len(triggers) > 1 and triggers[-2].group("neg"):
        between = before[triggers[-2].end() : nearest.start()]
        if "," not in between and len(between.split()) <= 2:
            return NEGATIVE
    return UNCERTAIN


_COORDINATED = [
    re.compile(rf"^\s*(?:,\s*)?(?:and|or|/)\s+(?:[\w-]+\s+){{{words}}}[\w-]+") for words in range(3)
]


def _post_candidates(after: str) -> list[str]:
    """The text after a mention, and the same text past a coordinated mention ("and X ...").

    So the shared post-trigger of "Effusion and pneumothorax are not seen" reaches both.
    """
    candidates = [after]
    for pattern in _COORDINATED:
        match = pattern.match(after)
        if match:
            candidates.append(after[match.end() :])
    return candidates


def find_mentions(text: str) -> list[Mention]:
    """Every observation mention in ``text`` with its per-mention value."""
    mentions: list[Mention] = []
    for raw in split_sentences(text):
        sentence = _normalise(raw)
        fixed: list[Mention] = []
        for name, value, pattern in _FIXED_RE:
            for match in pattern.finditer(sentence):
                if not _negated_fixed(sentence, match.start()):
                    fixed.append(Mention(name, value, raw, match.start(), match.end()))
        mentions.extend(fixed)
        for name, pattern in _MENTION_RE.items():
            for match in pattern.finditer(sentence):
                if any(_covers(m, name, match.span()) for m in fixed):
                    continue
                value = _context_value(sentence, match.start(), match.end())
                mentions.append(Mention(name, value, raw, match.start(), match.end()))
    return mentions


def _negated_fixed(sentence: str, start: int) -> bool:
    """A fixed phrase under a preceding 'no'/'not' is left to the generic rules."""
    clause_start, _ = _clause_bounds(sentence, start)
    triggers = list(_TRIGGER_PRE.finditer(sentence[clause_start:start]))
    return bool(triggers) and bool(triggers[-1].group("neg"))


def _covers(mention: Mention, name: str, span: tuple[int, int]) -> bool:
    """True when a fixed phrase of observation ``name`` already covers ``span``."""
    return mention.observation == name and mention.start < span[1] and span[0] < mention.end


def aggregate(mentions: Iterable[Mention]) -> dict[str, int | None]:
    """Per-observation label from all mentions: positive > uncertain > negative > None."""
    labels: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS)
    rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
    for mention in mentions:
        current = labels[mention.observation]
        if current is None or rank[mention.value] > rank[current]:
            labels[mention.observation] = mention.value
    return labels


def label_report(text: str) -> dict[str, int | None]:
    """Label a report over the 14 CheXpert observations.

    Returns a dict keyed by :data:`CHEXPERT_LABELS` with 1 (positive), 0 (negative), -1
    (uncertain) or ``None`` (not mentioned). Raises ``TypeError`` for non-string input.
    """
    if not isinstance(text, str):
        raise TypeError(
            f"label_report expects the report text as a str, got {type(text).__name__}; "
            "pass the report's findings and impression joined into one string"
        )
    if not text.strip():
        return dict.fromkeys(CHEXPERT_LABELS)
    labels = aggregate(find_mentions(text))
    abnormal = any(labels[name] in (POSITIVE, UNCERTAIN) for name in PATHOLOGIES)
    labels["No Finding"] = NEGATIVE if abnormal else POSITIVE
    return labels


def label_vector(
    labels: dict[str, int | None], uncertain_as: int = 0, missing_as: int = 0
) -> list[int]:
    """Binary vector in :data:`CHEXPERT_LABELS` order (uncertain and missing mapped as given)."""
    if uncertain_as not in (0, 1) or missing_as not in (0, 1):
        raise ValueError(
            f"uncertain_as={uncertain_as} / missing_as={missing_as} must be 0 or 1 "
            "(how an uncertain or unmentioned observation counts)"
        )
    unknown = set(labels) - set(CHEXPERT_LABELS)
    if unknown:
        raise KeyError(f"unknown observation(s) {sorted(unknown)}; expected {CHEXPERT_LABELS}")
    vector = []
    for name in CHEXPERT_LABELS:
        value = labels.get(name)
        if value is None:
            vector.append(missing_as)
        elif value == UNCERTAIN:
            vector.append(uncertain_as)
        else:
            vector.append(int(value == POSITIVE))
    return vector
