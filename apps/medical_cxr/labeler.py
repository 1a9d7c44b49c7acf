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

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

#: Observations that count as pathology for "No Finding".
PATHOLOGIES: tuple[str, ...] = tuple(
    name for name in CHEXPERT_LABELS if name not in ("No Finding", "Support Devices")
)

# --- mentions ---------------------------------------------------------------------------------

_MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"(?:widen\w*|enlarg\w*|prominen\w*) (?:of (?:the )?)?(?:cardio)?mediastin\w*",
        r"(?:cardio)?mediastin\w* (?:silhouette |contours? )?(?:is |are |appears |remains )?"
        r"(?:\w+ )?(?:widen\w*|enlarg\w*|prominen\w*)",
        r"enlarged cardiomediastinum",
    ],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"cardiac (?:enlargement|silhouette enlargement)",
        r"(?:enlarged|large|prominent) (?:heart|cardiac silhouette|cardiac shadow)",
        r"enlargement of the (?:heart|cardiac silhouette)",
        r"(?:heart|cardiac silhouette|heart size|cardiac size) (?:is |are |appears |remains )?"
        r"(?:again |still )?(?:\w+ )?(?:enlarged|large|increased)",
    ],
    "Lung Opacity": [
        r"opaci\w*",
        r"infiltrat\w*",
        r"air ?-?space (?:disease|process)",
        r"(?:increased|interstitial|hazy|patchy) (?:markings?|densit\w*|prominence)",
        r"densit(?:y|ies)",
        r"haziness",
        r"ground[- ]glass",
        r"reticul\w*",
    ],
    "Lung Lesion": [
        r"mass(?:es)?",
        r"nodul\w*",
        r"lesions?",
        r"neoplasm\w*",
        r"tumou?rs?",
        r"carcinoma\w*",
        r"cavitary",
    ],
    "Edema": [
        r"edema",
        r"(?:heart|cardiac) failure",
        r"chf",
        r"(?:vascular|venous|pulmonary) congestion",
        r"vascular (?:prominence|engorgement|redistribution)",
        r"cephalization",
    ],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [r"pneumoni\w*", r"infectio\w*", r"infectious"],
    "Atelectasis": [r"atelecta\w*", r"collapse[d]?"],
    "Pneumothorax": [r"pneumothora\w*"],
    "Pleural Effusion": [
        r"(?<!pericardial )effusions?",
        r"pleural fluid",
        r"(?:blunt\w*) (?:of )?(?:the )?(?:\w+ )?(?:costophrenic|cp) (?:angles?|sulc\w*)",
        r"(?:costophrenic|cp) (?:angles?|sulc\w*) (?:is |are )?blunt\w*",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|plaques?|scarring|calcification)",
        r"pleuro-?parenchymal (?:scarring|thickening|scar)",
        r"fibrothorax",
        r"apical (?:pleural )?(?:capping|cap)",
    ],
    "Fracture": [r"fractur\w*", r"fx"],
    "Support Devices": [
        r"pacemaker",
        r"(?:monitor(?:ing)?|ecg|ekg|pacer|pacemaker|epicardial|pacing) (?:leads?|wires?)",
        r"pacer",
        r"(?:picc|central venous|central|venous|arterial|swan-ganz|port) (?:line|catheter)s?",
        r"lines?",
        r"tubes?",
        r"catheters?",
        r"(?:sternotomy|cerclage) wires?",
        r"(?:surgical |vascular )?clips",
        r"stents?",
        r"port-?a-?cath",
        r"mediport",
        r"defibrillator",
        r"icd",
        r"(?:prosthetic|replacement) valve",
        r"hardware",
        r"drains?",
        r"devices?",
    ],
}

