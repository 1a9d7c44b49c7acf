"""A small execution benchmark: held-out standard-library functions, scored by their doctests.

HumanEval is out of reach of the small models this app fine-tunes (they score 0), so this
benchmark asks for something closer to what they were trained on. Each problem is a
function of a *held-out* standard-library module (never seen in pre-training or
fine-tuning; :func:`apps.code.corpus.split_modules`) whose docstring holds doctest examples:

- the prompt is the function's signature + docstring, exactly the ``doc2body`` prompt of
  :mod:`apps.code.tasks` (HumanEval's shape); the model writes the body;
- the tests are the function's own doctest examples, run in the sandbox
  (:func:`apps.code.sandbox.run_program`) by a program that imports the real module, defines
  the generated function inside that module's namespace (so module globals and helpers
  resolve; a method is compiled inside a class of its owner's name, so private names and
  ``super()`` work, and is set on the real class), and runs the examples with a private copy
  of :mod:`doctest` against a copy of the module's globals.

Methods are included by default: the held-out modules hold only about 25 top-level
functions with doctests, and methods of module-level classes (``Context.add`` of
``_pydecimal``, ``Counter.__add__``) run just as meaningfully when the doctest reaches them
through module globals (``ExtendedContext.add(...)``). ``methods=False`` keeps top-level
functions only.

A candidate is kept only if its canonical body passes in the sandbox and a ``return None``
body fails (otherwise the doctest tests nothing); the filtering is cached with
:mod:`core.cache`, keyed on the candidates' text, the Python version and the sandbox's
isolation. Examples run with ``ELLIPSIS`` on top of their own ``# doctest:`` directives.

    problems = doctest_problems()                      # validated, val + test parts
    result = evaluate_doctests(model, tokenizer, problems)
    result["pass@1"], result["statuses"]
"""

from __future__ import annotations

import ast
import doctest
import functools
import hashlib
import json
import random
import secrets
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .corpus import held_out_part, iter_functions, list_modules, read_source, split_modules
from .sandbox import SandboxResult, check_sandbox, run_program

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_OPTIONFLAGS", "PARTS", "DoctestProblem", "candidate_problems", "doctest_problems",
    "doctest_program", "evaluate_doctests", "held_out_part", "score_completions",
    "validate_problems",
]  # fmt: skip

#: The held-out parts (as :func:`apps.code.data.embedded_records` splits them).
PARTS = ("val", "test")
#: Doctest option flags of every example, on top of its own ``# doctest:`` directives.
DEFAULT_OPTIONFLAGS = doctest.ELLIPSIS
#: The body that must fail: a doctest it passes tests nothing.
TRIVIAL_BODY = "    return None\n"
#: Bump when the program or the filtering changes (part of the validation cache key).
BENCH_VERSION = 1
#: ``core.cache`` app folder and entry kind of the validation results.
CACHE_APP, CACHE_KIND = "code", "doctest-problems"
_OK = "doctest-bench ok"


@dataclass(frozen=True)
class DoctestProblem:
    """One held-out function whose doctests are its tests.

    Attributes:
        task_id: ``module:qualname`` (e.g. ``statistics:median``).
        module: The dotted module name the program imports.
        qualname: ``name`` or ``Class.name`` within the module.
        part: ``"val"`` or ``"test"`` (the held-out part of its module).
        prompt: ``def`` line(s) + docstring at column 0 (the ``doc2body`` prompt).
        canonical: The real body (the ``doc2body`` target).
        doctest: The docstring text the examples are parsed from.
        decorators: Source of the function's decorators, outermost first; the program
            applies them to the generated function (they are not in the prompt).
        examples: Number of doctest examples.
    """

    task_id: str
    module: str
    qualname: str
    part: str
    prompt: str
    canonical: str
    doctest: str
    decorators: tuple[str, ...] = ()
    examples: int = 0

    @property
    def name(self) -> str:
        """The function's own name (the last part of ``qualname``)."""
        return self.qualname.rsplit(".", 1)[-1]

    @property
    def is_method(self) -> bool:
        """Whether the function is defined in a class."""
        return "." in self.qualname


