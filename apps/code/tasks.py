"""The five embedded tasks, built from functions of the standard library.

===========  =====================================================  ======================
task         prompt                                                 target
===========  =====================================================  ======================
completion   a function cut after a random line of its body         the rest of it
fim          a function in PSM or SPM form (:mod:`apps.code.fim`)   the missing middle
doc2body     ``def`` line(s) + docstring (HumanEval's shape)         the body
body2doc     the function without its docstring + an instruction   the docstring text
func2tests   the function without its docstring + an instruction   asserts from its doctests
===========  =====================================================  ======================

``fim_rate`` is the share of the code-writing documents (the pool that ``completion`` and
``fim`` draw from) turned into FIM examples; ``spm_rate`` the share of those in SPM order.
Everything is drawn with a ``random.Random(seed)``, so a seed gives the same records.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .corpus import Function, doctest_asserts
from .fim import FimSentinels, fim_example
from .records import Record

TASKS = ("completion", "fim", "doc2body", "body2doc", "func2tests")


@dataclass(frozen=True)
class TaskOptions:
    """How the embedded tasks are made.

    Args:
        fim_rate: Share of code documents turned into FIM examples (the rest: completion).
        spm_rate: Share of FIM examples in SPM order (the rest: PSM).
        sentinels: FIM sentinel strings of the model family.
        max_middle_chars: Longest FIM middle, in characters.
        max_doc_chars: Docstrings longer than this are skipped for ``body2doc``.
    """

    fim_rate: float = 0.5
    spm_rate: float = 0.5
    sentinels: FimSentinels = field(default_factory=FimSentinels)
    max_middle_chars: int = 300
    max_doc_chars: int = 600

    def __post_init__(self) -> None:
        for name in ("fim_rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"data.{name}={value!r} must lie in [0, 1].")


def strip_docstring(fn: Function) -> str:
    """The function's source without its docstring (``pass`` when nothing else is left)."""
    body = fn.body if fn.body.strip() else "    pass\n"
    return f"{fn.header}\n{body}"


def completion_record(fn: Function, rng: random.Random) -> Record | None:
    """Cut after a random line of the body (at least the header stays in the prompt)."""
    lines = fn.source.splitlines(keepends=True)
    first = fn.header.count("\n") + 1
    if len(lines) - first < 2:
        return None
    cut = rng.randint(first, len(lines) - 1)
    return Record("completion", "".join(lines[:cut]), "".join(lines[cut:]))


def fim_record(fn: Function, rng: random.Random, opts: TaskOptions) -> Record | None:
    """A FIM example over the whole function; ``None`` when the middle comes out empty."""
    if any(s in fn.source for s in opts.sentinels.tokens()):
        return None
    prompt, middle, _ = fim_example(
        fn.source, rng, spm_rate=opts.spm_rate, sentinels=opts.sentinels,
        max_middle_chars=opts.max_middle_chars,
    )  # fmt: skip
    return Record("fim", prompt, middle) if middle.strip() else None


def doc2body_record(fn: Function) -> Record | None:
    """HumanEval's shape: signature and docstring in, body out."""
    if not fn.docstring or not fn.body.strip():
        return None
    return Record("doc2body", f"{fn.header}\n{fn.docstring}\n", fn.body)


def body2doc_record(fn: Function, opts: TaskOptions) -> Record | None:
    """Function without docstring in, docstring text out."""
    if not fn.doc_text or len(fn.doc_text) > opts.max_doc_chars or not fn.body.strip():
        return None
    name = fn.qualname.rsplit(".", 1)[-1]
    prompt = f"{strip_docstring(fn)}\n# Docstring of `{name}`:\n"
    return Record("body2doc", prompt, fn.doc_text.strip() + "\n")


def func2tests_record(fn: Function) -> Record | None:
    """Function without docstring in, assert-style tests (from its doctests) out."""
    asserts = doctest_asserts(fn)
    if not asserts:
        return None
    name = fn.qualname.rsplit(".", 1)[-1]
    prompt = f"{strip_docstring(fn)}\n# Assert-style tests of `{name}`:\n"
    return Record("func2tests", prompt, "\n".join(asserts) + "\n")


def build_records(
    functions: Iterable[Function],
    seed: int = 0,
    tasks: Sequence[str] = TASKS,
    options: TaskOptions | None = None,
    max_per_task: int | None = None,
) -> list[Record]:
    """Records of the chosen ``tasks`` from ``functions``, at most ``max_per_task`` each.

    Functions are shuffled with ``seed`` first, so a cap takes a random (reproducible)
    subset rather than the first modules alphabetically.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"data.tasks: unknown task(s) {unknown}; the embedded tasks are {TASKS}.")
    opts = options or TaskOptions()
    rng = random.Random(seed)
    pool = list(functions)
    rng.shuffle(pool)
    out: dict[str, list[Record]] = {t: [] for t in tasks}

    def room(task: str) -> bool:
        return task in out and (max_per_task is None or len(out[task]) < max_per_task)

    for fn in pool:
        if rng.random() < opts.fim_rate:
            rec = fim_record(fn, rng, opts) if room("fim") else None
        else:
            rec = completion_record(fn, rng) if room("completion") else None
        made = [
            rec,
            doc2body_record(fn) if room("doc2body") else None,
            body2doc_record(fn, opts) if room("body2doc") else None,
            func2tests_record(fn) if room("func2tests") else None,
        ]
        for r in made:
            if r is not None and room(r.task):
                out[r.task].append(r)
    return [r for t in tasks for r in out[t]]
