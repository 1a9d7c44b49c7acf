"""Languages, per-language transcript normalisation and the character vocabulary."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest

from apps.speech_asr.text import (
    BLANK,
    LANGUAGES,
    SPACE,
    CharVocabulary,
    known_language,
    normalize,
)


@pytest.mark.parametrize(
    ("language", "raw", "expected"),
    [
        ("es", "¡Hola, Mundo! ¿Qué tal?", "hola mundo qué tal"),
        ("es", "Niño  pequeño\t y\nmás", "niño pequeño y más"),
        ("de", "Die Straße 12 in Köln.", "die straße in köln"),
        ("de", "Ein Café, geht's?", "ein cafe gehts"),  # é is not German: its accent goes
        ("tr", "İSTANBUL ILIK", "istanbul ılık"),  # Turkish dotted and dotless i
        ("de", "İSTANBUL ILIK", "istanbul ilik"),  # elsewhere I is i, İ loses its dot
        ("ro", "Ştiinţă şi ţară", "știință și țară"),  # cedilla -> comma below
        ("fr", "L’homme d’État, « aujourd'hui »", "l'homme d'état aujourd'hui"),
        ("fr", "'Bonjour' dit-il", "bonjour dit il"),  # quotes are not apostrophes
        ("it", "Un'altra cosa...", "un'altra cosa"),
        ("ca", "La col·lecció · d'art", "la col·lecció d'art"),
        ("es", "col·lecció", "collecció"),  # no middle dot in Spanish
        ("is", "Þetta er GOTT, ÆÐI!", "þetta er gott æði"),
        ("lt", "Ąžuolas ir Ėglė", "ąžuolas ir ėglė"),
        ("lv", "Ģimene un Ķirbis", "ģimene un ķirbis"),
        ("sl", "Čebula, špinača, Žaba", "čebula špinača žaba"),
        ("es", "Łódź 2024", "ódz"),  # ł has no Spanish form, ź loses its accent
        ("pl", "Łódź 2024", "łódź"),
        ("en", "Don't stop—it's 5 o'clock", "don't stop it's o'clock"),
        ("es", "...", ""),
    ],
)
def test_normalize_per_language(language: str, raw: str, expected: str) -> None:
    assert normalize(raw, language) == expected


def test_normalize_composes_nfc() -> None:
    decomposed = "Que\u0301 pasa"  # e + combining acute
    assert normalize(decomposed, "es") == "qué pasa"
    assert unicodedata.is_normalized("NFC", normalize(decomposed, "es"))
    assert normalize(decomposed, "de") == "que pasa"  # no é in German


def test_normalize_is_idempotent_and_stays_in_the_alphabet() -> None:
    """Random strings over letters of every language, marks, quotes, digits, punctuation."""
    pool = (
        "".join(sorted({c for lang in LANGUAGES.values() for c in lang.characters}))
        + "ABCÉÖÇŞŢİIĄŁ"
        + "'’‘ʼ´`·.,;:!?¿¡-—«»\"()[]0123456789  \t\n"
        + "\u0301\u0308\u0307ǆĳŀ€$%&"
    )
    rng = random.Random(0)
    for code, lang in LANGUAGES.items():
        allowed = set(lang.characters) | {" "}
        for _ in range(200):
            text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
            once = normalize(text, code)
            assert normalize(once, code) == once, (code, text)
            assert set(once) <= allowed, (code, text, once)
            assert once == once.strip() and "  " not in once
            for i, char in enumerate(once):  # word marks only between two letters
                if char in lang.word_marks:
                    assert once[i - 1] in lang.alphabet and once[i + 1] in lang.alphabet


def test_unknown_language_lists_the_known_codes() -> None:
    with pytest.raises(ValueError, match="unknown language code 'xx'") as info:
        known_language("xx")
    for code in ("es", "de", "lt", "lv", "sl", "is"):
        assert code in str(info.value)
    with pytest.raises(ValueError, match="known codes"):
        normalize("hola", "klingon")


def test_known_language_accepts_locales_and_aliases() -> None:
    assert known_language("sv-SE").code == "sv"
    assert known_language("pt_BR").code == "pt"
    assert known_language("ES").code == "es"
    assert known_language("no").code == "nb"
    assert known_language(LANGUAGES["is"].code) is LANGUAGES["is"]


def test_languages_are_consistent() -> None:
    import wordfreq

    available = set(wordfreq.available_languages())
    required = {"es", "de", "it", "pt", "fr", "pl", "cs", "sk", "sl", "lt", "lv", "is", "fi"}
    assert required <= set(LANGUAGES)
    for code, lang in LANGUAGES.items():
        assert lang.code == code
        assert lang.wordfreq in available, code
        assert unicodedata.is_normalized("NFC", lang.alphabet)
        assert lang.alphabet == lang.alphabet.lower()
        assert len(set(lang.characters)) == len(lang.characters), code
        assert all(c.isalpha() for c in lang.alphabet)
        assert not any(c.isalpha() or c.isspace() for c in lang.word_marks)


def test_vocabulary_layout_is_deterministic() -> None:
    vocab = CharVocabulary.for_languages(sorted(LANGUAGES))
    assert vocab.tokens[:2] == [BLANK, SPACE] and vocab.blank == 0
    assert vocab.tokens[2:] == sorted(vocab.tokens[2:])
    assert len(vocab) == len(set(vocab.tokens))
    every = {c for lang in LANGUAGES.values() for c in lang.characters}
    assert set(vocab.tokens[2:]) == every
    assert CharVocabulary.for_languages(["de", "es"]) == CharVocabulary.for_languages(["es", "de"])
    es = CharVocabulary.for_languages(["es"])
    assert "".join(es.tokens[2:]) == "abcdefghijklmnopqrstuvwxyzáéíñóúü"


def test_vocabulary_round_trip() -> None:
    vocab = CharVocabulary.for_languages(sorted(LANGUAGES))
    samples = {
        "is": "Þetta er gott æði",
        "lt": "Ąžuolas ir ėglė",
        "ca": "La col·lecció d'art",
        "tr": "İstanbul ılık",
        "ro": "Ştiinţă",
    }
    for code, raw in samples.items():
        text = normalize(raw, code)
        ids = vocab.encode(text)
        assert all(0 < i < len(vocab) for i in ids)
        assert vocab.decode(ids) == text
        assert vocab.decode([0, *ids, 0]) == text  # blanks are skipped
    again = CharVocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.encode("añø") == vocab.encode("añø")


def test_vocabulary_errors_name_the_problem() -> None:
    es = CharVocabulary.for_languages(["es"])
    with pytest.raises(ValueError, match=r"'ł' \(U\+0142\) at position 1"):
        es.encode("ał")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        es.encode(BLANK)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        es.decode([len(es)])
    with pytest.raises(ValueError, match="must start with"):
        CharVocabulary(["a", " ", "b"])
    with pytest.raises(ValueError, match="repeat"):
        CharVocabulary([BLANK, SPACE, "a", "a"])
    with pytest.raises(ValueError, match="tokens"):
        CharVocabulary.from_dict({"letters": []})
    with pytest.raises(ValueError, match="known codes"):
        CharVocabulary.for_languages(["es", "xx"])