# Phrases that carry the value themselves: (observation, value, pattern).
_FIXED: list[tuple[str, int, str]] = [
    (
        "Cardiomegaly",
        UNCERTAIN,
        r"(?:upper limits? of normal|borderline)"
        r"(?: (?:heart|cardiac) (?:size|silhouette)| cardiomegaly| enlarge\w*)?",
    ),
    (
        "Cardiomegaly",
        UNCERTAIN,
        r"(?:heart|cardiac) (?:size|silhouette) (?:is |are |appears |remains )?"
        r"(?:at the )?(?:upper limits? of normal|borderline)",
    ),
    (
        "Cardiomegaly",
        NEGATIVE,
        r"(?:heart|cardiac|heart silhouette|cardiac silhouette|cardiac shadow"
        r"|heart size|cardiac size)(?: and (?:the )?\w+(?: \w+)?)? (?:is |are |appears? |remains )?"
        r"(?:\w+ )?(?:normal|within normal limits|not enlarged|unremarkable|stable in size)",
    ),
    (
        "Cardiomegaly",
        NEGATIVE,
        r"(?:normal|unremarkable|stable) (?:heart|cardiac)"
        r"(?: size| silhouette| shadow)?",
    ),
    ("Cardiomegaly", NEGATIVE, r"normal-?\s?sized? heart"),
    (
        "Enlarged Cardiomediastinum",
        NEGATIVE,
        r"(?:cardio)?mediastin\w*"
        r"(?: (?:silhouette|contours?|size|width))?(?: and (?:hilar|heart|cardiac)\w*(?: \w+)?)?"
        r" (?:is |are |appears |remains )?(?:\w+ )?"
        r"(?:normal|within normal limits|unremarkable|not widened|stable|unchanged)",
    ),
    (
        "Enlarged Cardiomediastinum",
        NEGATIVE,
        r"(?:normal|unremarkable|stable) (?:cardio)?mediastin\w*",
    ),
    (
        "Enlarged Cardiomediastinum",
        NEGATIVE,
        r"(?:heart|cardiac|hilar) and (?:cardio)?mediastin\w*"
        r"(?: \w+)? (?:is |are |appears? )?(?:normal|within normal limits|unremarkable)",
    ),
]

# --- triggers ---------------------------------------------------------------------------------

# Checked before generic negation so "cannot exclude" is not read as "no".
_UNCERTAIN_PRE = [
    r"cannot (?:be )?(?:exclude\w*|ruled? out)",
    r"can not (?:be )?(?:exclude\w*|ruled? out)",
    r"(?:may|might|could|can)(?: \w+)? (?:represent|be|reflect|indicate|relate)",
    r"(?:may|might|could)",
    r"possib\w*",
    r"probabl\w*",
    r"likely",
    r"suggest\w*",
    r"suspect\w*",
    r"(?:concern|concerning|worrisome) (?:for|of)",
    r"question(?:able)?(?: of)?",
    r"(?:rule|ruled) out",
    r"r/o",
    r"versus",
    r"vs\.?",
    r"differential",
    r"consider\w*",
    r"equivocal",
    r"borderline",
    r"indeterminate",
    r"presum\w*",
    r"\?",
]
# Hedges that modify one mention; after a negation in the same clause they inherit it
# ("no focal consolidation, suspicious opacity or pneumothorax", "no line to suggest X").
_INHERITING_PRE = [
    r"suspicio\w*(?: for| of)?",
    r"apparent",
    r"to (?:suggest|indicate)\w*",
]
_NEGATION_PRE = [
    r"no",
    r"not",
    r"without",
    r"negative for",
    r"free of",
    r"clear of",
    r"absence of",
    r"absent",
    r"resolution of",
    r"resolved",
    r"removal of",
    r"interval removal of",
    r"neither",
    r"nor",
    r"rather than",
    r"never",
]
_UNCERTAIN_POST = [
    r"(?:is |are |was |were )?(?:not |cannot be |can not be |can't be )(?:\w+ )?"
    r"(?:excluded|ruled out)",
    r"(?:is |are )?(?:possible|suspected|questioned|likely|not excluded|difficult to exclude)",
    r"(?:versus|vs\.?) ",
    r"\?",
]
_NEGATION_POST = [
    r"(?:is |are |has |have |was |were )(?:been )?(?:not |no longer )"
    r"(?:seen|present|identified|visualized|appreciated|evident|demonstrated|noted|visible)",
    r"(?:is |are |has |have )(?:been )?(?:resolved|removed|absent|cleared)",
    r"(?:has |have )?resolved",
    r"(?:is |are )?absent",
]

_CLAUSE_BREAK = re.compile(
    r";|:|\b(?:but|however|although|though|which|whereas|except|otherwise|aside from)\b"
)
_SENTENCE_BREAK = re.compile(r"(?<=[.!])\s+|\n+|(?<=\.)(?=[A-Z])")


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])(?:" + "|".join(patterns) + r")(?![\w])")


_MENTION_RE = {name: _compile(pats) for name, pats in _MENTIONS.items()}
_FIXED_RE = [(name, value, _compile([pat])) for name, value, pat in _FIXED]
_TRIGGER_PRE = re.compile(
    r"(?<![\w])(?:(?P<inh>"
    + "|".join(_INHERITING_PRE)
    + r")|(?P<unc>"
    + "|".join(_UNCERTAIN_PRE)
    + r")|(?P<neg>"
    + "|".join(_NEGATION_PRE)
    + r"))(?![\w])"
)
_UNCERTAIN_POST_RE = re.compile(r"^\W*(?:" + "|".join(_UNCERTAIN_POST) + r")")
_NEGATION_POST_RE = re.compile(r"^\W*(?:" + "|".join(_NEGATION_POST) + r")(?![\w])")
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
