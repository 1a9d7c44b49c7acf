"""Languages, transcript normalisation and the character vocabulary of the speech app.

Every transcript the app trains or scores on goes through :func:`normalize` first, so the
references of every source (the embedded corpus, Common Voice, FLEURS, JSONL) are written the
same way: NFC, lowercase (Turkish dotted/dotless i handled), digits and punctuation removed,
letters outside the language's alphabet stripped of their accents where that gives an
alphabet letter (``café`` in German text becomes ``cafe``) and dropped otherwise, whitespace
collapsed. Apostrophes (and the Catalan middle dot of ``l·l``) survive only inside a word, in
the languages that write them there. WER and CER are then measured on what a character model
can actually emit.

The output vocabulary (:class:`CharVocabulary`) is built from the alphabets, not from the
training text: ``CharVocabulary.for_languages(sorted(LANGUAGES))`` gives the frozen
foundation's CTC head a row for every letter of every known language, so a tail language's
adapter can emit letters the head languages never used.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BLANK",
    "LANGUAGES",
    "SPACE",
    "CharVocabulary",
    "Language",
    "known_language",
    "normalize",
]

_BASIC = "abcdefghijklmnopqrstuvwxyz"
#: Characters read as an apostrophe (typographic quotes, the modifier letter, accents).
_APOSTROPHES = "'\u2019\u2018\u02bc\u02bb\u00b4\u0060\u2032"
#: Romanian is often typed with cedilla letters; the standard spelling has a comma below.
_ROMANIAN = str.maketrans({"ş": "ș", "ţ": "ț", "Ş": "Ș", "Ţ": "Ț"})
#: Language-specific upper-to-lower letters Python's ``str.lower`` gets wrong.
_TURKIC_LOWER = str.maketrans({"I": "ı", "İ": "i"})
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Language:
    """A language the app knows: how to speak it, where its words come from, its letters.

    Attributes:
        code: ISO 639-1 code, the id everything else uses (``"is"``).
        name: English name, for reports.
        espeak_voice: espeak-ng voice name (``"<voice>+m3"`` picks a speaker variant).
        wordfreq: ``wordfreq`` language code of its word list (``"sh"`` for Croatian).
        alphabet: Lowercase letters, diacritics included (precomposed, NFC).
        word_marks: Non-letters kept inside a word (``'`` in French, ``·`` in Catalan).
    """

    code: str
    name: str
    espeak_voice: str
    wordfreq: str
    alphabet: str
    word_marks: str = ""

    @property
    def characters(self) -> str:
        """Every character a normalised transcript of this language may hold, but space."""
        return self.alphabet + self.word_marks


def _language(
    code: str,
    name: str,
    extra: str,
    *,
    wordfreq: str | None = None,
    drop: str = "",
    marks: str = "",
) -> Language:
    """A Latin-script language: a-z less ``drop``, plus the letters ``extra``."""
    letters = "".join(c for c in _BASIC if c not in drop) + extra
    return Language(code, name, code, wordfreq or code, letters, marks)


#: Every language the app knows: both espeak-ng (synthesis) and wordfreq (words) have it.
#: Estonian is missing because wordfreq has no list for it; Croatian uses wordfreq's
#: Serbo-Croatian (Latin) list.
LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in [
        _language("ca", "Catalan", "àçèéíïòóúü", marks="'·"),
        _language("cs", "Czech", "áčďéěíňóřšťúůýž"),
        _language("da", "Danish", "åæéø"),
        _language("de", "German", "äöüß"),
        _language("en", "English", "", marks="'"),
        _language("es", "Spanish", "áéíñóúü"),
        _language("fi", "Finnish", "åäöšž"),
        _language("fr", "French", "àâæçèéêëîïôùûüÿœ", marks="'"),
        _language("hr", "Croatian", "čćđšž", wordfreq="sh"),
        _language("hu", "Hungarian", "áéíóöúüőű"),
        _language("id", "Indonesian", ""),
        _language("is", "Icelandic", "áæéíðóöúýþ"),
        _language("it", "Italian", "àèéìíîòóùú", marks="'"),
        _language("lt", "Lithuanian", "ąčėęįšūųž"),
        _language("lv", "Latvian", "āčēģīķļņšūž"),
        _language("ms", "Malay", ""),
        _language("nb", "Norwegian Bokmål", "åæéøóòô"),
        _language("nl", "Dutch", "áèéëïóöü", marks="'"),
        _language("pl", "Polish", "ąćęłńóśźż"),
        _language("pt", "Portuguese", "àáâãçéêíóôõú"),
        _language("ro", "Romanian", "âîășț"),
        _language("sk", "Slovak", "áäčďéíĺľňóôŕšťúýž"),
        _language("sl", "Slovenian", "čćđšž"),
        _language("sv", "Swedish", "åäéö"),
        _language("tr", "Turkish", "âçîöûüğış", drop="qwx"),
    ]
}
#: Other spellings of a code that :func:`known_language` accepts (Common Voice locales).
_ALIASES = {"no": "nb", "nn": "nb", "in": "id", "sh": "hr"}


def known_language(code: str) -> Language:
    """The :class:`Language` of ``code``; a region suffix is ignored (``"sv-SE"`` is ``sv``).

    Raises:
        ValueError: ``code`` is not a known language; the message lists the known codes.
    """
    if not isinstance(code, str):
        raise ValueError(f"language code {code!r} must be a string such as 'es'.")
    key = code.strip().lower().replace("_", "-")
    for candidate in (key, key.split("-")[0]):
        candidate = _ALIASES.get(candidate, candidate)
        if candidate in LANGUAGES:
            return LANGUAGES[candidate]
    raise ValueError(
        f"unknown language code {code!r}; known codes: {', '.join(sorted(LANGUAGES))}. "
        "Use one of them (a region suffix such as 'sv-SE' is accepted)."
    )


def _strip_marks(char: str) -> str:
    """The letters of ``char`` without combining marks (``é`` -> ``e``, ``ł`` -> ``ł``)."""
    return "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))


def normalize(text: str, language: str | Language) -> str:
    """The transcript ``text`` normalised for ``language`` (idempotent).

    Steps: NFC; Romanian cedilla letters to comma-below; lowercase (Turkish ``I`` -> ``ı``,
    ``İ`` -> ``i``); a letter outside the alphabet loses its accents if that makes it an
    alphabet letter, else is dropped; apostrophe-like characters become ``'`` and, like the
    Catalan ``·``, are kept only between two letters in languages that write them (removed
    otherwise, joining the word); digits, punctuation and symbols become spaces; runs of
    whitespace become one space, trimmed at both ends.
    """
    lang = language if isinstance(language, Language) else known_language(language)
    alphabet, marks = set(lang.alphabet), set(lang.word_marks)
    text = unicodedata.normalize("NFC", text)
    if lang.code == "ro":
        text = text.translate(_ROMANIAN)
    if lang.code == "tr":
        text = text.translate(_TURKIC_LOWER)
    text = unicodedata.normalize("NFC", text.lower())
    kept: list[str] = []
    for char in text:
        if char in alphabet:
            kept.append(char)
        elif char in _APOSTROPHES or char in marks or char == "·":
            mark = "'" if char in _APOSTROPHES else char
            if mark in marks:
                kept.append(mark)
        elif unicodedata.category(char).startswith("L"):
            kept.extend(c for c in _strip_marks(char) if c in alphabet)
        elif unicodedata.category(char).startswith("M"):
            continue  # a stray combining mark (e.g. the dot of a lowercased "İ")
        else:
            kept.append(" ")
    out = [
        c
        for i, c in enumerate(kept)
        if c not in marks
        or (0 < i < len(kept) - 1 and kept[i - 1] in alphabet and kept[i + 1] in alphabet)
    ]
    return _SPACES.sub(" ", "".join(out)).strip()


BLANK = "<blank>"
SPACE = " "


class CharVocabulary:
    """Characters <-> ids for the CTC output layer.

    Id 0 is the CTC blank (``"<blank>"``), id 1 the word separator ``" "``, then every
    character of the vocabulary's languages in code-point order, so the same languages always
    give the same ids.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if len(tokens) < 3 or tokens[0] != BLANK or tokens[1] != SPACE:
            raise ValueError(
                f"vocabulary tokens must start with {BLANK!r}, {SPACE!r} and hold at least "
                f"one character; got {tokens[:5]!r}."
            )
        bad = [t for t in tokens[2:] if len(t) != 1 or t.isspace()]
        if bad:
            raise ValueError(f"vocabulary characters must be single non-space characters: {bad}")
        if len(set(tokens)) != len(tokens):
            duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"vocabulary tokens repeat: {duplicates}")
        self.tokens: list[str] = tokens
        self._ids = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def for_languages(cls, codes: Iterable[str]) -> CharVocabulary:
        """The vocabulary of every character of these languages (unknown code: ValueError)."""
        chars: set[str] = set()
        for code in codes:
            chars.update(known_language(code).characters)
        if not chars:
            raise ValueError("CharVocabulary.for_languages needs at least one language code.")
        return cls([BLANK, SPACE, *sorted(chars)])

    @property
    def blank(self) -> int:
        """The CTC blank's id (0)."""
        return 0

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"CharVocabulary({len(self)} tokens: {''.join(self.tokens[2:])!r})"

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``'s characters (normalise it first).

        Raises:
            ValueError: a character has no id; the message names it and its position.
        """
        ids = []
        for position, char in enumerate(text):
            index = self._ids.get(char)
            if index is None or index == self.blank:
                raise ValueError(
                    f"character {char!r} (U+{ord(char):04X}) at position {position} of "
                    f"{text!r} is not in the vocabulary; normalise the text with "
                    "text.normalize(text, language) or add its language to the vocabulary."
                )
            ids.append(index)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; blanks are skipped (collapse CTC repeats before calling).

        Raises:
            ValueError: an id outside ``0 .. len(self) - 1``.
        """
        out = []
        for index in ids:
            index = int(index)
            if not 0 <= index < len(self.tokens):
                raise ValueError(
                    f"token id {index} is outside the vocabulary (0..{len(self) - 1})."
                )
            if index != self.blank:
                out.append(self.tokens[index])
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (:meth:`from_dict` reads it back)."""
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CharVocabulary:
        """The vocabulary :meth:`to_dict` wrote."""
        if "tokens" not in data:
            raise ValueError(f"a CharVocabulary dict needs a 'tokens' list; got keys {list(data)}")
        return cls(data["tokens"])
