"""Models as lazy, read-only maps from tensor names to tensors.

A merge reads its inputs through :class:`Source` objects: an in-memory state dict
(:class:`DictSource`) or a file on disk (``core.merging.io``). A source knows each tensor's
shape and dtype without reading it, and hands out a :class:`TensorReader` that reads any
flat range of elements on demand. Merge kernels read chunk by chunk, so a file-backed
source never has a whole tensor in memory.

A source is also a ``Mapping[str, Tensor]`` (``source[key]`` reads one whole tensor), so
whole-model code such as a greedy soup's score function can take it as a state dict.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor


class TensorReader:
    """Reads flat element ranges of one tensor (row-major order), without holding it.

    ``read`` may return a view of memory the caller does not own: treat it as read-only.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(int(s) for s in self.shape)

    def read(self, start: int, stop: int) -> Tensor:  # pragma: no cover - interface
        """Elements ``start:stop`` of the flattened tensor, as a 1-D tensor."""
        raise NotImplementedError

    def read_all(self) -> Tensor:
        """The whole tensor in its shape (a new tensor or a read-only view)."""
        return self.read(0, self.numel).reshape(self.shape)


class MemoryReader(TensorReader):
    """A reader over an in-memory tensor (made contiguous once, never written)."""

    def __init__(self, tensor: Tensor) -> None:
        tensor = tensor.detach()
        self.shape = tuple(tensor.shape)
        self.dtype = tensor.dtype
        self._flat = tensor.contiguous().reshape(-1)

    def read(self, start: int, stop: int) -> Tensor:
        return self._flat[start:stop]


class Source(Mapping[str, Tensor]):
    """One model (or one side input such as a Fisher) as named, lazily read tensors.

    Subclasses implement :meth:`keys_list`, :meth:`meta` and :meth:`reader`; ``name`` is
    what error messages call this input (a path, or ``"model 1"``).
    """

    name: str = "model"

    def keys_list(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:  # pragma: no cover
        """(shape, dtype) of ``key`` without reading it."""
        raise NotImplementedError

    def reader(self, key: str) -> TensorReader:  # pragma: no cover - interface
        raise NotImplementedError

    def files(self) -> list[Path]:
        """Files this source reads (for the manifest's checksums); none in memory."""
        return []

    def close(self) -> None:
        """Release open files."""

    # Mapping interface: whole tensors on demand.
    def __getitem__(self, key: str) -> Tensor:
        return self.reader(key).read_all()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_list())

    def __len__(self) -> int:
        return len(self.keys_list())

    def __contains__(self, key: object) -> bool:
        return key in set(self.keys_list())


class DictSource(Source):
    """An in-memory state dict (``dict[str, Tensor]``) as a source."""

    def __init__(self, tensors: Mapping[str, Tensor], name: str = "model") -> None:
        if not isinstance(tensors, Mapping):
            raise TypeError(
                f"{name} must be a state dict (a mapping from tensor names to tensors), got "
                f"{type(tensors).__name__}; pass model.state_dict()."
            )
        for key, value in tensors.items():
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor; pass a "
                    "state dict of tensors only."
                )
        self._tensors = tensors
        self.name = name

    def keys_list(self) -> list[str]:
        return list(self._tensors.keys())

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        t = self._tensors[key]
        return tuple(t.shape), t.dtype

    def reader(self, key: str) -> TensorReader:
        return MemoryReader(self._tensors[key])

    def __getitem__(self, key: str) -> Tensor:
        return self._tensors[key]


def as_source(value: Mapping[str, Tensor] | Source, name: str) -> Source:
    """``value`` itself when it is a :class:`Source`, else a :class:`DictSource` named ``name``."""
    if isinstance(value, Source):
        return value
    return DictSource(value, name)
