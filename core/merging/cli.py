"""``python -m core.merging CONFIG.yaml``: merge models on disk, one tensor at a time.

A config names the method, the base, the models (each with its own weight and per-model
parameters), the method's parameters, the output dtype, the seed and the output directory::

    method: ties
    base: runs/base/model.safetensors          # safetensors, HF dir, .ckpt, .bin
    models:
      - path: runs/task_a/adapter              # PEFT adapter dir (read as base + delta)
        weight: 1.0
        density: 0.3                           # per-model parameter
      - runs/task_b/checkpoints/last.ckpt      # a plain path: weight 1, global parameters
    parameters: {density: 0.2, scaling: 1.0}
    dtype: bfloat16                            # default: the base's dtypes
    seed: 0
    output: runs/merged                        # model.safetensors + merge_manifest.json

With ``combination: cat | svd | linear`` (and ``rank``, and optionally ``method`` for svd)
the models must be PEFT LoRA adapters and the output is one merged adapter directory.

The output directory appears complete or not at all (built under a temporary name, then
renamed); ``merge_manifest.json`` records the method, the inputs with their SHA-256, the
resolved parameters, the seed and the output files with their SHA-256. An output that is,
contains or lies inside an input (or the config file) is refused, even with ``overwrite``,
so a merge never destroys its inputs. Exit status: 0 done, 2 the config or an input is wrong
(one ``error:`` line), 1 the output could not be written (e.g. a full disk; one line, and
nothing is left behind).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from core.atomic import atomic_directory

from .engine import check_compatible, output_dtypes, parse_dtype, run_merge
from .io import (
    OutputWriteError,
    SafetensorsWriter,
    check_output_apart,
    explain_full_disk,
    is_adapter_dir,
    open_source,
    plan_bytes,
    sha256_file,
    stored_dtype,
)
from .lora_merge import COMBINATIONS, merge_lora_adapters, write_lora_adapter_files
from .registry import METHODS, get_method
from .sources import Source

MANIFEST_NAME = "merge_manifest.json"
MODEL_FILE = "model.safetensors"
_TOP_LEVEL = (
    "method",
    "base",
    "models",
    "parameters",
    "dtype",
    "seed",
    "output",
    "overwrite",
    "prefix",
    "combination",
    "rank",
)
_MODEL_KEYS = ("path", "weight", "fisher", "prefix")
_SKIP_COPY = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


@dataclass
class ModelEntry:
    """One input model: its path, weight, optional Fisher file and per-model parameters."""

    path: str
    weight: float | None = None
    fisher: str | None = None
    prefix: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeConfig:
    """A parsed merge config (see the module docstring for the YAML)."""

    models: list[ModelEntry]
    output: str
    method: str | None = None
    base: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    seed: int = 0
    overwrite: bool = False
    prefix: str | None = None
    combination: str | None = None
    rank: int | None = None


def merge_config_from_dict(data: Any, where: str = "config") -> MergeConfig:
    """Parse and check a merge config dict into a :class:`MergeConfig`.

    Errors name the field and the fix. (Not to be confused with
    :func:`core.adapters.config_from_dict`, which builds an adapter config.)
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping with method, models and output.")
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {', '.join(_TOP_LEVEL)}.")
    for required in ("models", "output"):
        if not data.get(required):
            raise ValueError(f"{where}: '{required}' is required.")
    if not data.get("method") and not data.get("combination"):
        raise ValueError(
            f"{where}: set 'method' (one of {', '.join(sorted(METHODS))}) or, to merge LoRA "
            f"adapters into one adapter, 'combination' ({', '.join(COMBINATIONS)})."
        )
    if not isinstance(data["models"], list):
        raise ValueError(f"{where}: 'models' must be a list of paths or {{path: ...}} entries.")
    models = []
    for i, entry in enumerate(data["models"]):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not entry.get("path"):
            raise ValueError(f"{where}: models[{i}] needs a 'path'.")
        own = {k: v for k, v in entry.items() if k not in _MODEL_KEYS}
        models.append(
            ModelEntry(
                path=str(entry["path"]),
                weight=entry.get("weight"),
                fisher=entry.get("fisher"),
                prefix=entry.get("prefix"),
                params=own,
            )
        )
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError(f"{where}: 'parameters' must be a mapping (e.g. {{density: 0.2}}).")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{where}: seed={seed!r} must be an integer.")
    parse_dtype(data.get("dtype"))
    if data.get("method"):
        get_method(data["method"])
    if data.get("combination") is not None and data["combination"] not in COMBINATIONS:
        raise ValueError(f"{where}: combination must be one of {', '.join(COMBINATIONS)}.")
    return MergeConfig(
        models=models,
        output=str(data["output"]),
        method=data.get("method"),
        base=data.get("base"),
        parameters=dict(parameters),
        dtype=data.get("dtype"),
        seed=seed,
        overwrite=bool(data.get("overwrite", False)),
        prefix=data.get("prefix"),
        combination=data.get("combination"),
        rank=data.get("rank"),
    )


