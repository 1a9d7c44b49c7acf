import math
import random

import jiwer
import pytest

from apps.speech_asr.metrics import (
    character_error_rate,
    edit_distance,
    per_language_rates,
    relative_reduction,
    word_error_rate,
)

# Letters of the tail languages (Lithuanian, Latvian, Slovene, Icelandic) and a few more, a
# decomposed e + combining acute, and whitespace of several kinds.
LETTERS = "abcdeėęįšųūžāēīķļņčđðþæöí" + "e\u0301"
SPACES = [" ", " ", " ", "  ", "\t", " \n "]


def _brute_force(a, b):
    """Textbook O(len(a) * len(b)) Levenshtein table."""
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return prev[-1]


def _sentence(rng, max_words=8, letters=LETTERS):
    words = [
        "".join(rng.choice(letters) for _ in range(rng.randint(1, 6)))
        for _ in range(rng.randint(0, max_words))
    ]
    text = ""
    for w in words:
        text += w + rng.choice(SPACES)
    return rng.choice(["", " ", "  "]) + text  # leading and trailing whitespace too


def _perturb(rng, text):
    chars = list(text)
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        pos = rng.randint(0, len(chars))
        if op < 0.3 and chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(LETTERS + " ")
        elif op < 0.6 and chars:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars.insert(pos, rng.choice(LETTERS + " "))
    return "".join(chars)


def test_edit_distance_matches_the_dynamic_programme():
    rng = random.Random(0)
    for _ in range(3000):
        # lengths past 64 cross a machine word: the bit vectors are Python integers
        a = [rng.randint(0, 3) for _ in range(rng.randint(0, 90))]
        b = [rng.randint(0, 4) for _ in range(rng.randint(0, 90))]
        assert edit_distance(a, b) == _brute_force(a, b)
        assert edit_distance(b, a) == _brute_force(a, b)
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance(["a", "b"], []) == 2
    assert edit_distance([], ["x"]) == 1


def test_rates_equal_jiwer_on_random_corpora():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 12)
        refs = [_sentence(rng) for _ in range(n)]
        if not any(r.split() for r in refs):
            refs[0] = "ėjo"  # a rate needs at least one reference word
        hyps = [rng.choice([_perturb(rng, r), _sentence(rng), ""]) for r in refs]
        assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
        assert character_error_rate(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)


def test_whitespace_and_unicode_follow_jiwer():
    # CER: the ends are stripped, inner spaces count, a doubled one twice.
    assert character_error_rate(["a  b"], ["a b"]) == jiwer.cer(["a  b"], ["a b"]) == 0.25
    assert character_error_rate(["  ab "], ["ab"]) == jiwer.cer(["  ab "], ["ab"]) == 0.0
    # WER: one tab does not split a word (jiwer collapses only runs of 2+), so reference
    # "a\tb" is one word and "a b" costs a substitution and an insertion.
    assert word_error_rate(["a\tb"], ["a b"]) == jiwer.wer(["a\tb"], ["a b"]) == 2.0
    assert word_error_rate(["a\t\tb"], ["a b"]) == jiwer.wer(["a\t\tb"], ["a b"]) == 0.0
    # Code points, not graphemes: a decomposed é is two characters (text.normalize does NFC).
    decomposed, composed = "e\u0301", "\u00e9"
    assert character_error_rate([decomposed], [composed]) == jiwer.cer([decomposed], [composed])
    assert character_error_rate([decomposed], [composed]) == 1.0
    assert character_error_rate(["ąčę"], ["ace"]) == jiwer.cer(["ąčę"], ["ace"]) == 1.0


def test_empty_hypotheses_and_empty_references_inside_a_corpus():
    refs, hyps = ["šešios žąsys", "", "ég er"], ["", "auka", "ég er"]
    assert word_error_rate(refs, hyps) == jiwer.wer(refs, hyps) == pytest.approx(3 / 4)
    assert character_error_rate(refs, hyps) == jiwer.cer(refs, hyps) == pytest.approx(16 / 17)
    assert word_error_rate(["a b"], [""]) == 1.0
    assert word_error_rate(["a b c"], ["a b c d e f"]) == 1.0  # insertions can pass 1


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="at least one reference"):
        word_error_rate([], [])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        character_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="wrap a single transcript in a list"):
        word_error_rate("a b", "a b")
    # jiwer returns the insertion count (not a rate) when no reference has a word; we refuse.
    assert jiwer.wer(["", " "], ["a b", "c"]) == 3
    with pytest.raises(ValueError, match="hold no word"):
        word_error_rate(["", " "], ["a b", "c"])
    with pytest.raises(ValueError, match="hold no character"):
        character_error_rate([" "], ["x"])


def test_relative_reduction_rules():
    assert relative_reduction(0.4, 0.3) == pytest.approx(0.25)
    assert relative_reduction(0.2, 0.3) == pytest.approx(-0.5)
    assert relative_reduction(0.0, 0.0) == 0.0
    assert math.isnan(relative_reduction(0.0, 0.1))
    assert math.isnan(relative_reduction(math.nan, 0.1))
    assert math.isnan(relative_reduction(0.1, math.nan))
    with pytest.raises(ValueError, match="cannot be negative"):
        relative_reduction(-0.1, 0.1)


def test_per_language_rates_group_in_first_seen_order():
    rng = random.Random(2)
    languages = [rng.choice(["lt", "is", "sl"]) for _ in range(60)]
    refs = [_sentence(rng, letters="abcšž") for _ in languages]
    refs = [r if r.strip() else "x" for r in refs]
    hyps = [_perturb(rng, r) for r in refs]
    rates = per_language_rates(languages, refs, hyps)
    assert list(rates) == list(dict.fromkeys(languages))
    for lang, r in rates.items():
        mine = [i for i, code in enumerate(languages) if code == lang]
        lang_refs, lang_hyps = [refs[i] for i in mine], [hyps[i] for i in mine]
        assert r["wer"] == pytest.approx(jiwer.wer(lang_refs, lang_hyps), abs=1e-12)
        assert r["cer"] == pytest.approx(jiwer.cer(lang_refs, lang_hyps), abs=1e-12)
        assert r["utterances"] == len(mine)
        words = jiwer.process_words(lang_refs, lang_hyps)
        chars = jiwer.process_characters(lang_refs, lang_hyps)
        assert r["words"] == words.hits + words.substitutions + words.deletions
        assert r["characters"] == chars.hits + chars.substitutions + chars.deletions
    with pytest.raises(ValueError, match="one language code per utterance"):
        per_language_rates(["lt"], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match=r"language 'is': .*hold no word"):
        per_language_rates(["lt", "is"], ["a", " "], ["a", "b"])
