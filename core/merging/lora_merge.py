"""Merge LoRA adapters of one base into one adapter, or fold an adapter into the base.

A LoRA adapter changes the weight of each target layer by delta = s * B @ A (B: out x r,
A: r x in, s = alpha / r, or alpha / sqrt(r) with rsLoRA: ``LoraConfig.scaling_for``, the
scale rule the adapter library itself uses). Several adapters trained on the
same base combine (:func:`merge_lora_adapters`) in one of three ways, named as in PEFT's
``add_weighted_adapter``:

- ``"cat"``: stack the factors, A = [A_1; ...; A_K], B = [w_1 s_1 B_1, ..., w_K s_K B_K].
  Exact (the merged delta is sum_k w_k delta_k), rank sum_k r_k.
- ``"svd"``: the best rank-``rank`` approximation of sum_k w_k delta_k (default rank: the
  largest input rank), found from the stacked factors without forming the full delta.
  With ``method`` (``"ties"``, ``"dare"``, ``"breadcrumbs"``, ... any registered task-vector
  method) the full deltas are first merged by that method, then re-factored by SVD.
- ``"linear"``: A = sum_k sqrt(w_k s_k) A_k, B = sum_k sqrt(w_k s_k) B_k (same rank needed).
  Cheap but approximate (it adds cross terms B_i A_j), kept for PEFT parity.

The merged adapter has alpha = r (scale 1) per layer and is saved in the PEFT layout by
:func:`save_lora_adapter`, so it loads with ``core.adapters.load_adapter`` and in PEFT.
:func:`merge_adapter_into_base` folds an adapter into a base state dict (DoRA included).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from core.adapters import LoraConfig, config_from_dict
from core.adapters.io import check_finite, read_adapter_files
from core.atomic import atomic_directory

from .engine import merge_state_dicts
from .registry import get_method

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
COMBINATIONS = ("cat", "svd", "linear")


@dataclass
class LoraFactors:
    """One layer's LoRA: ``a`` and ``b`` as stored (``lora_A.weight``, ``lora_B.weight``;
    conv layers keep their kernel dims), the scale s, and DoRA's magnitude if any."""

    a: Tensor
    b: Tensor
    scaling: float
    magnitude: Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    def a_matrix(self) -> Tensor:
        """A as (r, in * kernel), float32."""
        return self.a.reshape(self.rank, -1).float()

    def b_matrix(self) -> Tensor:
        """B as (out, r), float32."""
        return self.b.reshape(self.b.shape[0], self.rank).float()

    def delta(self) -> Tensor:
        """s * B @ A as an (out, in * kernel) float32 matrix."""
        return self.scaling * (self.b_matrix() @ self.a_matrix())


@dataclass
class LoraAdapter:
    """A LoRA adapter in memory.

    Attributes:
        modules: Per adapted module (its name in the base model), the factors.
        extra: Tensors of ``modules_to_save`` by base state-dict name (``"head.weight"``):
            full replacements of those base tensors.
        config: The adapter's ``LoraConfig``.
        fan_in_fan_out: The base layers store weights as (in, out) (GPT-2 ``Conv1D``).
    """

    modules: dict[str, LoraFactors]
    config: LoraConfig
    extra: dict[str, Tensor] = field(default_factory=dict)
    fan_in_fan_out: bool = False


def lora_adapter_from_tensors(
    config: Any, tensors: Mapping[str, Tensor], fan_in_fan_out: bool = False, name: str = "adapter"
) -> LoraAdapter:
    """Build a :class:`LoraAdapter` from PEFT-keyed tensors and their config."""
    if not isinstance(config, LoraConfig):
        raise ValueError(
            f"{name} is a {getattr(config, 'method', type(config).__name__)} adapter; only LoRA "
            "adapters can be merged at adapter level (fold other methods into the model with "
            "core.adapters.merge and merge the full weights)."
        )
    if config.rewrites_base:
        raise ValueError(
            f"{name} was saved with init={config.init!r} against a residual base; re-save it as "
            "a plain LoRA on the original weights (core.adapters.save_adapter does, PEFT's "
            "save_pretrained(path_initial_model_for_weight_conversion=...) does too)."
        )
    parts: dict[str, dict[str, Tensor]] = {}
    extra: dict[str, Tensor] = {}
    suffixes = {
        ".lora_A.weight": "a",
        ".lora_B.weight": "b",
        ".lora_magnitude_vector.weight": "m",
        ".lora_magnitude_vector": "m",
    }
    for key, value in tensors.items():
        local = key.removeprefix(PEFT_PREFIX)
        for suffix, role in suffixes.items():
            if local.endswith(suffix):
                parts.setdefault(local[: -len(suffix)], {})[role] = value
                break
        else:
            if ".lora_" in local:
                raise ValueError(
                    f"{name}: tensor {key!r} is a LoRA part this library does not merge (only "
                    "lora_A, lora_B and DoRA's lora_magnitude_vector on linear/conv layers)."
                )
            extra[local] = value
    if extra and not config.modules_to_save:
        raise ValueError(
            f"{name}: tensors {sorted(extra)[:3]} are neither LoRA factors nor modules_to_save; "
            "the adapter file does not match its adapter_config.json."
        )
    modules = {}
    for module, p in parts.items():
        if "a" not in p or "b" not in p:
            raise ValueError(
                f"{name}: module {module!r} has {'lora_A' if 'a' in p else 'lora_B'} but not "
                f"{'lora_B' if 'a' in p else 'lora_A'}; the adapter file is incomplete."
            )
        r, scaling = config.scaling_for(module)
        if p["a"].shape[0] != r or p["b"].shape[1] != r:
            raise ValueError(
                f"{name}: module {module!r} has rank {p['a'].shape[0]} in its tensors but r={r} "
                "in adapter_config.json (rank_pattern included); the config does not match."
            )
        modules[module] = LoraFactors(p["a"], p["b"], scaling, p.get("m"))
    return LoraAdapter(modules, config, extra, fan_in_fan_out)