def _decorators(source: str) -> dict[str, list[list[str]]]:
    """qualname -> the decorator lists of every function of that name (module and classes)."""
    found: dict[str, list[list[str]]] = {}
    stack: list[tuple[ast.AST, str]] = [(ast.parse(source), "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                stack.append((child, f"{prefix}{child.name}."))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                decs = [ast.get_source_segment(source, d) or ast.unparse(d)
                        for d in child.decorator_list]  # fmt: skip
                found.setdefault(f"{prefix}{child.name}", []).append(decs)
    return found


def _count_examples(text: str) -> int:
    try:
        return len(doctest.DocTestParser().get_examples(text))
    except ValueError:  # malformed doctest (inconsistent indentation)
        return 0


def candidate_problems(
    held_out_fraction: float = 0.15,
    parts: Sequence[str] = PARTS,
    max_lines: int = 60,
    methods: bool = True,
) -> list[DoctestProblem]:
    """Every held-out function with doctest examples, before any run (sorted by task id).

    Functions whose qualname occurs twice in a module (a property's getter and setter,
    redefinitions) are left out: the program could not tell which one it replaces.
    Built once per process for each set of arguments (the library does not change).
    """
    return list(_candidates(held_out_fraction, _check_parts(parts), max_lines, methods))


@functools.lru_cache(maxsize=8)
def _candidates(
    held_out_fraction: float, parts: tuple[str, ...], max_lines: int, methods: bool
) -> tuple[DoctestProblem, ...]:
    _, held = split_modules(list_modules(), held_out_fraction)
    out: list[DoctestProblem] = []
    for module, path in held.items():
        part = held_out_part(module)
        if part not in parts:
            continue
        source = read_source(path)
        if source is None:
            continue
        decorators = None
        for fn in iter_functions(module, source, max_lines=max_lines):
            if (not methods and "." in fn.qualname) or not fn.docstring or not fn.body.strip():
                continue
            examples = _count_examples(fn.doc_text) if ">>>" in fn.doc_text else 0
            if not examples:
                continue
            decorators = _decorators(source) if decorators is None else decorators
            if len(decorators.get(fn.qualname, [])) != 1:
                continue
            out.append(DoctestProblem(
                task_id=f"{module}:{fn.qualname}", module=module, qualname=fn.qualname,
                part=part, prompt=f"{fn.header}\n{fn.docstring}\n", canonical=fn.body,
                doctest=fn.doc_text, decorators=tuple(decorators[fn.qualname][0]),
                examples=examples,
            ))  # fmt: skip
    return tuple(sorted(out, key=lambda p: p.task_id))


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(parts, str):
        parts = (parts,)
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"parts={tuple(parts)!r} must be a non-empty subset of {PARTS}.")
    return tuple(p for p in PARTS if p in parts)


# The program run in the sandbox: this function's source, then one call of it. It takes
# everything as literals, so the completion cannot reach the values it is checked against
# except through the module it is defined in.
def _bench_run(module, qualname, decorators, source, docstring, flags, marker):  # pragma: no cover
    import ast
    import importlib
    import importlib.util
    import sys

    # A private copy of doctest: a completion that patches the module ``doctest`` (or is a
    # function of it) cannot change the runner that checks it.
    spec = importlib.util.find_spec("doctest")
    runner_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner_module)

    mod = importlib.import_module(module)
    *owners, name = qualname.split(".")
    tree = ast.parse(source, filename="<completion>")
    if owners:
        owner = mod
        for part in owners:
            owner = getattr(owner, part)
        # Compile inside a class of the owner's name: private names are mangled as in the
        # original and ``super()`` gets a ``__class__`` cell (pointed at the real class below).
        wrapper = ast.parse(f"class {owners[-1]}:\n    pass\n")
        wrapper.body[0].body = tree.body
        scope = {}
        exec(compile(wrapper, "<completion>", "exec"), mod.__dict__, scope)
        func = scope[owners[-1]].__dict__[name]
        code = getattr(func, "__code__", None)
        if code is not None and "__class__" in code.co_freevars:
            func.__closure__[code.co_freevars.index("__class__")].cell_contents = owner
        namespace = dict(vars(owner))
        for dec in reversed(decorators):
            func = eval(dec, mod.__dict__, namespace)(func)
        setattr(owner, name, func)
    else:
        exec(compile(tree, "<completion>", "exec"), mod.__dict__)
        func = mod.__dict__[name]
        for dec in reversed(decorators):
            func = eval(dec, mod.__dict__)(func)
        setattr(mod, name, func)
    globs = dict(mod.__dict__)
    parser, runner = runner_module.DocTestParser(), runner_module.DocTestRunner(
        verbose=False, optionflags=flags)  # fmt: skip
    test = parser.get_doctest(docstring, globs, f"{module}.{qualname}", f"{module}.py", 0)
    result = runner.run(test, out=sys.stderr.write, clear_globs=False)
    if result.failed or not result.attempted:
        raise AssertionError(f"{result.failed} of {result.attempted} doctest examples failed")
    sys.stdout.write(f"\n{marker}\n")


_RUNNER_SOURCE: str | None = None


def _runner_source() -> str:
    global _RUNNER_SOURCE
    if _RUNNER_SOURCE is None:
        import inspect

        _RUNNER_SOURCE = inspect.getsource(_bench_run).replace("  # pragma: no cover", "")
    return _RUNNER_SOURCE