def load_config(path: str | Path) -> MergeConfig:
    """Read a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"merge config {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{str(path)!r} is not valid YAML ({err}).") from err
    return merge_config_from_dict(data, where=str(path))


def _import_callable(spec: Any, what: str) -> Callable[..., Any]:
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"{what}={spec!r} must be 'package.module:function'.")
    module_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what}={spec!r} could not be imported ({err}).") from err
    if not callable(obj):
        raise ValueError(f"{what}={spec!r} is not callable.")
    return obj


def _files_record(source: Source | None, path: str) -> dict[str, Any]:
    if source is not None:
        files = source.files()
    elif Path(path).is_dir():
        files = sorted(f for f in Path(path).iterdir() if f.is_file())
    else:
        files = [Path(path)]
    return {
        "path": str(path),
        "files": [
            {"name": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files
        ],
    }


def _jsonable(value: Any) -> Any:
    if callable(value):
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', value)}"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _copy_model_files(source_dir: Path, out_dir: Path) -> list[str]:
    """Copy an HF model directory's config and tokenizer files (not its weights)."""
    copied = []
    for f in sorted(source_dir.iterdir()):
        if f.is_file() and not f.name.endswith(_SKIP_COPY) and not f.name.endswith(".index.json"):
            if f.name in (MANIFEST_NAME, "adapter_config.json"):
                continue
            shutil.copy2(f, out_dir / f.name)
            copied.append(f.name)
    return copied


def input_paths(config: MergeConfig) -> list[str]:
    """Every path a merge reads: the base, the models and their Fisher files."""
    paths = [config.base] if config.base else []
    for entry in config.models:
        paths.append(entry.path)
        if entry.fisher:
            paths.append(entry.fisher)
    return paths