def read_lora_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT-layout LoRA adapter directory (``adapter_config.json`` + weights).

    Config and weights come from one read of one save (:func:`read_adapter_files`), so an
    adapter re-saved meanwhile never pairs one version's ``fan_in_fan_out`` with another's.
    """
    raw, tensors = read_adapter_files(path)
    config = config_from_dict(raw, where=str(Path(path) / CONFIG_NAME))
    check_finite(tensors, Path(path) / WEIGHTS_NAME)
    return lora_adapter_from_tensors(
        config, tensors, bool(raw.get("fan_in_fan_out", False)), name=f"adapter {str(path)!r}"
    )


def write_lora_adapter_files(adapter: LoraAdapter, folder: Path) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``folder``."""
    tensors: dict[str, Tensor] = {}
    for module, f in adapter.modules.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = f.a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = f.b.contiguous()
        if f.magnitude is not None:
            tensors[f"{PEFT_PREFIX}{module}.lora_magnitude_vector"] = f.magnitude.contiguous()
    for key, value in adapter.extra.items():
        tensors[f"{PEFT_PREFIX}{key}"] = value.contiguous()
    config = adapter.config.to_json_dict()
    config["fan_in_fan_out"] = adapter.fan_in_fan_out
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))


def save_lora_adapter(adapter: LoraAdapter, path: str | Path, overwrite: bool = True) -> Path:
    """Write ``adapter`` to directory ``path`` in the PEFT layout, atomically."""
    with atomic_directory(path, overwrite=overwrite) as tmp:
        write_lora_adapter_files(adapter, tmp)
    return Path(path)