def doctest_program(
    problem: DoctestProblem, completion: str, marker: str = _OK,
    optionflags: int = DEFAULT_OPTIONFLAGS,
) -> str:  # fmt: skip
    """The sandbox program that checks ``completion`` (a body) against the doctests.

    It prints ``marker`` as its last line when every example passed; pass a fresh random
    marker (as :func:`score_completions` does) so a completion that exits early with status
    0 does not count as a pass.
    """
    source = problem.prompt + completion
    if not source.endswith("\n"):
        source += "\n"
    args = (problem.module, problem.qualname, list(problem.decorators), source,
            problem.doctest, optionflags, marker)  # fmt: skip
    return _runner_source() + "\n\n_bench_run(" + ", ".join(map(repr, args)) + ")\n"


def _run_all(programs: Sequence[str], timeout: float, workers: int) -> list[SandboxResult]:
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        return list(pool.map(lambda src: run_program(src, timeout=timeout), programs))


def _score(
    problems: Sequence[DoctestProblem], completions: Sequence[str], timeout: float, workers: int
) -> list[tuple[str, SandboxResult]]:
    if len(problems) != len(completions):
        raise ValueError(
            f"score_completions got {len(problems)} problems but {len(completions)} "
            "completions; give one completion (a body) per problem."
        )
    markers = [f"{_OK} {secrets.token_hex(8)}" for _ in problems]
    programs = [doctest_program(p, c, m) for p, c, m in zip(problems, completions, markers,
                                                               strict=True)]  # fmt: skip
    results = _run_all(programs, timeout, workers)
    out = []
    for marker, r in zip(markers, results, strict=True):
        status = r.status
        if status == "passed" and marker not in r.stdout.splitlines():
            status = "failed"  # exited with status 0 before the doctests ran to the end
        out.append((status, r))
    return out


def score_completions(
    problems: Sequence[DoctestProblem],
    completions: Sequence[str],
    timeout: float = 3.0,
    workers: int = 2,
) -> dict[str, Any]:
    """Run one completion (a body, as the model wrote it) per problem; no model involved.

    Returns ``{"pass@1": share passed, "passed": count, "problems": N, "statuses":
    {status: count}, "per_problem": [{"task_id", "passed", "status"}...]}``; statuses are
    the sandbox's (``passed``, ``failed``: a doctest example failed, ``error``: the code
    did not compile or define the function, ``timeout``, ``killed``, ``refused``).
    """
    scored = _score(problems, completions, timeout, workers)
    per_problem = [{"task_id": p.task_id, "passed": status == "passed", "status": status}
                   for p, (status, _) in zip(problems, scored, strict=True)]  # fmt: skip
    passed = sum(q["passed"] for q in per_problem)
    return {
        "pass@1": passed / len(problems) if problems else 0.0,
        "passed": passed,
        "problems": len(problems),
        "statuses": dict(Counter(q["status"] for q in per_problem)),
        "per_problem": per_problem,
    }


def validate_problems(
    problems: Sequence[DoctestProblem], timeout: float = 10.0, workers: int = 2
) -> tuple[list[DoctestProblem], dict[str, Any]]:
    """Keep the problems whose canonical body passes and a ``return None`` body fails.

    Returns ``(kept, report)``: ``report`` has the count at each stage (``with_doctests``,
    ``canonical_passes``, ``trivial_fails``) and the task ids dropped at each, with the
    canonical run's status.
    """
    canonical = _score(problems, [p.canonical for p in problems], timeout, workers)
    passing = [p for p, (status, _) in zip(problems, canonical, strict=True)
               if status == "passed"]  # fmt: skip
    trivial = _score(passing, [TRIVIAL_BODY] * len(passing), timeout, workers)
    kept = [p for p, (status, _) in zip(passing, trivial, strict=True) if status != "passed"]
    report = {
        "with_doctests": len(problems),
        "canonical_passes": len(passing),
        "trivial_fails": len(kept),
        "canonical_failed": {p.task_id: f"{status}: {_last_line(r)}" for p, (status, r) in
                             zip(problems, canonical, strict=True) if status != "passed"},
        "trivial_passed": [p.task_id for p, (status, _) in zip(passing, trivial, strict=True)
                           if status == "passed"],
    }  # fmt: skip
    return kept, report


def _last_line(result: SandboxResult) -> str:
    lines = (result.reason or result.stderr).strip().splitlines()
    return lines[-1][:200] if lines else ""


def _validation_key(problems: Sequence[DoctestProblem], timeout: float) -> dict[str, Any]:
    text = json.dumps([[p.task_id, p.prompt, p.canonical, p.doctest, list(p.decorators)]
                       for p in problems])  # fmt: skip
    return {
        "version": BENCH_VERSION,
        "python": sys.version,
        "isolation": check_sandbox(),
        "optionflags": DEFAULT_OPTIONFLAGS,
        "timeout": timeout,
        "candidates": hashlib.sha256(text.encode()).hexdigest(),
    }


