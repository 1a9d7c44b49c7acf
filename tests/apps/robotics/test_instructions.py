import re
import string

import numpy as np
import pytest

from apps.robotics.envs.instructions import (
    COLOURS,
    COLOURS_PER_FAMILY,
    FAMILIES,
    PARAPHRASE_TEMPLATES,
    TASKS,
    TRAIN_TEMPLATES,
    content_words,
    instruction_for,
    parse_task,
    tasks_for,
)


def test_the_catalogue_has_every_colour_assignment_once():
    assert len(TASKS) == len(set(TASKS)) == 3 + 3 + 6
    assert tasks_for("which_target") == tuple(f"push the block to the {c} target" for c in COLOURS)
    assert len(tasks_for("ordering")) == 6
    pairs = {parse_task(t).colours for t in tasks_for("ordering")}
    assert pairs == {(a, b) for a in COLOURS for b in COLOURS if a != b}
    for task in TASKS:  # the canonical string is the parsed spec's own string
        assert parse_task(task).task == task


@pytest.mark.parametrize("family", FAMILIES)
def test_every_template_fills_exactly_the_family_colour_slots(family):
    expected = {f"c{i + 1}" for i in range(COLOURS_PER_FAMILY[family])}
    for template in TRAIN_TEMPLATES[family] + PARAPHRASE_TEMPLATES[family]:
        slots = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        assert slots == expected, template
    assert len(set(TRAIN_TEMPLATES[family])) == len(TRAIN_TEMPLATES[family]) >= 3
    assert len(set(PARAPHRASE_TEMPLATES[family])) == len(PARAPHRASE_TEMPLATES[family]) >= 3


def test_paraphrases_share_no_content_word_with_any_training_template():
    train = set().union(*(content_words(t) for ts in TRAIN_TEMPLATES.values() for t in ts))
    held_out = set().union(*(content_words(t) for ts in PARAPHRASE_TEMPLATES.values() for t in ts))
    assert train & held_out == set()
    assert {"push", "block", "target"} <= train and {"cube"} <= held_out  # the checker sees words


def test_content_words_drops_slots_colours_and_function_words():
    assert content_words("Push the {c1} block, then the red block.") == {"push", "block", "then"}


@pytest.mark.parametrize("paraphrase", [False, True])
def test_instructions_are_seeded_name_the_colours_in_order_and_cover_the_templates(paraphrase):
    for task in TASKS:
        spec = parse_task(task)
        templates = (PARAPHRASE_TEMPLATES if paraphrase else TRAIN_TEMPLATES)[spec.family]
        first = [instruction_for(task, np.random.default_rng(7), paraphrase) for _ in range(3)]
        assert len(set(first)) == 1  # same generator state, same text
        rng = np.random.default_rng(0)
        drawn = {instruction_for(task, rng, paraphrase) for _ in range(200)}
        fills = {t.format(c1=spec.colours[0], c2=spec.colours[-1]) for t in templates}
        assert drawn == fills  # only the family's own templates, every one of them
        for text in drawn:
            positions = [text.index(c) for c in spec.colours]
            assert positions == sorted(positions), text
            others = set(COLOURS) - set(spec.colours)
            assert not any(re.search(rf"\b{c}\b", text) for c in others), text


def test_paraphrased_and_training_instructions_never_coincide():
    rng = np.random.default_rng(1)
    for task in TASKS:
        train = {instruction_for(task, rng, False) for _ in range(50)}
        para = {instruction_for(task, rng, True) for _ in range(50)}
        assert train.isdisjoint(para)


@pytest.mark.parametrize("family", FAMILIES)
def test_tasks_of_a_family_differ_only_in_their_colours(family):
    # Why language is needed: the same template names a different goal per colour.
    texts = [instruction_for(t, np.random.default_rng(3), False) for t in tasks_for(family)]
    assert len(set(texts)) == len(texts)
    blanked = {re.sub("|".join(COLOURS), "_", text) for text in texts}
    assert len(blanked) == 1


def test_an_unknown_task_or_family_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'push the block to the pink target'") as e:
        parse_task("push the block to the pink target")
    assert "push the block to the red target" in str(e.value)
    with pytest.raises(ValueError, match="unknown task"):
        instruction_for("stack the blocks", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"unknown task family 'stacking'.*which_target"):
        tasks_for("stacking")
