"""The task catalogue of the tabletop suite and the language that names each task.

A task is a family plus the colours it refers to. Its *canonical string* (what a dataset stores
as ``task`` and what ``TabletopEnv.reset(task=...)`` takes) is the first training template
filled in, e.g. ``"push the block to the red target"``. The text a policy actually sees is
drawn by :func:`instruction_for` from one of two disjoint template sets per family:

- ``TRAIN_TEMPLATES``: the wording used for demonstrations and ordinary evaluation;
- ``PARAPHRASE_TEMPLATES``: held-out wording for the generalisation test. No content word of
  any paraphrase appears in any training template (only colour words and the function words
  in :data:`FUNCTION_WORDS` are shared), so a policy that succeeds on paraphrases has learnt
  the meaning, not the surface string.

Families (why each exists: the colour in the instruction is the only thing that says which
of several equally plausible goals is meant, so a language-blind policy is stuck at chance):

- ``which_target``: one neutral block, three coloured targets in shuffled corners; push the
  block onto the named target (chance 1/3).
- ``which_object``: three coloured blocks in shuffled corners, one target zone; push the
  named block into the zone (chance 1/3).
- ``ordering``: the same scene; push the first named block into the zone, then the second
  (six ordered pairs, chance 1/6). Order is visible in the image (a block already in the zone
  stays there), so a memoryless policy can follow it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import permutations

import numpy as np

#: The colours a task can name, in state-vector order.
COLOURS: tuple[str, ...] = ("red", "green", "blue")
#: Task families, in the order ``TabletopEnv`` uses to index them.
FAMILIES: tuple[str, ...] = ("which_target", "which_object", "ordering")
#: Words that training templates and paraphrases may share (besides the colour words).
FUNCTION_WORDS: frozenset[str] = frozenset(
    {"the", "a", "to", "in", "into", "on", "onto", "and", "of"}
)

#: Training templates per family; ``{c1}`` / ``{c2}`` are colour slots. The first one, filled
#: in, is the task's canonical string.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "which_target": (
        "push the block to the {c1} target",
        "push the block onto the {c1} target",
        "slide the block to the {c1} target",
        "put the block on the {c1} target",
    ),
    "which_object": (
        "push the {c1} block to the target zone",
        "push the {c1} block into the zone",
        "slide the {c1} block into the target zone",
        "put the {c1} block in the zone",
    ),
    "ordering": (
        "push the {c1} block to the target zone, then the {c2} block",
        "first push the {c1} block into the zone, then push the {c2} block",
        "slide the {c1} block to the zone and then the {c2} block",
        "put the {c1} block in the target zone first, then the {c2} block",
    ),
}

#: Held-out paraphrases per family, with wording disjoint from every training template.
PARAPHRASE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "which_target": (
        "move the cube onto the {c1} marker",
        "shove the cube over to the {c1} circle",
        "bring the cube to the {c1} spot",
        "nudge the cube until it sits on the {c1} disc",
    ),
    "which_object": (
        "move the {c1} cube into the marked area",
        "shove the {c1} cube over to the goal region",
        "bring the {c1} cube to the ring",
        "nudge the {c1} cube until it sits inside the marked region",
    ),
    "ordering": (
        "move the {c1} cube into the marked area before the {c2} cube",
        "shove the {c1} cube over to the goal region, and after that the {c2} cube",
        "bring the {c1} cube to the ring, followed by the {c2} cube",
        "begin with the {c1} cube in the marked region; afterwards add the {c2} cube",
    ),
}

#: Instruction augmentation (DIAL's idea, with a hand-written grammar instead of a language
#: model): per family, sentence frames whose ``{verb}``, ``{obj}``, ``{goal}`` / ``{zone}``
#: slots take any word of :data:`AUGMENT_WORDS`. Training on many wordings of each task makes
#: the policy read the colour words rather than one sentence. Every content word here differs
#: from every held-out paraphrase's (tested), so the paraphrase test stays held out.
AUGMENT_FRAMES: dict[str, tuple[str, ...]] = {
    "which_target": (
        "{verb} the {obj} to the {c1} {goal}",
        "{verb} the {obj} onto the {c1} {goal}",
        "please {verb} the {obj} on the {c1} {goal}",
        "can you {verb} the {obj} to the {c1} {goal}",
        "the {obj} should end on the {c1} {goal}",
        "{verb} the {obj} toward the {c1} {goal} and stop there",
        "{c1} {goal}: {verb} the {obj} there",
        "your job is to {verb} the {obj} onto the {c1} {goal}",
    ),
    "which_object": (
        "{verb} the {c1} {obj} to the {zone}",
        "{verb} the {c1} {obj} into the {zone}",
        "please {verb} the {c1} {obj} into the {zone}",
        "can you {verb} the {c1} {obj} to the {zone}",
        "the {c1} {obj} should end in the {zone}",
        "{verb} only the {c1} {obj} into the {zone}",
        "{c1} {obj}: {verb} to the {zone}",
        "your job is to {verb} the {c1} {obj} into the {zone}",
    ),
    "ordering": (
        "{verb} the {c1} {obj} to the {zone}, then the {c2} {obj}",
        "first {verb} the {c1} {obj} into the {zone}, then {verb} the {c2} {obj}",
        "{verb} the {c1} {obj} into the {zone} and next the {c2} {obj}",
        "{c1} {obj} into the {zone} first, {c2} {obj} second",
        "the {c1} {obj} comes first, then the {c2} {obj}, both into the {zone}",
        "{verb} the {c1} {obj} to the {zone}; once done, {verb} the {c2} {obj} there too",
        "the {c1} {obj} should reach the {zone} first and the {c2} {obj} later",
        "{verb} the {c1} {obj} into the {zone} ahead of the {c2} {obj}",
    ),
}
#: The words the augmentation frames' slots take.
AUGMENT_WORDS: dict[str, tuple[str, ...]] = {
    "verb": (
        "push", "slide", "put", "get", "take", "drive", "guide", "send", "steer", "deliver",
        "drag", "place", "carry", "position",
    ),
    "obj": ("block", "box", "square", "brick", "piece", "object", "tile", "item"),
    "goal": ("target", "dot", "patch", "pad", "point", "location", "destination"),
    "zone": (
        "zone", "target zone", "centre", "center", "middle", "central zone", "middle zone",
        "pen", "enclosure", "zone in the middle",
    ),
}  # fmt: skip

#: How many colours each family names.
COLOURS_PER_FAMILY: dict[str, int] = {"which_target": 1, "which_object": 1, "ordering": 2}


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task: its family and the colours it names (in instruction order)."""

    family: str
    colours: tuple[str, ...]

    @property
    def task(self) -> str:
        """The canonical task string (first training template, filled in)."""
        return _fill(TRAIN_TEMPLATES[self.family][0], self.colours)


