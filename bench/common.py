"""Shared pieces of the benchmarks: the models, timing, memory and the report."""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def reference_llama(vocab_size: int = 8000, seed: int = 0) -> torch.nn.Module:
    """The issue's reference model: Llama, hidden 512, intermediate 1376, 4 layers, 8 heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=vocab_size,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config)


def smollm2_config() -> Any:
    """The ``LlamaConfig`` of SmolLM2-135M, the code app's model.

    Vocab 49152, hidden 576, intermediate 1536, 30 layers, 9 heads with 3 KV heads (head
    dim 64), rope theta 100000, RMSNorm eps 1e-5, tied input/output embeddings, 8192
    positions: 134,515,008 parameters, as in the config the code app converts from its
    SmolLM2-135M-Instruct GGUF (``apps/code/gguf_import.py``).
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        # The token ids of SmolLM2-135M-Instruct as the code app converts it (no bearing on
        # speed: the benchmarks generate a fixed number of tokens).
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def smollm2_llama(seed: int = 0) -> torch.nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` of SmolLM2-135M's shape.

    No download: a step's time and memory depend on the shapes, not on the values, so the
    benchmarks need the architecture only (random weights also keep them offline).
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(smollm2_config())


#: The models a benchmark can run on (``--model``): the issue's reference Llama (21M) and
#: SmolLM2-135M's shape.
MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "reference": reference_llama,
    "smollm2": smollm2_llama,
}

#: One line per model for report titles.
MODEL_TITLES = {
    "reference": "reference Llama 21M",
    "smollm2": "SmolLM2-135M shape, random weights",
}


def build_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The model ``name`` of :data:`MODELS`, initialised from ``seed``."""
    return MODELS[name](seed=seed)


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_samples(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, prime: bool = False
) -> dict[str, list[float]]:
    """Wall times of several functions measured in turns, so load drifts hit all alike.

    With ``prime``, each timed call comes right after an untimed call of the same function,
    so every path is timed with its own data in cache, as a server running one model finds
    it. Without it, a path's cache state depends on which path ran before it: one that
    follows a path reading the same tensors (two entry points into one model, a floor
    reading the stacks the previous path read) finds them warm, and the others do not.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if prime:
                fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median times of several functions measured in turns (see :func:`interleaved_samples`)."""
    samples = interleaved_samples(fns, repeats, warmup)
    return {k: statistics.median(v) for k, v in samples.items()}


def round_ratio_quartiles(ours: list[float], peer: list[float]) -> tuple[float, float]:
    """25th and 75th percentiles of ours / peer taken round by round (same turn).

    The spread a reader should expect from a re-run on a shared machine: one ratio per
    round pairs two measurements taken seconds apart, under the same load.
    """
    ratios = sorted(a / b for a, b in zip(ours, peer, strict=True))
    if len(ratios) == 1:
        return ratios[0], ratios[0]
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak_rss` (or start), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory now, in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_worker(module: str, args: list[str]) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh process; it prints one JSON line last."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {module} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    """One line naming the machine the figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def report(title: str, rows: list[dict[str, Any]], csv_path: str | Path) -> str:
    """Print a markdown table of ``rows`` and write them as CSV; return the table."""
    headers = list(rows[0])
    lines = [
        f"### {title}",
        "",
        f"Machine: {machine_description()}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[h]) for h in headers) + " |")
    table = "\n".join(lines)
    print(table)
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=headers)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def add_model_option(parser: Any) -> None:
    """``--model reference|smollm2``: the model shape a benchmark runs on."""
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        default="reference",
        help="reference: the issue's Llama 21M; smollm2: SmolLM2-135M's shape, random weights",
    )


def step_comparison_rows(
    steps: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    module: str,
    worker_args: list[str],
) -> list[dict[str, Any]]:
    """The table of a training-step comparison with paths ``ours``, ``peft`` (and others).

    Times every path in turn in this process (:func:`interleaved_samples`; the ratio of
    medians to PEFT's, and the quartiles of the round-by-round ours/PEFT ratios), and the
    peak memory of ``ours`` and ``peft`` each in a fresh process: ``python -m module
    *worker_args --worker <path>``, which prints ``{"added_mb": ...}``.
    """
    samples = interleaved_samples(steps, repeats, warmup)
    times = {path: statistics.median(values) for path, values in samples.items()}
    low, high = round_ratio_quartiles(samples["ours"], samples["peft"])
    memory = {p: run_worker(module, [*worker_args, "--worker", p]) for p in ("ours", "peft")}
    return [
        {
            "path": path,
            "step_ms": times[path] * 1e3,
            "time_vs_peft": times[path] / times["peft"],
            "per_round_iqr": f"{low:.3f}-{high:.3f}" if path == "ours" else "",
            "step_peak_mb": memory[path]["added_mb"] if path in memory else "",
            "memory_vs_peft": (
                memory[path]["added_mb"] / memory["peft"]["added_mb"] if path in memory else ""
            ),
        }
        for path in steps
    ]


def require_grad_hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook for the frozen "floor" rows: the layer's output joins the graph as a
    LoRA layer's output would, so backward runs the same input gradients."""
    return output if output.requires_grad else output.requires_grad_(True)


def print_step_memory(path: str, step: Callable[[], Any]) -> None:
    """A memory worker's report: peak RSS over two calls of ``step`` minus the RSS before
    them, printed as the one JSON line :func:`run_worker` reads."""
    before = current_rss_mb()
    reset_peak_rss()
    step()
    step()
    print(json.dumps({"path": path, "added_mb": peak_rss_mb() - before}))
