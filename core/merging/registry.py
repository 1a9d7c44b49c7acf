"""The registry of merge methods: each method is registered once, by name, with its spec.

A YAML names a method by string (``method: ties``); the command line, the regression test
and :func:`core.merging.merge_state_dicts` look it up here. A spec says which inputs the
method takes (a base? how many models? per-model extras such as Fisher information?), its
parameters and their defaults, which parameters a single model may override (its
``weight``, its own ``density``), whether it draws random numbers, and how to merge one
tensor (its kernel) -- or, for methods that must see whole models (greedy soup), a
function over whole state dicts.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import TensorJob


class _Required:
    """Marks a parameter without a default (the caller must give it)."""

    def __repr__(self) -> str:
        return "REQUIRED"


#: Default of a parameter that must be given.
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class MergeMethod:
    """How to run one merge method.

    Attributes:
        name: Registry key (lower case).
        summary: One line for ``--help`` and docs.
        params: Global parameters with their defaults (:data:`REQUIRED`: no default).
        per_model: Parameters a model entry may set for itself (``weight`` and e.g.
            ``density``); a global value that is a list gives one value per model.
        needs_base: Whether the method needs the pre-trained base (task-vector methods) or
            works on the models alone (soups, Fisher merging).
        min_models / max_models: How many fine-tuned models it takes.
        stochastic: Draws random numbers (from ``seed``).
        extras: Per-model side inputs with the models' keys (``("fisher",)``).
        kernel: ``kernel(job)`` merges one tensor chunk by chunk (see ``engine.TensorJob``).
        function: For whole-model methods: ``function(models, base, params, model_params,
            seed)`` returning the merged state dict; ``kernel`` is then ``None``.
        prepare: ``prepare(keys, params) -> {key: info}`` computed once from the tensor
            names before merging (LiNeS's per-layer scale); ``job.info`` gets the value.
        check: ``check(params, model_params)`` raises ``ValueError`` naming a bad value.
    """

    name: str
    summary: str
    params: Mapping[str, Any] = field(default_factory=dict)
    per_model: tuple[str, ...] = ("weight",)
    needs_base: bool = True
    min_models: int = 1
    max_models: int | None = None
    stochastic: bool = False
    extras: tuple[str, ...] = ()
    kernel: Callable[[TensorJob], None] | None = None
    function: Callable[..., dict] | None = None
    prepare: Callable[[list[str], dict[str, Any]], dict[str, Any]] | None = None
    check: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None

    @property
    def streamable(self) -> bool:
        """True when the method merges tensor by tensor (constant memory in the CLI)."""
        return self.kernel is not None


METHODS: dict[str, MergeMethod] = {}


def register_method(method: MergeMethod) -> MergeMethod:
    """Add ``method`` to :data:`METHODS`; a second method with the same name is an error."""
    key = method.name.lower()
    if key in METHODS:
        raise ValueError(f"a merge method named {key!r} is already registered.")
    if (method.kernel is None) == (method.function is None):
        raise ValueError(f"merge method {key!r} needs exactly one of kernel or function.")
    METHODS[key] = method
    return method


def get_method(name: str) -> MergeMethod:
    """Look a method up by name (case-insensitive); unknown names list close matches."""
    key = str(name).lower()
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, sorted(METHODS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown merge method {name!r}.{hint} Known methods: {', '.join(sorted(METHODS))}."
    )
