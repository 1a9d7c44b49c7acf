"""The doctest benchmark: held-out problems only, the doc2body prompt, canonical bodies pass
and wrong ones fail in the real sandbox, and the end-to-end evaluation's result shape."""

from __future__ import annotations

import pytest

from apps.code import doctest_bench
from apps.code.corpus import is_held_out, list_modules, split_modules
from apps.code.doctest_bench import (
    TRIVIAL_BODY,
    DoctestProblem,
    candidate_problems,
    doctest_problems,
    doctest_program,
    evaluate_doctests,
    score_completions,
)

from .conftest import kernel

#: A few problems of each kind: top-level, decorated (classmethod), methods reached through a
#: module-level instance, dunder methods reached through operators.
SAMPLE = (
    "statistics:median",
    "_pydecimal:Decimal.from_float",
    "_pydecimal:Context.add",
    "collections:Counter.__add__",
    "importlib.metadata._itertools:always_iterable",
)
#: The canonical body with one returned value changed: each must fail its doctests.
WRONG = {
    "statistics:median": ("+ data[i]) / 2", "+ data[i]) / 3"),
    "_pydecimal:Context.add": ("return r", "return -r"),
    "collections:Counter.__add__": ("return result", "return Counter()"),
    "_pydecimal:Decimal.from_float": ("return result", "return -result"),
}  # fmt: skip


@pytest.fixture(scope="module")
def candidates() -> list[DoctestProblem]:
    return candidate_problems()


@pytest.fixture(scope="module")
def by_id(candidates) -> dict[str, DoctestProblem]:
    return {p.task_id: p for p in candidates}


def test_candidates_are_deterministic_and_held_out(candidates):
    assert len(candidates) >= 30
    assert candidates == candidate_problems()
    assert [p.task_id for p in candidates] == sorted({p.task_id for p in candidates})
    train, held = split_modules(list_modules(), 0.15)
    for p in candidates:
        assert p.module in held and p.module not in train, p.task_id
        assert is_held_out(p.module, 0.15)
        assert p.task_id == f"{p.module}:{p.qualname}" and p.part in ("val", "test")
        assert p.prompt.startswith(("def ", "async def ")) and ">>>" in p.prompt
        assert p.examples >= 1 and p.canonical.strip()
        # The program imports the problem's own (held-out) module and nothing else of the
        # library by name.
        assert f"_bench_run({p.module!r}, {p.qualname!r}," in doctest_program(p, p.canonical)
    assert {p.part for p in candidates} == {"val", "test"}


def test_parts_and_top_level_only():
    test_only = candidate_problems(parts=("test",))
    assert test_only and all(p.part == "test" for p in test_only)
    functions = candidate_problems(methods=False)
    assert functions and not any(p.is_method for p in functions)
    with pytest.raises(ValueError, match="parts"):
        candidate_problems(parts=("train",))
    with pytest.raises(ValueError, match="limit"):
        doctest_problems(limit=0, validate=False)


def test_prompts_and_parts_match_the_doc2body_records(candidates):
    """The prompt is the doc2body prompt, and each module's part is the one the data gives it."""
    from apps.code.data import embedded_records

    _, val, test, _ = embedded_records(tasks=("doc2body",), max_train_per_task=0,
                                       max_eval_per_task=None, max_modules=14)  # fmt: skip
    records = {"val": {(r.prompt, r.completion) for r in val},
               "test": {(r.prompt, r.completion) for r in test}}  # fmt: skip
    _, held = split_modules(list_modules(), 0.15)
    first = set(list(held)[:14])
    checked = [p for p in candidates if p.module in first]
    assert len(checked) > 20
    for p in checked:
        other = "test" if p.part == "val" else "val"
        assert (p.prompt, p.canonical) in records[p.part], p.task_id
        assert (p.prompt, p.canonical) not in records[other], p.task_id


def test_limit_draws_a_seeded_subset_in_order():
    every = doctest_problems(validate=False)
    some = doctest_problems(validate=False, limit=7, split_seed=1)
    assert len(some) == 7 and some == doctest_problems(validate=False, limit=7, split_seed=1)
    assert [p.task_id for p in some] == sorted(p.task_id for p in some)
    assert {p.task_id for p in some} <= {p.task_id for p in every}
    assert some != doctest_problems(validate=False, limit=7, split_seed=2)


@kernel
def test_canonical_passes_trivial_and_wrong_bodies_fail(by_id):
    problems = [by_id[t] for t in SAMPLE]
    good = score_completions(problems, [p.canonical for p in problems], timeout=10.0)
    assert good["passed"] == len(problems), good["per_problem"]
    assert good["pass@1"] == 1.0 and good["statuses"] == {"passed": len(problems)}
    trivial = score_completions(problems, [TRIVIAL_BODY] * len(problems), timeout=10.0)
    assert trivial["passed"] == 0 and set(trivial["statuses"]) <= {"failed", "error"}
    wrong_problems = [by_id[t] for t in WRONG]
    wrong = []
    for p in wrong_problems:
        old, new = WRONG[p.task_id]
        assert p.canonical.count(old) == 1, p.task_id
        wrong.append(p.canonical.replace(old, new))
    result = score_completions(wrong_problems, wrong, timeout=10.0)
    assert result["statuses"] == {"failed": len(wrong)}, result["per_problem"]
    assert [q["task_id"] for q in result["per_problem"]] == list(WRONG)


@kernel
def test_methods_keep_super_and_exits_do_not_pass(by_id):
    # Counter.__init__ calls super().__init__(): the __class__ cell must be the real class.
    init = by_id["collections:Counter.__init__"]
    median = by_id["statistics:median"]
    result = score_completions(
        [init, median, median, median],
        [init.canonical, "    raise SystemExit(0)\n", "    return (\n", "    return 3\n"],
        timeout=10.0,
    )  # fmt: skip
    assert [q["status"] for q in result["per_problem"]] == ["passed", "failed", "error", "failed"]
    with pytest.raises(ValueError, match="one completion"):
        score_completions([median], [])


@kernel
def test_validation_filters_and_is_cached(tmp_path, monkeypatch):
    report: dict = {}
    kept = doctest_problems(parts=("test",), methods=False, cache_dir=tmp_path, report=report)
    assert report["with_doctests"] >= report["canonical_passes"] >= report["trivial_fails"]
    assert report["kept"] == len(kept) == report["trivial_fails"] >= 3
    assert list(tmp_path.iterdir())

    def no_runs(*args, **kwargs):
        raise AssertionError("the validation should come from the cache")

    monkeypatch.setattr(doctest_bench, "validate_problems", no_runs)
    assert doctest_problems(parts=("test",), methods=False, cache_dir=tmp_path) == kept


@kernel
def test_evaluate_doctests_end_to_end(tiny_base, by_id):
    from apps.code.model import load_base

    _, cfg = tiny_base
    model, tokenizer, _ = load_base(cfg)
    problems = [by_id[t] for t in SAMPLE[:3]]
    result = evaluate_doctests(model, tokenizer, problems, max_new_tokens=8, batch_prompts=2)
    assert set(result) == {"pass@1", "passed", "problems", "statuses", "per_problem"}
    assert 0.0 <= result["pass@1"] <= 1.0 and result["problems"] == 3
    assert sum(result["statuses"].values()) == 3
    assert [q["task_id"] for q in result["per_problem"]] == list(SAMPLE[:3])
    assert all(set(q) == {"task_id", "passed", "status"} for q in result["per_problem"])
    with pytest.raises(ValueError, match="no problems"):
        evaluate_doctests(model, tokenizer, [])