def doctest_problems(
    held_out_fraction: float = 0.15,
    parts: Sequence[str] = PARTS,
    split_seed: int = 0,
    limit: int | None = None,
    max_lines: int = 60,
    methods: bool = True,
    validate: bool = True,
    cache_dir: str | Path | None = None,
    timeout: float = 10.0,
    workers: int = 2,
    report: dict[str, Any] | None = None,
) -> list[DoctestProblem]:
    """The benchmark's problems: held-out functions with doctests, sorted by task id.

    Args:
        held_out_fraction: Share of stdlib packages held out (as the data and the base).
        parts: Held-out parts to draw from: ``("val", "test")`` or one of them.
        split_seed: Seed of the subset drawn when ``limit`` is set.
        limit: Keep a random subset of this many problems (in task-id order); ``None``: all.
        max_lines: Longest function (lines, docstring included), as the embedded tasks.
        methods: Include methods of module-level classes (``False``: top-level functions).
        validate: Keep only problems whose canonical body passes in the sandbox and whose
            ``return None`` body fails (cached; ``False``: every candidate, no sandbox).
        cache_dir: Folder of the validation cache instead of ``<cache root>/code``.
        timeout: Sandbox seconds per validation program.
        workers: Programs run at once while validating.
        report: A dict to fill with the counts of each stage (``with_doctests``,
            ``canonical_passes``, ``trivial_fails``, ``kept``) and the dropped task ids.

    Raises:
        apps.code.sandbox.SandboxUnavailable: ``validate`` and the sandbox cannot start
            (and running without it was not allowed).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be >= 1 (or None for every problem).")
    problems = candidate_problems(held_out_fraction, parts, max_lines, methods)
    stages: dict[str, Any] = {"with_doctests": len(problems)}
    if validate and problems:
        from core.cache import cached

        def build() -> dict[str, Any]:
            kept, found = validate_problems(problems, timeout=timeout, workers=workers)
            return {**found, "kept_ids": [p.task_id for p in kept]}

        found = cached(CACHE_KIND, _validation_key(problems, timeout), build, app=CACHE_APP,
                       cache_dir=cache_dir)  # fmt: skip
        keep = set(found["kept_ids"])
        problems = [p for p in problems if p.task_id in keep]
        stages.update({k: v for k, v in found.items() if k != "kept_ids"})
    if limit is not None and limit < len(problems):
        chosen = sorted(random.Random(split_seed).sample(range(len(problems)), limit))
        problems = [problems[i] for i in chosen]
    stages["kept"] = len(problems)
    if report is not None:
        report.update(stages)
    return problems


def evaluate_doctests(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[DoctestProblem],
    max_new_tokens: int = 256,
    batch_prompts: int = 8,
    timeout: float = 3.0,
    workers: int = 2,
    batch_context: Callable[[int], AbstractContextManager] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Greedy bodies for ``problems``, scored by their doctests in the sandbox.

    Decodes with :func:`apps.code.evaluation.sample_completions` (cut at HumanEval's stop
    sequences) and scores with :func:`score_completions`, whose dict it returns. Raises
    :class:`apps.code.sandbox.SandboxUnavailable` before sampling when programs cannot run.
    """
    from .evaluation import HUMANEVAL_STOPS, sample_completions

    if not problems:
        raise ValueError("evaluate_doctests got no problems; build them with doctest_problems().")
    check_sandbox()  # refuse now, not after minutes of sampling
    completions = sample_completions(
        model, tokenizer, [p.prompt for p in problems], n=1, temperature=0.0,
        max_new_tokens=max_new_tokens, stops=HUMANEVAL_STOPS, batch_prompts=batch_prompts,
        seed=seed, batch_context=batch_context,
    )  # fmt: skip
    return score_completions(problems, [c[0] for c in completions], timeout, workers)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m apps.code.doctest_bench [--parts test] [--no-methods]``: the stage counts."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--no-methods", action="store_true", help="top-level functions only")
    parser.add_argument("--max-lines", type=int, default=60)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--list", action="store_true", help="print the kept task ids")
    args = parser.parse_args(argv)
    start, found = time.perf_counter(), {}
    problems = doctest_problems(parts=args.parts, max_lines=args.max_lines,
                                methods=not args.no_methods, cache_dir=args.cache_dir,
                                report=found)  # fmt: skip
    print(json.dumps(found, indent=1))
    print(f"{len(problems)} problems ({', '.join(args.parts)}) in "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    if args.list:
        print("\n".join(p.task_id for p in problems))


if __name__ == "__main__":
    main()
