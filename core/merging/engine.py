"""Run a registered merge method over state dicts (or lazy sources), one tensor at a time.

:func:`merge_state_dicts` is the one entry point behind every method function
(``ties(...)``, ``dare(...)``, ...) and behind the command line. It checks the inputs
first (same tensor names and shapes everywhere, parameters known and in range), so a bad
input fails before any work with a message naming the tensor and the input; then, for each
tensor, it hands the method's kernel a :class:`TensorJob` that reads the inputs chunk by
chunk and writes the merged tensor into a sink (a new tensor, or a range of a file).

Conventions every method follows: inputs are never modified; arithmetic runs in float32
(float64 when an input is float64) and the result is cast to the reference tensor's dtype
(the base's, else the first model's) unless ``dtype`` says otherwise; tensors that are not
floating point (step counters, index buffers) are copied from the reference unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import ops
from .registry import REQUIRED, MergeMethod, get_method
from .sources import Source, TensorReader, as_source

#: ``open_sink(key, shape, dtype)`` returns ``write(slice, values)`` for one output tensor.
SinkFactory = Callable[[str, tuple[int, ...], torch.dtype], Callable[[slice, Tensor], None]]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"``/``"bf16"``/``torch.bfloat16`` -> ``torch.bfloat16``; ``None`` stays."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype} is not a floating-point dtype; use e.g. float32.")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(
            f"dtype={dtype!r} is not a known floating-point dtype; use one of "
            f"{', '.join(sorted(set(_DTYPES)))} (or leave it out to keep each tensor's dtype)."
        )
    return _DTYPES[key]


@dataclass
class TensorJob:
    """Everything a kernel needs to merge one tensor, read chunk by chunk.

    A kernel loops over :meth:`chunks`, reads inputs with :meth:`base_at` / :meth:`model_at`
    / :meth:`extra_at` (already in the compute dtype; read-only) and writes each chunk of
    the result once with :meth:`write`. Whole-tensor statistics come from passes over the
    chunks (see ``core.merging.ops``).
    """

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    base: TensorReader | None
    models: list[TensorReader]
    params: dict[str, Any]
    model_params: list[dict[str, Any]]
    seed: int = 0
    info: Any = None
    extras: dict[str, list[TensorReader]] = field(default_factory=dict)
    sink: Callable[[slice, Tensor], None] | None = None

    @property
    def numel(self) -> int:
        return math.prod(int(s) for s in self.shape)

    @property
    def weights(self) -> list[float]:
        return [float(p.get("weight", 1.0)) for p in self.model_params]

    def chunks(self) -> Iterator[slice]:
        return ops.chunk_slices(self.numel)

    def base_at(self, sl: slice) -> Tensor:
        if self.base is None:
            raise RuntimeError(f"{self.key!r}: this method has no base model.")
        return self.base.read(sl.start, sl.stop).to(self.dtype)

    def model_at(self, k: int, sl: slice) -> Tensor:
        return self.models[k].read(sl.start, sl.stop).to(self.dtype)

    def extra_at(self, name: str, k: int, sl: slice) -> Tensor:
        return self.extras[name][k].read(sl.start, sl.stop).to(self.dtype)

    def model_seed(self, k: int) -> int:
        """Seed of model ``k``'s random numbers for this tensor."""
        return ops.derive_seed(self.seed, self.key, k)

    def write(self, sl: slice, values: Tensor) -> None:
        assert self.sink is not None
        self.sink(sl, values)


