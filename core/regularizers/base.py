"""The base class every method shares, its helpers, and the name registry.

A regularizer is a small object (as in avalanche) that satisfies
:class:`core.training.Regularizer`, the one protocol, re-exported here (it asks only for
``penalty``). Every method of this package derives from :class:`ContinualRegularizer`,
which gives it

- ``penalty(model) -> Tensor``: a scalar added to the training loss;
- ``update(model, data=None, task=None)``: called after a task (or stage) to take a
  snapshot, estimate a Fisher, fill a buffer, draw the next mask;
- ``ready``: whether ``update`` has run at least once (before that there is nothing to
  protect; :func:`core.training.compute_penalties` then adds an exact zero, while calling
  ``penalty`` directly raises :class:`NotReadyError`, because that is a bug in the caller);
- optionally ``observe(batch)``: sees the training batch first (LwF, DR-Tune, replay).

State lives in buffers (``TensorStore`` for name-keyed tensors that appear only at the
first ``update``), so a Lightning checkpoint carries it and a fresh object loads it back.
YAMLs name a method through the registry: ``build("ewc", lambda_=100.0)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from core.training.regularizer_protocol import Regularizer

__all__ = [
    "REGISTRY",
    "ContinualRegularizer",
    "NotReadyError",
    "Regularizer",
    "TensorStore",
    "available",
    "build",
    "default_inputs",
    "default_logits",
    "default_targets",
    "register",
    "select_parameters",
]


class NotReadyError(RuntimeError):
    """A regularizer was used before its first ``update``."""


# ------------------------------------------------------------------------------ buffers
class TensorStore(nn.Module):
    """Name-keyed tensors kept as buffers; keys may hold dots (``"fc1.weight"``).

    Buffers that appear only after the first ``update`` are a problem for checkpoints: a
    freshly built object has no buffer to load into. ``TensorStore`` creates missing ones
    from the state dict when loading, so ``load_state_dict`` and Lightning checkpoints
    restore the state of an object built with the same arguments.
    """

    _SEP = ":"  # buffer names cannot contain "."; parameter names never contain ":"

    def __init__(self) -> None:
        super().__init__()

    @classmethod
    def _escape(cls, key: str) -> str:
        if not key or cls._SEP in key:
            raise ValueError(f"TensorStore key {key!r} must be non-empty and free of {cls._SEP!r}.")
        return key.replace(".", cls._SEP)

    @classmethod
    def _unescape(cls, name: str) -> str:
        return name.replace(cls._SEP, ".")

    def __setitem__(self, key: str, value: Tensor) -> None:
        name = self._escape(key)
        if name in self._buffers:
            self._buffers[name] = value
        else:
            self.register_buffer(name, value)

    def __getitem__(self, key: str) -> Tensor:
        value = self._buffers.get(self._escape(key))
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key and self._escape(key) in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:
        """Keys in insertion order."""
        return [self._unescape(n) for n in self._buffers]

    def items(self) -> Iterator[tuple[str, Tensor]]:
        """(key, tensor) pairs in insertion order."""
        for name, value in self._buffers.items():
            assert value is not None
            yield self._unescape(name), value

    def clear(self) -> None:
        """Drop every tensor."""
        self._buffers.clear()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Drop what the checkpoint does not hold, create what it holds: the state is the
        # checkpoint's, whatever this object held before.
        names = {k[len(prefix) :] for k in state_dict if k.startswith(prefix)}
        names = {n for n in names if "." not in n}
        for name in list(self._buffers):
            if name not in names:
                del self._buffers[name]
        for name in sorted(names):
            if name not in self._buffers:
                self.register_buffer(name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


# ------------------------------------------------------------------------------ base class
class ContinualRegularizer(nn.Module):
    """Base class: a name, an update counter kept as a buffer, the ``ready`` check.

    Subclasses implement ``_penalty(model)`` (called only when ready) and ``_update(model,
    data, task)``. ``num_updates`` is a buffer, so a checkpoint restores readiness too.
    """

    #: Registry key, set by :func:`register`.
    method: str = ""
    #: False for methods that act by other means than a loss term (HFT masks gradients).
    has_penalty: bool = True

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def ready(self) -> bool:
        """Whether ``update`` has run at least once."""
        return int(self.num_updates.item()) > 0

    def require_ready(self, what: str = "penalty()") -> None:
        """Raise :class:`NotReadyError` naming ``what`` unless ``update`` has run."""
        if not self.ready:
            raise NotReadyError(
                f"{self.name}.{what} was called before {self.name}.update(): there is no "
                "previous task to protect yet. Call update(model, data) after the first task, "
                "or let core.training.compute_penalties / RegularizerCallback add a zero "
                "until then."
            )

    def penalty(self, model: nn.Module) -> Tensor:
        """The scalar penalty on ``model``; raises :class:`NotReadyError` before ``update``."""
        self.require_ready("penalty()")
        return self._penalty(model)

    @torch.no_grad()
    def _count_update(self) -> None:
        self.num_updates += 1

    def update(self, model: nn.Module, data: Iterable[Any] | None = None, task: Any = None) -> None:
        """Record what the finished task needs protected, then count the update."""
        self._update(model, data, task)
        self._count_update()

    def _penalty(self, model: nn.Module) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update(self, model: nn.Module, data: Iterable[Any] | None, task: Any) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def extra_repr(self) -> str:
        return f"name={self.name!r}, updates={int(self.num_updates.item())}"


# ------------------------------------------------------------------------------ helpers
def select_parameters(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    trainable_only: bool = True,
) -> dict[str, nn.Parameter]:
    """Floating-point parameters of ``model`` by name, filtered by glob patterns.

    A pattern matches a full parameter name (``"fc1.weight"``), a glob (``"encoder.*"``) or
    any dotted component of the name (``"head"`` matches ``"head.weight"`` and
    ``"model.head.bias"``). ``include=None`` keeps everything not excluded.
    """
    include = None if include is None else list(include)
    exclude = list(exclude)
    out: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if not param.is_floating_point() or (trainable_only and not param.requires_grad):
            continue
        if include is not None and not any(_matches(name, p) for p in include):
            continue
        if any(_matches(name, p) for p in exclude):
            continue
        out[name] = param
    return out


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or pattern in name.split(".")


def default_inputs(batch: Any) -> Any:
    """The model input of a batch: the batch itself (a tensor) or its first element."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch:
        return batch[0]
    raise TypeError(
        f"cannot find the model inputs in a batch of type {type(batch).__name__}; pass "
        "input_fn=lambda batch: ... to the regularizer."
    )