def _fill(template: str, colours: tuple[str, ...], **words: str) -> str:
    """``template`` with ``{c1}``/``{c2}`` replaced by ``colours`` (and any other slot by
    ``words``)."""
    return template.format(**words, **{f"c{i + 1}": c for i, c in enumerate(colours)})


def _colour_tuples(family: str) -> list[tuple[str, ...]]:
    """Every colour assignment of a family: single colours, or ordered pairs of distinct ones."""
    return [tuple(p) for p in permutations(COLOURS, COLOURS_PER_FAMILY[family])]


#: Every task of the suite, by family: ``{family: (TaskSpec, ...)}``.
TASK_SPECS: dict[str, tuple[TaskSpec, ...]] = {
    family: tuple(TaskSpec(family, colours) for colours in _colour_tuples(family))
    for family in FAMILIES
}
#: Every canonical task string (12: 3 + 3 + 6).
TASKS: tuple[str, ...] = tuple(spec.task for family in FAMILIES for spec in TASK_SPECS[family])
_BY_STRING: dict[str, TaskSpec] = {
    spec.task: spec for specs in TASK_SPECS.values() for spec in specs
}


def check_family(family: str) -> str:
    """``family`` itself, or a ValueError listing the known families."""
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}: choose one of {list(FAMILIES)}")
    return family


def parse_task(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of a canonical task string.

    Raises:
        ValueError: ``task`` is not one of :data:`TASKS` (the message lists them all).
    """
    spec = _BY_STRING.get(task) if isinstance(task, str) else None
    if spec is None:
        raise ValueError(
            f"unknown task {task!r}: the tabletop suite knows these {len(TASKS)} tasks "
            f"(canonical strings): {list(TASKS)}"
        )
    return spec


def tasks_for(family: str) -> tuple[str, ...]:
    """The canonical task strings of one family (ValueError for an unknown family)."""
    return tuple(spec.task for spec in TASK_SPECS[check_family(family)])


def instruction_for(task: str, rng: np.random.Generator, paraphrase: bool = False) -> str:
    """A natural-language instruction for ``task``, drawn uniformly from its family's templates.

    Args:
        task: A canonical task string (one of :data:`TASKS`).
        rng: The generator that picks the template (seed it for reproducible instructions).
        paraphrase: Draw from the held-out paraphrases instead of the training templates.
    """
    spec = parse_task(task)
    templates = (PARAPHRASE_TEMPLATES if paraphrase else TRAIN_TEMPLATES)[spec.family]
    return _fill(templates[int(rng.integers(len(templates)))], spec.colours)


def augmented_instruction(task: str, rng: np.random.Generator) -> str:
    """A random wording of ``task`` from the augmentation grammar (:data:`AUGMENT_FRAMES`),
    every slot word drawn uniformly. For training only: never a held-out paraphrase."""
    spec = parse_task(task)
    frames = AUGMENT_FRAMES[spec.family]
    frame = frames[int(rng.integers(len(frames)))]
    words = {k: v[int(rng.integers(len(v)))] for k, v in AUGMENT_WORDS.items()}
    return _fill(frame, spec.colours, **words)


def _wording_table() -> dict[str, TaskSpec]:
    table = {}
    for family in FAMILIES:
        for spec in TASK_SPECS[family]:
            for template in (*TRAIN_TEMPLATES[family], *PARAPHRASE_TEMPLATES[family]):
                table[_fill(template, spec.colours)] = spec
    return table


_SPEC_OF_WORDING = _wording_table()


def spec_of_instruction(text: str) -> TaskSpec | None:
    """The task an instruction of the suite names (any training template or held-out
    paraphrase, filled in), or None for text the suite does not produce."""
    return _SPEC_OF_WORDING.get(text)


def content_words(text: str) -> set[str]:
    """The words of ``text`` (lower case, punctuation and ``{slots}`` dropped) minus colour and
    function words: what must differ between training templates and paraphrases."""
    words = re.findall(r"[a-z]+", re.sub(r"\{[^}]*\}", " ", text.lower()))
    return {w for w in words if w not in FUNCTION_WORDS and w not in COLOURS}