def run(config: MergeConfig, log: Callable[[str], None] | None = None) -> Path:
    """Run a merge described by ``config``; returns the output directory.

    Refuses (``ValueError``) an output that is, contains or lies inside an input; a full disk
    raises a one-line ``OutputWriteError`` and leaves nothing behind.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_output_apart(config.output, input_paths(config))
    if config.combination is not None:
        return _run_adapter_merge(config, log)
    start = time.time()
    assert config.method is not None
    spec = get_method(config.method)
    opened: list[Source] = []
    try:
        base = open_source(config.base, prefix=config.prefix) if config.base else None
        if base is not None:
            opened.append(base)
        if base is None and spec.needs_base:
            raise ValueError(f"{spec.name} needs base: (the pre-trained model) in the config.")
        models, fishers = [], []
        for entry in config.models:
            source = open_source(entry.path, base, entry.prefix or config.prefix)
            opened.append(source)
            models.append(source)
            if entry.fisher:
                fisher = open_source(entry.fisher)
                opened.append(fisher)
                fishers.append(fisher)
        if fishers and len(fishers) != len(models):
            raise ValueError("give a fisher: file for every model or for none.")
        params = dict(config.parameters)
        if "score_fn" in params:
            params["score_fn"] = _import_callable(params["score_fn"], "parameters.score_fn")
        model_params = []
        for entry in config.models:
            own = dict(entry.params)
            if entry.weight is not None:
                own["weight"] = entry.weight
            model_params.append(own)
        reference = base if (spec.needs_base and base is not None) else models[0]
        dtype_source = base if base is not None else models[0]
        plan = check_compatible(reference, [m for m in models if m is not reference])
        if config.dtype is not None:
            dtype: Any = parse_dtype(config.dtype)
        else:
            dtype = {k: stored_dtype(dtype_source, k) for k, _, dt in plan if dt.is_floating_point}
        target = output_dtypes(dtype)
        out_plan = [(k, shape, target(k, dt)) for k, shape, dt in plan]
        merged_base = base if spec.needs_base else None
        log(
            f"[core.merging] {spec.name}: {len(models)} model(s), {len(plan)} tensors -> "
            f"{config.output}"
        )
        with (
            explain_full_disk(config.output, plan_bytes(out_plan)),
            atomic_directory(config.output, overwrite=config.overwrite) as tmp,
        ):
            writer = SafetensorsWriter(tmp / MODEL_FILE, out_plan, {"format": "pt"})
            done = [0]
            step = max(1, len(plan) // 10)

            def progress(key: str) -> None:
                done[0] += 1
                if done[0] % step == 0 or done[0] == len(plan):
                    log(f"[core.merging] {done[0]}/{len(plan)} tensors")

            try:
                resolved, per_model = run_merge(
                    spec,
                    models,
                    merged_base,
                    writer.sink,
                    params=params,
                    model_params=model_params,
                    extras={"fisher": fishers} if fishers else None,
                    seed=config.seed,
                    dtype=dtype,
                    on_tensor=progress,
                )
            except BaseException:
                writer.abort()
                raise
            writer.close()
            copied = []
            hf_dir = Path(config.base or config.models[0].path)
            if hf_dir.is_dir() and not is_adapter_dir(hf_dir):
                copied = _copy_model_files(hf_dir, tmp)
            manifest = {
                "format": "core.merging/1",
                "kind": "model",
                "method": spec.name,
                "parameters": _jsonable(resolved),
                "seed": config.seed,
                "dtype": config.dtype,
                "base": _files_record(base, config.base) if config.base else None,
                "models": [
                    {
                        **_files_record(m, e.path),
                        "params": _jsonable(p),
                        **({"fisher": _files_record(f, e.fisher)} if e.fisher else {}),
                    }
                    for m, e, p, f in zip(
                        models,
                        config.models,
                        per_model,
                        fishers or [None] * len(models),
                        strict=True,
                    )
                ],
                "outputs": [_output_record(tmp / MODEL_FILE)],
                "copied_files": copied,
                "tensors": len(plan),
                "seconds": round(time.time() - start, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "torch": torch.__version__,
                "config": _jsonable(asdict(config)),
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    finally:
        for source in opened:
            source.close()
    log(f"[core.merging] wrote {config.output} in {time.time() - start:.1f} s")
    return Path(config.output)


def _output_record(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _run_adapter_merge(config: MergeConfig, log: Callable[[str], None]) -> Path:
    start = time.time()
    for entry in config.models:
        if not is_adapter_dir(entry.path):
            raise ValueError(
                f"combination: {config.combination} merges PEFT LoRA adapters, but "
                f"{entry.path!r} is not an adapter directory (no adapter_config.json); leave "
                "combination out to merge full models."
            )
        if entry.params or entry.fisher:
            raise ValueError(
                f"adapter-level merges take only path and weight per model; {entry.path!r} "
                f"also sets {sorted(entry.params) or ['fisher']}."
            )
    weights = [1.0 if e.weight is None else float(e.weight) for e in config.models]
    log(
        f"[core.merging] adapters: {config.combination}"
        f"{f' + {config.method}' if config.method else ''} of {len(weights)} -> {config.output}"
    )
    merged = merge_lora_adapters(
        [e.path for e in config.models],
        weights=weights,
        combination=str(config.combination),
        rank=config.rank,
        method=config.method,
        seed=config.seed,
        **config.parameters,
    )
    with (
        explain_full_disk(config.output),
        atomic_directory(config.output, overwrite=config.overwrite) as tmp,
    ):
        write_lora_adapter_files(merged, tmp)
        manifest = {
            "format": "core.merging/1",
            "kind": "adapter",
            "combination": config.combination,
            "method": config.method,
            "rank": config.rank,
            "parameters": _jsonable(config.parameters),
            "seed": config.seed,
            "models": [
                {**_files_record(None, e.path), "weight": w}
                for e, w in zip(config.models, weights, strict=True)
            ],
            "outputs": [
                _output_record(tmp / n)
                for n in ("adapter_config.json", "adapter_model.safetensors")
            ],
            "seconds": round(time.time() - start, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
            "config": _jsonable(asdict(config)),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    log(f"[core.merging] wrote {config.output} in {time.time() - start:.1f} s")
    return Path(config.output)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m core.merging",
        description="Merge models or LoRA adapters described by a YAML config (see "
        "docs/merging.md).",
    )
    parser.add_argument("config", nargs="?", help="YAML config file")
    parser.add_argument("--output", help="override the config's output directory")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--list-methods", action="store_true", help="list merge methods and exit")
    args = parser.parse_args(argv)
    if args.list_methods:
        for name in sorted(METHODS):
            m = METHODS[name]
            params = ", ".join(f"{k}={v!r}" for k, v in m.params.items()) or "-"
            print(
                f"{name:16s} {m.summary}\n{'':16s} parameters: {params}; per model: "
                f"{', '.join(m.per_model) or '-'}"
            )
        return 0
    if not args.config:
        parser.error("a config file is required (or --list-methods).")
    try:
        config = load_config(args.config)
        if args.output:
            config.output = args.output
        if args.seed is not None:
            config.seed = args.seed
        if args.overwrite:
            config.overwrite = True
        check_output_apart(config.output, [args.config])
        run(config)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OutputWriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
