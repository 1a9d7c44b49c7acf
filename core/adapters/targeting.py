"""Resolve a config's ``target_modules`` to the module names of a model.

Rules (the same as Hugging Face PEFT, so a saved ``adapter_config.json`` selects the same
layers in both libraries): a list entry matches a module whose full name equals it or ends
with ``"." + entry``; a single string is a regular expression that must match the full
name; ``"all-linear"`` selects every linear layer except the output head.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

from torch import nn

OUTPUT_HEAD_NAMES = ("lm_head", "head", "classifier", "fc_out", "output")


def is_linear_like(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's linear with a transposed weight)."""
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def is_hf_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _output_head_names(model: nn.Module) -> set[str]:
    """The model's output layer: its output embeddings, or a top-level ``head``-like layer."""
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    return {
        name
        for name, module in model.named_modules()
        if (head is not None and (module is head or getattr(module, "base_layer", None) is head))
        or ("." not in name and name in OUTPUT_HEAD_NAMES)
        or name.endswith("lm_head")
    }


def _matches(name: str, target: list[str] | str) -> bool:
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def resolve_targets(
    model: nn.Module,
    target_modules: list[str] | str | None,
    supported: Callable[[nn.Module], bool],
    method: str,
    modules: dict[str, nn.Module] | None = None,
    field: str = "target_modules",
) -> list[str]:
    """Names of the modules to adapt, in model order.

    Raises ``ValueError`` when nothing matches (listing close module names) and when a
    matched module is of a type the method cannot adapt.
    """
    if modules is None:
        modules = {n: m for n, m in model.named_modules() if n}
    all_names = list(modules)
    if target_modules is None or target_modules == "all-linear":
        heads = _output_head_names(model)
        found = [n for n in all_names if is_linear_like(modules[n]) and n not in heads]
        if not found:
            raise ValueError(
                f"{method}: the model has no linear layers to adapt by default; "
                "set target_modules to the names of the layers to adapt."
            )
        return found
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(
                f"{method}: {field}={target_modules!r} is not a valid regular expression "
                f"({err}); pass a list of module names instead."
            ) from err
    found = [n for n in all_names if _matches(n, target_modules)]
    if not found:
        wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        leaves = sorted({n.split(".")[-1] for n in all_names} | set(all_names))
        close: list[str] = []
        for w in wanted:
            close += difflib.get_close_matches(w.split(".")[-1], leaves, n=5, cutoff=0.4)
        hint = f" Close module names: {', '.join(sorted(set(close)))}." if close else ""
        examples = ", ".join(all_names[:8])
        raise ValueError(
            f"{method}: {field}={target_modules!r} matched no module of "
            f"{type(model).__name__}.{hint} Module names look like: {examples}."
        )
    bad = [n for n in found if not supported(modules[n])]
    if bad:
        kinds = ", ".join(f"{n} ({type(modules[n]).__name__})" for n in bad[:5])
        raise ValueError(f"{method} cannot adapt {kinds}; narrow {field} to supported layers.")
    return found


def resolve_modules_to_save(model: nn.Module, names: list[str] | None) -> list[str]:
    """Full names of the modules listed in ``modules_to_save`` (PEFT's matching rule)."""
    if not names:
        return []
    if isinstance(names, str):
        raise ValueError(
            f"modules_to_save={names!r} must be a list of module names, e.g. [{names!r}]."
        )
    return resolve_targets(
        model, list(names), lambda m: True, "modules_to_save", field="modules_to_save"
    )
