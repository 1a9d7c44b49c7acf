"""FIM transforms: prefix + middle + suffix is the original document, in both modes."""

from __future__ import annotations

import random

import pytest

from apps.code.fim import (
    MODES,
    FimSentinels,
    fim_document,
    fim_example,
    fim_prompt,
    parse_fim_prompt,
    single_line_example,
    single_line_records,
    split_document,
)
from apps.code.records import Record

DOCS = [
    "def f(x):\n    return x + 1\n",
    "import os\n\n\nclass A:\n    def g(self):\n        '''doc'''\n        return os.sep\n",
    "x = 1",
    "",
    "a\n",
    "ünïcödé = 'ß'\nprint(ünïcödé)\n",
]


@pytest.mark.parametrize("mode", ["psm", "spm"])
@pytest.mark.parametrize("line_level", [True, False])
@pytest.mark.parametrize(
    "sentinels",
    [
        FimSentinels(),
        FimSentinels("<PRE>", "<SUF>", "<MID>"),
        FimSentinels("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    ],
)
def test_round_trip(mode, line_level, sentinels):
    rng = random.Random(0)
    for doc in DOCS:
        for _ in range(25):
            split = split_document(doc, rng, line_level=line_level)
            assert split.prefix + split.middle + split.suffix == doc
            prompt = fim_prompt(split, mode, sentinels)
            back = parse_fim_prompt(prompt, mode, sentinels)
            assert back.prefix + split.middle + back.suffix == doc
            assert (back.prefix, back.suffix) == (split.prefix, split.suffix)


def test_layouts():
    s = FimSentinels("<P>", "<S>", "<M>")
    split = split_document("abc", random.Random(0), line_level=False)
    assert fim_prompt(split, "psm", s) == f"<P>{split.prefix}<S>{split.suffix}<M>"
    assert fim_prompt(split, "spm", s) == f"<P><S>{split.suffix}<M>{split.prefix}"
    with pytest.raises(ValueError, match="mode"):
        fim_prompt(split, "xyz", s)


def test_line_level_cuts_whole_lines():
    rng = random.Random(3)
    doc = "".join(f"line {i}\n" for i in range(20))
    for _ in range(50):
        split = split_document(doc, rng, line_level=True)
        assert split.prefix == "" or split.prefix.endswith("\n")
        assert split.middle == "" or split.middle.endswith("\n")


def test_max_middle():
    rng = random.Random(1)
    doc = "".join(f"line {i}\n" for i in range(200))
    for _ in range(30):
        split = split_document(doc, rng, max_middle_chars=50)
        assert len(split.middle) <= 50
        assert split.document() == doc


def test_spm_rate_and_errors():
    rng = random.Random(0)
    assert {fim_example(DOCS[1], rng, spm_rate=0.0)[2] for _ in range(20)} == {"psm"}
    assert {fim_example(DOCS[1], rng, spm_rate=1.0)[2] for _ in range(20)} == {"spm"}
    modes = [fim_example(DOCS[1], rng, spm_rate=0.5)[2] for _ in range(400)]
    assert 150 < modes.count("spm") < 250
    with pytest.raises(ValueError, match="spm_rate"):
        fim_example(DOCS[0], rng, spm_rate=1.5)
    with pytest.raises(ValueError, match="sentinel"):
        fim_example("x = '<fim_middle>'", rng)


@pytest.mark.parametrize("mode", MODES)
def test_single_line_examples_hide_one_real_line_of_the_same_document(mode):
    doc = "def f(x):\n    y = x + 1\n\n    return y * 2\n"
    split = split_document(doc, random.Random(0))
    fim = Record("fim", fim_prompt(split, mode, FimSentinels()), split.middle)
    assert fim_document(fim.prompt, fim.completion, FimSentinels()) == doc
    completion = Record("completion", "def f(x):\n", doc[len("def f(x):\n") :])
    seen = set()
    for seed in range(20):
        # The same function as a FIM and a completion record: one example.
        (out,) = single_line_records([fim, completion], FimSentinels(), seed)
        back = parse_fim_prompt(out.prompt, "psm", FimSentinels())
        assert back.prefix + out.completion + back.suffix == doc
        assert out.completion in ("    y = x + 1\n", "    return y * 2\n")
        seen.add(out.completion)
    assert len(seen) == 2  # both candidate lines get drawn; the header never is
    assert single_line_example("def f(): pass\n", random.Random(0), FimSentinels()) is None