def default_targets(batch: Any) -> Tensor:
    """The labels of an ``(x, y, ...)`` batch: its second element."""
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[1]
    raise TypeError(
        f"cannot find labels in a batch of type {type(batch).__name__}; pass "
        "target_fn=lambda batch: ... to the regularizer."
    )


def default_logits(output: Any) -> Tensor:
    """Logits of a model output: the tensor itself, or ``output.logits`` (Hugging Face)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; pass "
        "output_fn=lambda output: ... to the regularizer."
    )


# ------------------------------------------------------------------------------ registry
REGISTRY: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type[nn.Module])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make ``build(name, ...)`` construct this class."""

    def deco(cls: T) -> T:
        key = name.lower()
        if key in REGISTRY and REGISTRY[key] is not cls:
            raise ValueError(f"regularizer name {name!r} is already registered.")
        REGISTRY[key] = cls
        cls.method = key
        return cls

    return deco


def available() -> list[str]:
    """Registered method names, sorted."""
    return sorted(REGISTRY)


def build(spec: str | Mapping[str, Any], **kwargs: Any) -> nn.Module:
    """Construct a regularizer by registry name.

    ``build("ewc", lambda_=100)`` or ``build({"method": "ewc", "lambda_": 100})`` (the
    form a YAML holds). Unknown names raise a ``ValueError`` listing the known ones.
    """
    if isinstance(spec, Mapping):
        kwargs = {**{k: v for k, v in spec.items() if k != "method"}, **kwargs}
        if "method" not in spec:
            raise ValueError(
                f"regularizer config {dict(spec)!r} has no 'method' key; add e.g. "
                f"method: ewc (known: {', '.join(available())})."
            )
        spec = str(spec["method"])
    key = str(spec).lower()
    if key not in REGISTRY:
        raise ValueError(
            f"Unknown regularizer method {spec!r}; known methods: {', '.join(available())}."
        )
    return REGISTRY[key](**kwargs)