# ------------------------------------------------------------------------------ parameters
def resolve_params(
    method: MergeMethod,
    num_models: int,
    params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Global parameters with defaults filled in, and each model's own parameters.

    A per-model parameter (``weight``, or e.g. ``density`` for TIES) takes, in order: the
    model's own entry, else the global value (a list gives one value per model), else the
    default. Unknown names and missing required values raise ``ValueError``.
    """
    known = set(method.params) | set(method.per_model)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"{method.name}: unknown parameter(s) {unknown}; it takes "
            f"{sorted(known) or 'no parameters'}."
        )
    resolved = {**method.params, **params}
    if model_params is not None and len(model_params) != num_models:
        raise ValueError(
            f"{method.name}: got parameters for {len(model_params)} models but {num_models} "
            "models; give one entry per model."
        )
    per_model: list[dict[str, Any]] = [dict(p) for p in (model_params or [{}] * num_models)]
    for i, own in enumerate(per_model):
        bad = sorted(set(own) - set(method.per_model))
        if bad:
            raise ValueError(
                f"{method.name}: model {i} sets {bad}, which cannot differ per model; "
                f"per-model parameters are {list(method.per_model) or 'none'} (put the "
                "others in the global parameters)."
            )
    for name in method.per_model:
        default = resolved.get(name, 1.0 if name == "weight" else REQUIRED)
        if isinstance(default, list | tuple):
            if len(default) != num_models:
                raise ValueError(
                    f"{method.name}: {name} has {len(default)} values for {num_models} models; "
                    "give one value per model or a single value."
                )
            values = list(default)
        else:
            values = [default] * num_models
        for own, value in zip(per_model, values, strict=True):
            own.setdefault(name, value)
        resolved.pop(name, None)
    missing = [n for n, v in resolved.items() if v is REQUIRED]
    missing += sorted({n for own in per_model for n, v in own.items() if v is REQUIRED})
    if missing:
        raise ValueError(f"{method.name}: parameter(s) {sorted(set(missing))} must be given.")
    if method.check is not None:
        method.check(resolved, per_model)
    return resolved, per_model


# ------------------------------------------------------------------------------- validation
def check_compatible(
    reference: Source, others: Sequence[Source], what: str = "model"
) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Every source has the reference's tensor names and shapes; else a ValueError naming
    the tensor, the input and the fix. Returns ``[(key, shape, dtype)]`` of the reference."""
    keys = reference.keys_list()
    key_set = set(keys)
    plan = [(k, *reference.meta(k)) for k in keys]
    for other in others:
        other_keys = set(other.keys_list())
        missing = [k for k in keys if k not in other_keys]
        extra = sorted(other_keys - key_set)
        if missing:
            raise ValueError(
                f"tensor {missing[0]!r} is in {reference.name} but missing from {other.name}"
                f"{f' ({len(missing)} tensors missing in all)' if len(missing) > 1 else ''}; "
                f"merge {what}s of the same architecture, saved with the same tensor names."
            )
        if extra:
            raise ValueError(
                f"tensor {extra[0]!r} is in {other.name} but not in {reference.name}"
                f"{f' ({len(extra)} extra tensors in all)' if len(extra) > 1 else ''}; "
                f"merge {what}s of the same architecture, saved with the same tensor names."
            )
        for key, shape, _ in plan:
            other_shape = other.meta(key)[0]
            if tuple(other_shape) != tuple(shape):
                raise ValueError(
                    f"tensor {key!r} has shape {tuple(other_shape)} in {other.name} but "
                    f"{tuple(shape)} in {reference.name}; merge {what}s of the same "
                    "architecture and size."
                )
    return plan


def _check_finite_weights(method: MergeMethod, model_params: list[dict[str, Any]]) -> None:
    for i, p in enumerate(model_params):
        w = p.get("weight", 1.0)
        if not isinstance(w, int | float) or w != w or w in (float("inf"), float("-inf")):
            raise ValueError(f"{method.name}: weight of model {i} is {w!r}; give a finite number.")


# ------------------------------------------------------------------------------------ driver
def output_dtypes(
    dtype: str | torch.dtype | Mapping[str, torch.dtype] | None,
) -> Callable[[str, torch.dtype], torch.dtype]:
    """``target(key, input_dtype)``: the output dtype of a tensor under the ``dtype`` option
    (one dtype for every floating-point tensor, a per-name mapping, or ``None``: keep)."""
    per_key = dtype if isinstance(dtype, Mapping) else None
    single = None if per_key is not None else parse_dtype(dtype)  # type: ignore[arg-type]

    def target(key: str, dt: torch.dtype) -> torch.dtype:
        if not dt.is_floating_point:
            return dt
        if per_key is not None:
            return per_key.get(key, dt)
        return single or dt

    return target


def run_merge(
    method: MergeMethod | str,
    models: Sequence[Source],
    base: Source | None,
    open_sink: SinkFactory,
    *,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    extras: Mapping[str, Sequence[Source]] | None = None,
    seed: int = 0,
    dtype: str | torch.dtype | Mapping[str, torch.dtype] | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Merge ``models`` (and ``base``) with ``method``, writing each tensor to a sink.

    The lowest-level driver, shared by :func:`merge_state_dicts` (sinks are new tensors) and
    the command line (sinks are ranges of the output file). ``dtype`` may also map tensor
    names to dtypes. Returns the resolved (global, per-model) parameters for the record.
    """
    spec = get_method(method) if isinstance(method, str) else method
    target_dtype = output_dtypes(dtype)
    models = list(models)
    if len(models) < spec.min_models or (
        spec.max_models is not None and len(models) > spec.max_models
    ):
        wanted = (
            f"exactly {spec.min_models}"
            if spec.max_models == spec.min_models
            else f"at least {spec.min_models}"
            if spec.max_models is None
            else f"{spec.min_models} to {spec.max_models}"
        )
        raise ValueError(f"{spec.name} merges {wanted} model(s); got {len(models)}.")
    if spec.needs_base and base is None:
        raise ValueError(
            f"{spec.name} works on task vectors (fine-tuned minus base) and needs the base "
            "(pre-trained) model; pass base=..."
        )
    if not spec.needs_base and base is not None:
        raise ValueError(
            f"{spec.name} does not use a base model; leave base out (it averages the models "
            "themselves)."
        )
    resolved, per_model = resolve_params(spec, len(models), params or {}, model_params)
    _check_finite_weights(spec, per_model)
    extras = dict(extras or {})
    for name in spec.extras:
        if name not in extras or len(extras[name]) != len(models):
            raise ValueError(
                f"{spec.name} needs one {name!r} state dict per model ({len(models)}); pass "
                f"{name}s=[...] in the same order as the models."
            )
    unexpected = sorted(set(extras) - set(spec.extras))
    if unexpected:
        raise ValueError(f"{spec.name} takes no {unexpected} inputs; remove them.")

    reference = base if base is not None else models[0]
    others = [m for m in models if m is not reference]
    plan = check_compatible(reference, others)
    float_keys = [k for k, _, dt in plan if dt.is_floating_point]
    for name, side in extras.items():
        for source in side:
            _check_extra(reference, source, plan, name)

    if spec.function is not None:
        merged = spec.function(
            models=models, base=base, params=resolved, model_params=per_model, seed=seed
        )
        for key, shape, dt in plan:
            write = open_sink(key, shape, target_dtype(key, dt))
            write(slice(0, merged[key].numel()), merged[key].reshape(-1))
            if on_tensor is not None:
                on_tensor(key)
        return resolved, per_model

    info = spec.prepare(float_keys, resolved) if spec.prepare is not None else {}
    for key, shape, dt in plan:
        if not dt.is_floating_point:
            write = open_sink(key, shape, dt)
            numel = reference.reader(key).numel
            write(slice(0, numel), reference.reader(key).read(0, numel))
        else:
            target = target_dtype(key, dt)
            in_dtypes = [dt, *(m.meta(key)[1] for m in models)]
            job = TensorJob(
                key=key,
                shape=tuple(shape),
                dtype=ops.compute_dtype(*in_dtypes, target),
                base=base.reader(key) if base is not None else None,
                models=[m.reader(key) for m in models],
                params=resolved,
                model_params=per_model,
                seed=seed,
                info=info.get(key),
                extras={n: [s.reader(key) for s in side] for n, side in extras.items()},
                sink=open_sink(key, tuple(shape), target),
            )
            assert spec.kernel is not None
            spec.kernel(job)
        if on_tensor is not None:
            on_tensor(key)
    return resolved, per_model


def _check_extra(
    reference: Source,
    source: Source,
    plan: list[tuple[str, tuple[int, ...], torch.dtype]],
    name: str,
) -> None:
    keys = set(source.keys_list())
    for key, shape, dt in plan:
        if not dt.is_floating_point:
            continue
        if key not in keys:
            raise ValueError(
                f"tensor {key!r} has no entry in {name} {source.name}; give a {name} for "
                f"every floating-point tensor of the models (zeros where it is unknown)."
            )
        if tuple(source.meta(key)[0]) != tuple(shape):
            raise ValueError(
                f"{name} {source.name} has shape {tuple(source.meta(key)[0])} for tensor "
                f"{key!r}, but the models have {tuple(shape)}; compute it on the same model."
            )
    extra = sorted(keys - {k for k, _, _ in plan})
    if extra:
        raise ValueError(
            f"{name} {source.name} has tensor {extra[0]!r}, which {reference.name} does not; "
            "compute it on the same model."
        )


def merge_state_dicts(
    method: str,
    models: Sequence[Mapping[str, Tensor]],
    base: Mapping[str, Tensor] | None = None,
    *,
    weights: Sequence[float] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    extras: Mapping[str, Sequence[Mapping[str, Tensor]]] | None = None,
    seed: int = 0,
    dtype: str | torch.dtype | None = None,
    **params: Any,
) -> dict[str, Tensor]:
    """Merge in-memory state dicts with the registered method ``method``; a new state dict.

    Args:
        method: A name from :data:`core.merging.METHODS` (``"ties"``, ``"dare"``, ...).
        models: The fine-tuned state dicts (``dict[str, Tensor]``), never modified.
        base: The pre-trained state dict, for methods that merge task vectors.
        weights: One weight per model (default 1 each); same as ``weight=[...]``.
        model_params: One dict per model with that model's own parameters.
        extras: Per-model side inputs by name, e.g. ``{"fisher": [f1, f2]}``.
        seed: Seed of stochastic methods (DARE); the result depends on nothing else.
        dtype: Output dtype of floating-point tensors (default: each tensor's own).
        **params: The method's parameters (``density=0.2``, ``scaling=1.0``, ...).
    """
    if weights is not None:
        if "weight" in params:
            raise ValueError("give either weights=[...] or weight=..., not both.")
        params["weight"] = list(weights)
    model_sources = [as_source(m, f"model {i}") for i, m in enumerate(models)]
    base_source = as_source(base, "the base") if base is not None else None
    extra_sources = {
        name: [as_source(s, f"{name} {i}") for i, s in enumerate(side)]
        for name, side in (extras or {}).items()
    }
    out: dict[str, Tensor] = {}

    def open_sink(
        key: str, shape: tuple[int, ...], dtype: torch.dtype
    ) -> Callable[[slice, Tensor], None]:
        tensor = torch.empty(shape, dtype=dtype)
        out[key] = tensor
        flat = tensor.view(-1)

        def write(sl: slice, values: Tensor) -> None:
            flat[sl].copy_(values)

        return write

    run_merge(
        method,
        model_sources,
        base_source,
        open_sink,
        params=params,
        model_params=model_params,
        extras=extra_sources,
        seed=seed,
        dtype=dtype,
    )
    return out
