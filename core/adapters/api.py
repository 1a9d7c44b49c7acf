"""The public verbs of the adapter library: inject, merge, unmerge, activate, disable, list."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .config import AdapterConfig
from .corda import call_model, collect_input_covariances
from .layer import AdapterLayer, NotMergeableError
from .registry import BuildContext, get_method
from .targeting import resolve_modules_to_save, resolve_targets


def logical_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module names as the user sees them: an adapted layer appears as its base layer and
    the adapters' own sub-modules are hidden."""
    result: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, AdapterLayer):
            wrapped.append(name)
            result[name] = module.base_layer
        else:
            result[name] = module
    return result


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """(name, layer) for every adapted layer of the model."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def adapter_names(model: nn.Module) -> list[str]:
    """Names of all adapters in the model, in the order they were added."""
    names: list[str] = []
    for _, layer in adapter_layers(model):
        names += [n for n in layer.adapters if n not in names]
    return names


def active_adapters(model: nn.Module) -> list[str]:
    names: list[str] = []
    for _, layer in adapter_layers(model):
        names += [n for n in layer.active if n not in names]
    return names


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inject(
    model: nn.Module,
    config: AdapterConfig,
    name: str = "default",
    calibration: Iterable[Any] | None = None,
    forward: Callable[[nn.Module, Any], Any] = call_model,
    structure_only: bool = False,
) -> nn.Module:
    """Add adapter ``name`` of ``config``'s method to the target layers, in place.

    Every base parameter is frozen. The new adapter becomes active (and trainable) when no
    other adapter is active; otherwise it waits for :func:`set_active`, as in PEFT.
    ``calibration`` (batches run through ``forward(model, batch)``) is needed by configs that
    ``needs_calibration`` (LoRA's ``init="corda"``). ``structure_only`` skips data-dependent
    initialisation (no calibration, W0 untouched) to receive a checkpoint that already holds
    the initialised state. The method's registration builds each layer's unit. Returns the
    model.
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(
            "inject() expects an AdapterConfig (e.g. LoraConfig(r=8)), "
            f"got {type(config).__name__}."
        )
    config.validate()
    if name in adapter_names(model):
        raise ValueError(f"the model already has an adapter named {name!r}; pick another name.")
    method = get_method(config.method)
    modules = logical_modules(model)
    targets = resolve_targets(
        model, config.target_modules, method.supports, config.method, modules=modules
    )
    saved_modules = resolve_modules_to_save(model, config.modules_to_save)
    overlap = sorted(set(saved_modules) & set(targets))
    if overlap:
        raise ValueError(
            f"{overlap} are both adapter targets and modules_to_save; a module is either "
            "adapted or trained in full, so remove it from one of the two lists."
        )
    context = BuildContext(structure_only=structure_only)
    if config.needs_calibration and not structure_only:
        if calibration is None:
            raise ValueError(
                f"{config.describe()} needs calibration data: pass calibration=<iterable of "
                "batches> to inject()."
            )
        physical = {target: _physical_name(model, target) for target in targets}
        sums = collect_input_covariances(model, list(physical.values()), calibration, forward)
        context.covariances = {target: sums[path] for target, path in physical.items()}
    had_active = bool(active_adapters(model))
    for p in model.parameters():
        p.requires_grad_(False)
    built: list[tuple[str, AdapterLayer]] = []
    for target in targets:
        base = modules[target]
        unit = method.build(base, target, config, context)
        layer = model.get_submodule(target)
        if not isinstance(layer, AdapterLayer):
            layer = AdapterLayer(base)
            _replace_module(model, target, layer)
        layer.add(name, unit)
        layer.configs[name] = config
        built.append((target, layer))
    for _, layer in built:
        if not had_active:
            layer.active = [name]
    _refresh_trainable(model)
    for module_name in saved_modules:
        model.get_submodule(module_name).requires_grad_(True)
    return model


def _physical_name(model: nn.Module, logical: str) -> str:
    """The module that computes a logical layer: its ``base_layer`` once it is wrapped."""
    module = model.get_submodule(logical)
    return logical + ".base_layer" if isinstance(module, AdapterLayer) else logical


def _refresh_trainable(model: nn.Module) -> None:
    """Active adapters train; inactive ones are frozen (base parameters are left alone)."""
    for _, layer in adapter_layers(model):
        for name, unit in layer.adapters.items():
            unit.requires_grad_(name in layer.active)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter that will receive gradients, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def set_active(model: nn.Module, names: str | list[str]) -> None:
    """Make exactly ``names`` active (applied in that order) and trainable."""
    names = [names] if isinstance(names, str) else list(names)
    known = adapter_names(model)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; the model has {known}.")
    for layer_name, layer in adapter_layers(model):
        stale = [n for n in layer.merged if n not in names]
        if stale:
            raise RuntimeError(
                f"adapter(s) {stale} are merged into {layer_name!r}; call unmerge(model) "
                "before changing the active adapters."
            )
        layer.active = [n for n in names if n in layer.adapters]
    _refresh_trainable(model)


def merge(model: nn.Module, names: list[str] | None = None) -> None:
    """Fold the active (or given) adapters into the base weights, exactly and reversibly.

    Checks every layer first, so a non-mergeable adapter leaves the model untouched.
    """
    layers = list(adapter_layers(model))
    for layer_name, layer in layers:
        for n in names if names is not None else layer.active:
            if n in layer.adapters and not layer.adapters[n].mergeable:
                raise NotMergeableError(
                    f"adapter {n!r} on {layer_name!r} is a {layer.adapters[n].method} adapter, "
                    "which is not a linear change of the weights and cannot be merged."
                )
    for _, layer in layers:
        layer.merge(
            [n for n in (names if names is not None else layer.active) if n in layer.adapters]
        )


def unmerge(model: nn.Module) -> None:
    """Undo :func:`merge`, restoring the base weights."""
    for _, layer in adapter_layers(model):
        layer.unmerge()


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Within the block the model computes its base output (merged adapters are unmerged)."""
    layers = [layer for _, layer in adapter_layers(model)]
    for layer in layers:
        layer.unmerge()
        layer.disabled = True
    try:
        yield
    finally:
        for layer in layers:
            layer.disabled = False


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; a layer left with no adapter goes back to its base module.

    SVD-initialised adapters (PiSSA, CorDA) and LoLDU changed W0 into a residual; deleting
    them does not restore W0.
    """
    if name not in adapter_names(model):
        raise ValueError(f"no adapter named {name!r}; the model has {adapter_names(model)}.")
    for layer_name, layer in list(adapter_layers(model)):
        if name not in layer.adapters:
            continue
        if name in layer.merged:
            layer.unmerge()
        del layer.adapters[name]
        layer.configs.pop(name, None)
        layer.active = [n for n in layer.active if n != name]
        if not len(layer.adapters):
            _replace_module(model, layer_name, layer.base_layer)


def adapter_tensors(model: nn.Module, name: str) -> dict[str, Tensor]:
    """The trainable tensors of adapter ``name`` keyed by ``<module path>.<local name>``."""
    tensors: dict[str, Tensor] = {}
    for layer_name, layer in adapter_layers(model):
        if name in layer.adapters:
            for local, param in layer.adapters[name].named_parameters(remove_duplicate=False):
                tensors[f"{layer_name}.{local}"] = param
    return tensors
