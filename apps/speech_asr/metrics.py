"""Word and character error rates, relative reductions and per-language rates.

The rates are corpus-level, as jiwer computes them: the edit operations (substitutions,
deletions, insertions) of every utterance summed, divided by the number of reference words
(or characters) summed, so long utterances weigh more than short ones. They equal
``jiwer.wer`` / ``jiwer.cer`` with jiwer's default transforms, tokenisation quirks included,
so the figures this app reports can be checked with jiwer (its tests do):

* words: runs of two or more whitespace characters become one space, the ends are
  stripped, and the string is split on ``" "`` (so a single tab inside ``"a\\tb"`` does
  not split it, exactly as in jiwer);
* characters: the ends are stripped and every remaining code point counts, spaces
  included (a doubled inner space is two characters; a decomposed ``"e\\u0301"`` is two).

No normalisation happens here: transcripts arrive normalised by ``text.normalize``.

The one deliberate difference from jiwer: when the references hold no word (or character)
at all, jiwer returns the number of insertions, which is a count and not a rate; here that is
a ``ValueError``, as is an empty list or a length mismatch.

The edit distance is Hyyrö's bit-parallel form of the Levenshtein dynamic programme (the
reference's positions are the bits of a Python integer), so one utterance costs a handful of
integer operations per hypothesis token: thousands of utterances take milliseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Sequence

__all__ = [
    "character_error_rate",
    "edit_distance",
    "per_language_rates",
    "relative_reduction",
    "word_error_rate",
]

_RUNS_OF_WHITESPACE = re.compile(r"\s\s+")


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """Levenshtein distance (unit-cost substitutions, deletions, insertions).

    Bit-parallel (Myers 1999, in Hyyrö's formulation for the global distance): bit ``i`` of
    the vertical-delta vectors ``pv``/``mv`` says whether cell ``(i + 1, j)`` of the usual
    dynamic-programming table is one more / one less than cell ``(i, j)``; each hypothesis
    token updates a whole column at once, and the last row's value is tracked in ``score``.
    """
    m = len(reference)
    if m == 0:
        return len(hypothesis)
    if len(hypothesis) == 0:
        return m
    peq: dict[Hashable, int] = {}  # token -> bit mask of its positions in the reference
    for i, token in enumerate(reference):
        peq[token] = peq.get(token, 0) | (1 << i)
    mask = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for token in hypothesis:
        eq = peq.get(token, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & mask) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = ((ph << 1) | 1) & mask  # row 0 of the table grows by one per column
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def _words(text: str) -> list[str]:
    """jiwer's default word transform: collapse whitespace runs, strip, split on spaces."""
    return [w for w in _RUNS_OF_WHITESPACE.sub(" ", text).strip().split(" ") if w]


def _characters(text: str) -> str:
    """jiwer's default character transform: strip the ends, keep every code point."""
    return text.strip()


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise ValueError(
            "references and hypotheses must be lists of transcripts, not one string; "
            "wrap a single transcript in a list."
        )
    if len(references) == 0:
        raise ValueError("no references: pass at least one reference transcript.")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses; pass one "
            "hypothesis per reference, in the same order."
        )


def _rate(
    references: Sequence[str],
    hypotheses: Sequence[str],
    tokens: Callable[[str], Sequence[Hashable]],
    unit: str,
) -> float:
    _check_pairs(references, hypotheses)
    edits = total = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = tokens(ref), tokens(hyp)
        edits += edit_distance(r, h)
        total += len(r)
    if total == 0:
        raise ValueError(
            f"the references hold no {unit}, so a rate per reference {unit} is undefined; "
            "drop the empty transcripts before scoring."
        )
    return edits / total


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate: total word edits / total reference words (= ``jiwer.wer``).

    Args:
        references: The true transcripts, one per utterance.
        hypotheses: The decoded transcripts, in the same order (empty strings allowed).

    Raises:
        ValueError: Empty lists, different lengths, or references without any word.
    """
    return _rate(references, hypotheses, _words, "word")


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate: total character edits / total reference characters.

    Equal to ``jiwer.cer``: the ends of each transcript are stripped and inner spaces count
    as characters. Raises ``ValueError`` like :func:`word_error_rate`.
    """
    return _rate(references, hypotheses, _characters, "character")


def relative_reduction(before: float, after: float) -> float:
    """``(before - after) / before``: the share of ``before``'s errors that ``after`` removed.

    Positive when ``after`` is better, negative when it is worse. Rules for the edges:
    either value ``nan`` gives ``nan``; ``before == 0`` gives ``0.0`` when ``after`` is 0 too
    (nothing to remove, nothing added) and ``nan`` otherwise (a relative change from zero
    is undefined), so averages over languages never see an infinity.

    Raises:
        ValueError: A negative error rate (rates are never below zero).
    """
    before, after = float(before), float(after)
    if math.isnan(before) or math.isnan(after):
        return math.nan
    if before < 0 or after < 0:
        raise ValueError(
            f"relative_reduction({before}, {after}): error rates cannot be negative; pass "
            "the WER/CER values themselves."
        )
    if before == 0:
        return 0.0 if after == 0 else math.nan
    return (before - after) / before


def per_language_rates(
    languages: Sequence[str], references: Sequence[str], hypotheses: Sequence[str]
) -> dict[str, dict[str, float]]:
    """WER and CER of each language's utterances, languages in first-seen order.

    Args:
        languages: The language code of each utterance.
        references: The true transcripts.
        hypotheses: The decoded transcripts (same order and length).

    Returns:
        ``{language: {"wer", "cer", "utterances", "words", "characters"}}``: the corpus
        rates over that language's utterances, how many there were, and the reference word
        and character counts behind the rates (so languages can be pooled by weight).
    """
    _check_pairs(references, hypotheses)
    if isinstance(languages, str) or len(languages) != len(references):
        raise ValueError(
            f"{len(languages)} language codes for {len(references)} references; pass one "
            "language code per utterance."
        )
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for lang, ref, hyp in zip(languages, references, hypotheses, strict=True):
        refs, hyps = groups.setdefault(lang, ([], []))
        refs.append(ref)
        hyps.append(hyp)
    out: dict[str, dict[str, float]] = {}
    for lang, (refs, hyps) in groups.items():
        try:
            wer = word_error_rate(refs, hyps)
            cer = character_error_rate(refs, hyps)
        except ValueError as err:
            raise ValueError(f"language {lang!r}: {err}") from err
        out[lang] = {
            "wer": wer,
            "cer": cer,
            "utterances": len(refs),
            "words": sum(len(_words(r)) for r in refs),
            "characters": sum(len(_characters(r)) for r in refs),
        }
    return out
