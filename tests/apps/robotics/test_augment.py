"""Training-time instruction augmentation (apps/robotics/augment.py, the grammar in
envs/instructions.py).

The grammar shares no content word with the held-out paraphrases (or the paraphrase test
would no longer be held out); every augmented wording names its task's colours in order and
is told apart from the other families by its frame; the augmenter keeps unknown text, swaps
with its probability and draws from bounded, seeded pools; word dropout keeps an ordered,
non-empty subset of the words.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from apps.robotics.augment import InstructionAugmenter, drop_words
from apps.robotics.envs.instructions import (
    AUGMENT_FRAMES,
    AUGMENT_WORDS,
    COLOURS,
    PARAPHRASE_TEMPLATES,
    TASKS,
    augmented_instruction,
    content_words,
    parse_task,
    spec_of_instruction,
)


def test_the_grammar_shares_no_content_word_with_the_held_out_paraphrases():
    grammar = set().union(*(content_words(f) for fs in AUGMENT_FRAMES.values() for f in fs))
    grammar |= set().union(*(content_words(w) for ws in AUGMENT_WORDS.values() for w in ws))
    held_out = set().union(*(content_words(t) for ts in PARAPHRASE_TEMPLATES.values() for t in ts))
    assert grammar and not grammar & held_out, sorted(grammar & held_out)


@pytest.mark.parametrize("task", TASKS)
def test_augmented_wordings_name_the_colours_in_order(task):
    rng = np.random.default_rng(0)
    colours = parse_task(task).colours
    for _ in range(50):
        text = augmented_instruction(task, rng)
        named = [w for w in re.findall(r"[a-z]+", text) if w in COLOURS]
        assert named == list(colours), text
        assert "{" not in text


def test_augmented_wordings_cover_the_vocabulary():
    rng = np.random.default_rng(1)
    words = set()
    for _ in range(2000):
        words |= set(augmented_instruction(TASKS[0], rng).split())
    assert set(AUGMENT_WORDS["verb"]) <= words and set(AUGMENT_WORDS["obj"]) <= words


def test_spec_of_instruction_reads_training_and_paraphrase_wordings():
    assert spec_of_instruction("push the block to the red target").colours == ("red",)
    spec = spec_of_instruction("move the green cube into the marked area before the blue cube")
    assert spec.family == "ordering" and spec.colours == ("green", "blue")
    assert spec_of_instruction("") is None and spec_of_instruction("fold the towel") is None


def test_the_augmenter_swaps_known_instructions_with_its_probability():
    known, other = "push the red block into the zone", "fold the towel"
    everything = InstructionAugmenter(1.0, per_task=8, seed=0)
    out = everything([known] * 50 + [other, ""])
    assert out[-2:] == [other, ""]
    pool = everything.pools[spec_of_instruction(known).task]
    assert set(out[:50]) <= set(pool) and len(set(out[:50])) > 1
    assert InstructionAugmenter(0.0)([known] * 20) == [known] * 20
    half = InstructionAugmenter(0.5, per_task=8, seed=0)([known] * 1000)
    assert 400 < sum(text != known for text in half) < 600
    assert all(1 <= len(pool) <= 8 for pool in everything.pools.values())
    again = InstructionAugmenter(1.0, per_task=8, seed=0)
    assert again.pools == everything.pools and again([known] * 50) == out[:50]
    with pytest.raises(ValueError, match="must lie in"):
        InstructionAugmenter(1.5)


def test_word_dropout_keeps_an_ordered_nonempty_subset_of_the_words():

    text = "push the red block to the target zone then the blue block"
    gen = torch.Generator().manual_seed(0)
    outs = drop_words([text] * 200, 0.5, gen)
    assert drop_words([text], 0.0) == [text] and drop_words([""], 0.5) == [""]
    words = text.split()
    for out in outs:
        kept = out.split()
        assert kept, "an instruction never loses every word"
        it = iter(words)
        assert all(w in it for w in kept), "a subsequence, in order"
    mean_kept = sum(len(o.split()) for o in outs) / len(outs) / len(words)
    assert 0.4 < mean_kept < 0.6
    assert drop_words([text] * 5, 0.999, torch.Generator().manual_seed(1)) != [text] * 5
