"""The stdlib corpus, its deterministic hold-out, function extraction and the five tasks."""

from __future__ import annotations

import ast
import random

import pytest

from apps.code.corpus import (
    Function,
    doctest_asserts,
    is_held_out,
    iter_functions,
    list_modules,
    split_modules,
)
from apps.code.fim import FimSentinels, parse_fim_prompt
from apps.code.tasks import TASKS, TaskOptions, build_records

SOURCE = '''
import math


def area(r):
    """Area of a circle.

    >>> area(1) == math.pi
    True
    >>> area(0)
    0.0
    >>> print('x')
    x
    """
    rr = r * r
    return math.pi * rr


class Box:
    def size(self, k):
        total = 0
        for i in range(k):
            total += i
        return total
'''


def test_module_list_and_split():
    mods = list_modules()
    assert "os" in mods and "json" in mods and "email.mime.text" in mods
    assert not any(m.startswith(("test.", "idlelib", "tkinter")) for m in mods)
    train, held = split_modules(mods, 0.15)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(mods)
    assert 0.03 < len(held) / len(mods) < 0.4
    # Whole packages go to one side.
    for name in held:
        assert is_held_out(name.split(".")[0], 0.15)
    assert split_modules(mods, 0.15) == (train, held)
    with pytest.raises(ValueError, match="fraction"):
        is_held_out("os", 1.0)


def test_functions_are_cut_exactly():
    fns = {f.qualname: f for f in iter_functions("m", SOURCE)}
    assert set(fns) == {"area", "Box.size"}
    area = fns["area"]
    assert area.header == "def area(r):"
    assert area.docstring.startswith('    """Area of a circle.')
    assert area.body == "    rr = r * r\n    return math.pi * rr\n"
    assert area.source == f"{area.header}\n{area.docstring}\n{area.body}"
    ast.parse(area.source)
    size = fns["Box.size"]
    assert size.source.startswith("def size(self, k):") and size.docstring == ""
    ast.parse(size.source)


def test_doctest_asserts_keep_literal_outputs_of_direct_calls():
    area = next(f for f in iter_functions("m", SOURCE) if f.qualname == "area")
    assert doctest_asserts(area) == ["assert area(1) == math.pi == True", "assert area(0) == 0.0"]


def _fns():
    return list(iter_functions("m", SOURCE)) * 3


def test_tasks_build_each_kind_deterministically():
    recs = build_records(_fns(), seed=0, options=TaskOptions(fim_rate=0.5))
    assert {r.task for r in recs} <= set(TASKS)
    by_task = {t: [r for r in recs if r.task == t] for t in TASKS}
    assert by_task["doc2body"][0].completion == "    rr = r * r\n    return math.pi * rr\n"
    assert by_task["body2doc"][0].completion.startswith("Area of a circle.")
    assert '"""' not in by_task["body2doc"][0].prompt
    assert by_task["func2tests"][0].completion.startswith("assert area(1)")
    assert build_records(_fns(), seed=0) == recs
    assert len(build_records(_fns(), seed=0, max_per_task=1)) <= len(TASKS)
    with pytest.raises(ValueError, match="unknown task"):
        build_records(_fns(), tasks=["nope"])


def test_fim_rate_extremes_and_fim_records_round_trip():
    fns = _fns() * 5
    no_fim = build_records(fns, options=TaskOptions(fim_rate=0.0))
    assert not [r for r in no_fim if r.task == "fim"]
    all_fim = build_records(fns, options=TaskOptions(fim_rate=1.0, spm_rate=0.0))
    assert not [r for r in all_fim if r.task == "completion"]
    s = FimSentinels()
    for rec in (r for r in all_fim if r.task == "fim"):
        split = parse_fim_prompt(rec.prompt, "psm", s)
        doc = split.prefix + rec.completion + split.suffix
        assert doc in {f.source for f in fns}
    with pytest.raises(ValueError, match="fim_rate"):
        TaskOptions(fim_rate=2.0)


def test_completion_records_rejoin():
    fn = next(f for f in iter_functions("m", SOURCE) if f.qualname == "Box.size")
    from apps.code.tasks import completion_record

    rng = random.Random(0)
    for _ in range(10):
        rec = completion_record(fn, rng)
        assert rec.prompt + rec.completion == fn.source
        assert rec.prompt.startswith(fn.header)


def test_function_dataclass_is_frozen():
    fn = Function("m", "f", "def f():\n    pass\n", "def f():", "", "    pass\n", "")
    with pytest.raises(AttributeError):
        fn.module = "x"  # type: ignore[misc]
