"""Fill-in-the-middle (FIM) transforms (Bavarian et al., 2022), PSM and SPM.

A document is cut at two character positions into ``prefix``, ``middle`` and ``suffix``;
the model sees prefix and suffix and learns to write the middle:

- **PSM**: ``<pre> prefix <suf> suffix <mid>`` -> ``middle``
- **SPM**: ``<pre> <suf> suffix <mid> prefix`` -> ``middle`` (the StarCoder/SantaCoder
  variant in which the prefix sits right before the middle it continues)

The sentinel strings differ per model family (``FimSentinels``): StarCoder uses
``<fim_prefix>``/``<fim_suffix>``/``<fim_middle>``, CodeLlama ``<PRE>``/``<SUF>``/``<MID>``,
DeepSeek-Coder ``<｜fim▁begin｜>``/``<｜fim▁hole｜>``/``<｜fim▁end｜>``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .records import Record

MODES = ("psm", "spm")


@dataclass(frozen=True)
class FimSentinels:
    """The three sentinel strings of a model family (added as special tokens to our BPE)."""

    prefix: str = "<fim_prefix>"
    suffix: str = "<fim_suffix>"
    middle: str = "<fim_middle>"

    def tokens(self) -> list[str]:
        """The sentinels as a list, e.g. for ``additional_special_tokens``."""
        return [self.prefix, self.suffix, self.middle]


@dataclass(frozen=True)
class FimSplit:
    """A document cut into three parts; ``prefix + middle + suffix`` is the document."""

    prefix: str
    middle: str
    suffix: str

    def document(self) -> str:
        """The original text."""
        return self.prefix + self.middle + self.suffix


def split_document(
    text: str, rng: random.Random, line_level: bool = True, max_middle_chars: int | None = None
) -> FimSplit:
    """Cut ``text`` at two random points (line boundaries when ``line_level``).

    With ``line_level`` the middle is a run of whole lines, the usual "fill this block"
    task; otherwise two uniform character positions are drawn, as in the FIM paper.
    ``max_middle_chars`` bounds the middle's length (it is shortened from its end).
    """
    if line_level:
        cuts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n" and i + 1 < len(text)]
        cuts.append(len(text))
        a, b = sorted(rng.sample(range(len(cuts)), 2)) if len(cuts) > 1 else (0, 0)
        start, end = cuts[a], cuts[b]
    else:
        start, end = sorted(rng.randint(0, len(text)) for _ in range(2))
    if max_middle_chars is not None and end - start > max_middle_chars:
        end = start + max_middle_chars
        if line_level:
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline >= start else end
    return FimSplit(text[:start], text[start:end], text[end:])


def fim_prompt(split: FimSplit, mode: str, sentinels: FimSentinels) -> str:
    """The model input for ``split`` in ``mode`` (the target is ``split.middle``)."""
    s = sentinels
    if mode == "psm":
        return f"{s.prefix}{split.prefix}{s.suffix}{split.suffix}{s.middle}"
    if mode == "spm":
        return f"{s.prefix}{s.suffix}{split.suffix}{s.middle}{split.prefix}"
    raise ValueError(f"FIM mode={mode!r} must be one of {', '.join(MODES)}.")


def parse_fim_prompt(prompt: str, mode: str, sentinels: FimSentinels) -> FimSplit:
    """Recover ``(prefix, "", suffix)`` from a prompt made by :func:`fim_prompt`.

    The inverse that the round-trip test checks: ``parse(fim_prompt(x)).prefix + x.middle
    + parse(...).suffix == x.document()``. The document must not contain the sentinels.
    """
    s = sentinels
    if mode == "psm":
        if not (prompt.startswith(s.prefix) and prompt.endswith(s.middle)):
            raise ValueError("not a PSM prompt: it must start with the prefix sentinel and end "
                             "with the middle sentinel.")  # fmt: skip
        body = prompt[len(s.prefix) : len(prompt) - len(s.middle)]
        prefix, sep, suffix = body.partition(s.suffix)
        if not sep:
            raise ValueError("not a PSM prompt: the suffix sentinel is missing.")
        return FimSplit(prefix, "", suffix)
    if mode == "spm":
        head = s.prefix + s.suffix
        if not prompt.startswith(head):
            raise ValueError("not an SPM prompt: it must start with the prefix and suffix "
                             "sentinels.")  # fmt: skip
        suffix, sep, prefix = prompt[len(head) :].partition(s.middle)
        if not sep:
            raise ValueError("not an SPM prompt: the middle sentinel is missing.")
        return FimSplit(prefix, "", suffix)
    raise ValueError(f"FIM mode={mode!r} must be one of {', '.join(MODES)}.")


def fim_example(
    text: str,
    rng: random.Random,
    spm_rate: float = 0.5,
    sentinels: FimSentinels | None = None,
    line_level: bool = True,
    max_middle_chars: int | None = 400,
) -> tuple[str, str, str]:
    """``(prompt, middle, mode)`` for one document: SPM with probability ``spm_rate``."""
    if not 0.0 <= spm_rate <= 1.0:
        raise ValueError(f"fim spm_rate={spm_rate!r} must lie in [0, 1].")
    sentinels = sentinels or FimSentinels()
    for token in sentinels.tokens():
        if token in text:
            raise ValueError(f"the document contains the FIM sentinel {token!r}; pick other "
                             "sentinels (FimSentinels) or drop the document.")  # fmt: skip
    split = split_document(text, rng, line_level=line_level, max_middle_chars=max_middle_chars)
    mode = "spm" if rng.random() < spm_rate else "psm"
    return fim_prompt(split, mode, sentinels), split.middle, mode


def prompt_mode(prompt: str, sentinels: FimSentinels) -> str:
    """``"spm"`` or ``"psm"``: which layout :func:`fim_prompt` gave ``prompt``."""
    return "spm" if prompt.startswith(sentinels.prefix + sentinels.suffix) else "psm"


def fim_document(prompt: str, middle: str, sentinels: FimSentinels) -> str:
    """The document a FIM example was cut from (PSM or SPM prompt, plus its middle)."""
    split = parse_fim_prompt(prompt, prompt_mode(prompt, sentinels), sentinels)
    return split.prefix + middle + split.suffix


def single_line_example(
    document: str, rng: random.Random, sentinels: FimSentinels
) -> tuple[str, str] | None:
    """The single-line infilling task (SantaCoder/StarCoder's FIM benchmark): one non-blank
    line of ``document`` but its first, drawn with ``rng``, becomes the middle of a PSM
    prompt. ``(prompt, line)``; ``None`` when there is no such line.
    """
    lines = document.splitlines(keepends=True)
    candidates = [i for i, line in enumerate(lines) if i > 0 and line.strip()]
    if not candidates:
        return None
    k = rng.choice(candidates)
    cut = FimSplit("".join(lines[:k]), lines[k], "".join(lines[k + 1 :]))
    return fim_prompt(cut, "psm", sentinels), cut.middle


def single_line_records(
    records: Sequence[Record], sentinels: FimSentinels, seed: int = 0
) -> list[Record]:
    """Single-line infilling examples (:func:`single_line_example`), one per distinct
    function among held-out ``completion`` and ``fim`` records (their prompt and target
    together are the whole function), in order, drawn with ``seed``."""
    rng = random.Random(seed)
    documents: dict[str, None] = {}
    for r in records:
        if r.task == "completion":
            documents[r.prompt + r.completion] = None
        elif r.task == "fim":
            documents[fim_document(r.prompt, r.completion, sentinels)] = None
    examples = (single_line_example(d, rng, sentinels) for d in documents)
    return [Record("fim", prompt, line) for prompt, line in filter(None, examples)]
