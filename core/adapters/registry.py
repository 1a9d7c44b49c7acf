"""The registry of adapter methods: one registration per method, by name.

A method is its config dataclass, the unit it puts on each adapted layer, and one call::

    register_method(SsfConfig, supports=supports_ssf, build=build_ssf_unit)

at the bottom of its own module (``core/adapters/ssf.py``). The registration is the only
place that ties the name (``SsfConfig.method``) to code: :func:`~core.adapters.inject`,
:class:`~core.adapters.AdapterBank`, ``config_from_dict`` and the test matrix look methods up
here, and ask the config (not the name) what it needs (``needs_calibration``,
``rewrites_base``, ``stackable``). PEFT's ``register_peft_method`` plays the same role.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from .config import AdapterConfig
    from .layer import AdapterUnit


@dataclass
class BuildContext:
    """What :func:`~core.adapters.inject` hands a method's ``build`` besides the layer.

    Attributes:
        structure_only: Build the unit's tensors without data-dependent initialisation (W0
            untouched): the shape a checkpoint holding the initialised state is loaded into.
        covariances: For configs that ``needs_calibration``: the summed input covariance
            x^T x of each target layer (by module name) over the calibration batches.
        shared: State shared by every layer of one adapter (Compacter's Kronecker rules);
            empty when the first layer is built.
    """

    structure_only: bool = False
    covariances: Mapping[str, Tensor] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)


#: ``build(base_layer, module_name, config, context) -> AdapterUnit``.
Build = Callable[[nn.Module, str, "AdapterConfig", BuildContext], "AdapterUnit"]


@dataclass(frozen=True)
class Stacking:
    """How an :class:`~core.adapters.AdapterBank` stores N adapters of a method in one unit.

    Attributes:
        supports: Whether a layer can hold the stacked unit.
        build: ``build(base_layer, module_name, configs, router)``: one unit holding every
            config's adapter, routed per sample by the bank's shared ``router``
            (:class:`~core.adapters.lora_stack.StackRouter`); ``unit.adapter_tensors(k)``
            gives adapter k's tensors under PEFT's local names (the bank saves and loads
            through it).
        accepts: Whether these configs (each ``stackable``) fit one stack together.
    """

    supports: Callable[[nn.Module], bool]
    build: Callable[..., AdapterUnit]
    accepts: Callable[[list[AdapterConfig]], bool]


@dataclass(frozen=True)
class AdapterMethod:
    """One registered adapter method.

    Attributes:
        config: Its config dataclass; ``config.method`` is the registry name.
        supports: Whether the method can adapt a given layer (``target_modules`` naming
            another layer type is an error).
        build: Makes one layer's unit (see :data:`Build`).
        stacking: How an ``AdapterBank`` stacks its adapters, or ``None`` (one unit each).
    """

    config: type[AdapterConfig]
    supports: Callable[[nn.Module], bool]
    build: Build
    stacking: Stacking | None = None

    @property
    def name(self) -> str:
        """The registry name (``config.method``)."""
        return self.config.method


#: Every registered method by name, in registration order.
METHODS: dict[str, AdapterMethod] = {}


def register_method(
    config: type[AdapterConfig],
    *,
    supports: Callable[[nn.Module], bool],
    build: Build,
    stacking: Stacking | None = None,
) -> AdapterMethod:
    """Register an adapter method under ``config.method`` and return its entry.

    Raises ``ValueError`` when the config is not a dataclass with a lower-case ``method``
    name and a ``peft_type``, or when either is already taken.
    """
    from .config import AdapterConfig  # here: config.py imports this module

    name = getattr(config, "method", "")
    valid = (
        isinstance(config, type)
        and issubclass(config, AdapterConfig)
        and "__dataclass_fields__" in vars(config)  # itself a dataclass, not a subclass of one
        and bool(name)
        and name == name.lower()
        and bool(getattr(config, "peft_type", ""))
    )
    if not valid:
        raise ValueError(
            f"{getattr(config, '__name__', config)!r} cannot be registered: an adapter method's "
            "config is a dataclass subclass of AdapterConfig with a lower-case `method` name "
            "and a `peft_type` (the adapter_config.json tag)."
        )
    if name in METHODS:
        raise ValueError(f"an adapter method named {name!r} is already registered.")
    taken = {m.config.peft_type.lower(): m.name for m in METHODS.values()}
    if config.peft_type.lower() in taken:
        raise ValueError(
            f"adapter method {name!r}: peft_type {config.peft_type!r} is already used by "
            f"{taken[config.peft_type.lower()]!r}; pick another."
        )
    method = AdapterMethod(config, supports, build, stacking)
    METHODS[name] = method
    return method


def unregister_method(name: str) -> AdapterMethod:
    """Remove a method from the registry (tests and plug-ins that register temporarily)."""
    return METHODS.pop(get_method(name).name)


def get_method(name: str) -> AdapterMethod:
    """Look a method up by name or PEFT ``peft_type`` (case-insensitive); unknown names raise
    ``ValueError`` listing close matches and every known method."""
    key = str(name).lower()
    if key in METHODS:
        return METHODS[key]
    by_peft_type = {m.config.peft_type.lower(): m for m in METHODS.values()}
    if key in by_peft_type:
        return by_peft_type[key]
    close = difflib.get_close_matches(key, sorted(METHODS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown adapter method {name!r}.{hint} Known methods: {known_methods()}.")


def get_config_class(method: str) -> type[AdapterConfig]:
    """The config class of a method, looked up as :func:`get_method` does."""
    return get_method(method).config


def known_methods() -> str:
    """The registered names, sorted and comma-separated (for messages)."""
    return ", ".join(sorted(METHODS))


class _ConfigClasses(Mapping[str, "type[AdapterConfig]"]):
    """Read-only view of :data:`METHODS` as name -> config class (always current)."""

    def __getitem__(self, name: str) -> type[AdapterConfig]:
        return METHODS[name].config

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)

    def __repr__(self) -> str:
        return f"ADAPTER_REGISTRY({dict(self)!r})"


#: Name -> config class of every registered method (a view of :data:`METHODS`).
ADAPTER_REGISTRY: Mapping[str, type[AdapterConfig]] = _ConfigClasses()