# ------------------------------------------------------------------------ adapter + adapter
def _factorize(delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(B, A) with B @ A the best rank-``rank`` approximation of ``delta`` (sqrt(S) each)."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _factorize_product(b: Tensor, a: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Rank-``rank`` SVD truncation of ``b @ a`` via QR of the thin factors (no full matrix)."""
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    root = s[:rank].sqrt()
    return qb @ (u[:, :rank] * root), (root[:, None] * vh[:rank]) @ qa.T


def merge_lora_adapters(
    adapters: Sequence[LoraAdapter | str | Path],
    weights: Sequence[float] | None = None,
    combination: str = "cat",
    rank: int | None = None,
    method: str | None = None,
    seed: int = 0,
    **method_params: Any,
) -> LoraAdapter:
    """Combine LoRA adapters of one base into one adapter (see the module docstring).

    Args:
        adapters: :class:`LoraAdapter` objects or adapter directories.
        weights: One weight per adapter (default 1 each).
        combination: ``"cat"`` (exact), ``"svd"`` (rank-``rank``) or ``"linear"``.
        rank: Rank of the ``"svd"`` result (default: the largest input rank).
        method: For ``"svd"``: a registered task-vector method applied to the full deltas
            first (``"ties"``, ``"dare"``, ...); its parameters go in ``method_params``.
        seed: Seed of a stochastic ``method``.
    """
    loaded = [a if isinstance(a, LoraAdapter) else read_lora_adapter(a) for a in adapters]
    weights = [1.0] * len(loaded) if weights is None else [float(w) for w in weights]
    _check_request(loaded, weights, combination, rank, method, method_params)
    modules: list[str] = []
    for a in loaded:
        modules += [m for m in a.modules if m not in modules]
    out_modules: dict[str, LoraFactors] = {}
    for module in modules:
        present = [
            (w, a.modules[module])
            for w, a in zip(weights, loaded, strict=True)
            if module in a.modules
        ]
        _check_shapes(module, [f for _, f in present])
        ref = present[0][1]
        if combination == "cat":
            a_mat = torch.cat([f.a_matrix() * (w * f.scaling) for w, f in present])
            b_mat = torch.cat([f.b_matrix() for _, f in present], dim=1)
        elif combination == "linear":
            if len({f.rank for _, f in present}) > 1:
                raise ValueError(
                    f"combination='linear' needs equal ranks, but module {module!r} has ranks "
                    f"{[f.rank for _, f in present]}; use 'cat' or 'svd'."
                )
            a_mat = sum(_signed_root(w * f.scaling) * f.a_matrix() for w, f in present)
            b_mat = sum(abs(w * f.scaling) ** 0.5 * f.b_matrix() for w, f in present)
        else:
            target = min(
                rank or max(f.rank for _, f in present), ref.b.shape[0], ref.a_matrix().shape[1]
            )
            b_mat, a_mat = _svd_combine(module, present, target, method, seed, method_params)
        r = a_mat.shape[0]
        out_modules[module] = LoraFactors(
            a_mat.reshape(r, *ref.a.shape[1:]).to(ref.a.dtype).contiguous(),
            b_mat.reshape(b_mat.shape[0], r, *ref.b.shape[2:]).to(ref.b.dtype).contiguous(),
            1.0,
        )
    extra = _merge_extra(loaded, weights)
    ranks = {m: f.rank for m, f in out_modules.items()}
    common = max(set(ranks.values()), key=list(ranks.values()).count) if ranks else 1
    pattern = {m: r for m, r in ranks.items() if r != common}
    first = loaded[0].config
    config = LoraConfig(
        target_modules=list(modules),
        modules_to_save=first.modules_to_save if extra else None,
        r=common,
        alpha=float(common),
        dropout=first.dropout,
        rank_pattern=pattern,
        alpha_pattern={m: float(r) for m, r in pattern.items()},
    )
    return LoraAdapter(out_modules, config, extra, loaded[0].fan_in_fan_out)


def _svd_combine(
    module: str,
    present: list[tuple[float, LoraFactors]],
    rank: int,
    method: str | None,
    seed: int,
    method_params: dict[str, Any],
) -> tuple[Tensor, Tensor]:
    """(B, A) of rank <= ``rank`` for one module: SVD of sum_k w_k delta_k, or of the deltas
    merged by ``method``."""
    if method is None:
        b_cat = torch.cat([f.b_matrix() * (w * f.scaling) for w, f in present], dim=1)
        a_cat = torch.cat([f.a_matrix() for _, f in present])
        return _factorize_product(b_cat, a_cat, rank)
    deltas = [{module: f.delta()} for _, f in present]
    zero = {module: torch.zeros_like(deltas[0][module])}
    merged = merge_state_dicts(
        method, deltas, zero, weights=[w for w, _ in present], seed=seed, **method_params
    )
    return _factorize(merged[module], rank)


def _check_request(
    adapters: list[LoraAdapter],
    weights: list[float],
    combination: str,
    rank: int | None,
    method: str | None,
    method_params: dict[str, Any],
) -> None:
    if not adapters:
        raise ValueError("merge_lora_adapters needs at least one adapter.")
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters; give one each.")
    if combination not in COMBINATIONS:
        raise ValueError(
            f"combination={combination!r} is not one of {', '.join(COMBINATIONS)}; 'cat' is "
            "exact, 'svd' re-factors at a chosen rank, 'linear' is PEFT's cheap approximation."
        )
    if method is not None and combination != "svd":
        raise ValueError(
            f"method={method!r} applies to the full deltas and needs combination='svd' (the "
            "merged delta is re-factored at the chosen rank)."
        )
    if method is None and method_params:
        raise ValueError(f"parameters {sorted(method_params)} need a method (e.g. method='ties').")
    if method is not None:
        spec = get_method(method)
        if not spec.needs_base or spec.kernel is None:
            raise ValueError(
                f"method={method!r} does not merge task vectors; use one of task_arithmetic, "
                "ties, dare, breadcrumbs, pcb, compress for LoRA deltas."
            )
    if rank is not None and rank < 1:
        raise ValueError(f"rank={rank} must be >= 1.")
    if len({a.fan_in_fan_out for a in adapters}) > 1:
        raise ValueError(
            "the adapters disagree on fan_in_fan_out; they were not trained on one base."
        )
    for i, a in enumerate(adapters):
        dora = [m for m, f in a.modules.items() if f.magnitude is not None]
        if dora:
            raise ValueError(
                f"adapter {i} is a DoRA adapter (module {dora[0]!r}); DoRA's magnitude does not "
                "combine linearly: fold each into the base (merge_adapter_into_base) and merge "
                "the full weights instead."
            )


def _signed_root(x: float) -> float:
    return (1.0 if x >= 0 else -1.0) * abs(x) ** 0.5


def _check_shapes(module: str, factors: list[LoraFactors]) -> None:
    ref = factors[0]
    for f in factors[1:]:
        if f.b.shape[0] != ref.b.shape[0] or f.a.shape[1:] != ref.a.shape[1:]:
            raise ValueError(
                f"module {module!r} has delta shape {(f.b.shape[0], *f.a.shape[1:])} in one "
                f"adapter and {(ref.b.shape[0], *ref.a.shape[1:])} in another; the adapters "
                "were trained on different base models."
            )


def _merge_extra(adapters: list[LoraAdapter], weights: list[float]) -> dict[str, Tensor]:
    keys = [set(a.extra) for a in adapters]
    if not any(keys):
        return {}
    if any(k != keys[0] for k in keys):
        raise ValueError(
            "the adapters save different modules_to_save tensors "
            f"({[sorted(k)[:2] for k in keys]}); merge adapters with the same modules_to_save."
        )
    total = sum(weights)
    if total == 0:
        raise ValueError("the weights sum to 0, so modules_to_save tensors cannot be averaged.")
    out = {}
    for key in sorted(keys[0]):
        value = sum(w * a.extra[key].float() for w, a in zip(weights, adapters, strict=True))
        out[key] = (value / total).to(adapters[0].extra[key].dtype)
    return out


# --------------------------------------------------------------------------- adapter + base
def apply_lora(
    rows: Tensor, factors: LoraFactors, fan_in_fan_out: bool, row_start: int, scaling: float = 1.0
) -> Tensor:
    """Add ``scaling * delta`` to rows ``row_start:row_start + len(rows)`` of a base weight.

    ``rows`` is a (rows, row_length) float block of the weight as stored (for a GPT-2
    ``Conv1D``, ``fan_in_fan_out``, the stored weight is delta's transpose). DoRA rescales
    each output row to its magnitude; with ``fan_in_fan_out`` that needs the whole weight.
    """
    stop = row_start + rows.shape[0]
    if fan_in_fan_out:
        block = (factors.a_matrix()[:, row_start:stop].T @ factors.b_matrix().T) * factors.scaling
    else:
        block = (factors.b_matrix()[row_start:stop] @ factors.a_matrix()) * factors.scaling
    merged = rows + scaling * block
    if factors.magnitude is None:
        return merged
    magnitude = factors.magnitude.float()
    if fan_in_fan_out:
        if rows.shape[0] != factors.a_matrix().shape[1]:
            raise ValueError("DoRA with fan_in_fan_out needs the whole weight at once.")
        return merged * (magnitude / merged.norm(dim=0))[None, :]
    return merged * (magnitude[row_start:stop] / merged.norm(dim=1))[:, None]


def merge_adapter_into_base(
    base: Mapping[str, Tensor], adapter: LoraAdapter | str | Path, scaling: float = 1.0
) -> dict[str, Tensor]:
    """The base state dict with the adapter folded in: W + scaling * s * B @ A per layer.

    Keys of ``base`` are the plain model's (``fc1.weight``); ``modules_to_save`` tensors of
    the adapter replace the base's. Tensors the adapter does not touch are the base's own
    tensor objects (not copies); the base is never modified.
    """
    adapter = adapter if isinstance(adapter, LoraAdapter) else read_lora_adapter(adapter)
    out = dict(base)
    for module, factors in adapter.modules.items():
        key = f"{module}.weight"
        if key not in base:
            close = [k for k in base if k.endswith(module.rsplit(".", 1)[-1] + ".weight")][:3]
            raise ValueError(
                f"the adapter changes {module!r} but the base has no tensor {key!r} (similar: "
                f"{close}); use the base model the adapter was trained on."
            )
        weight = base[key]
        rows = weight.detach().float().reshape(weight.shape[0], -1)
        expected = (
            (factors.a_matrix().shape[1], factors.b.shape[0])
            if adapter.fan_in_fan_out
            else (factors.b.shape[0], factors.a_matrix().shape[1])
        )
        if tuple(rows.shape) != expected:
            raise ValueError(
                f"tensor {key!r} has shape {tuple(weight.shape)} but the adapter's delta for it "
                f"is {expected}; use the base model the adapter was trained on."
            )
        merged = apply_lora(rows, factors, adapter.fan_in_fan_out, 0, scaling)
        out[key] = merged.reshape(weight.shape).to(weight.dtype)
    for key, value in adapter.extra.items():
        if key not in base:
            raise ValueError(
                f"the adapter saves {key!r} (modules_to_save) but the base has no such tensor."
            )
        if tuple(value.shape) != tuple(base[key].shape):
            raise ValueError(
                f"modules_to_save tensor {key!r} has shape {tuple(value.shape)} in the adapter "
                f"but {tuple(base[key].shape)} in the base."
            )
        out[key] = value.to(base[key].dtype).clone()
    return out
