"""Read and write CTranslate2 ``model.bin`` files (binary version 6) without CTranslate2.

faster-whisper folders hold their weights in this format. Reading it ourselves lets the app
fine-tune such a model with ``transformers`` without installing CTranslate2, and writing it
lets a fine-tuned model go back to faster-whisper. The layout (little-endian, as written by
``ctranslate2.specs.model_spec.ModelSpec._serialize``):

- ``uint32`` binary version (6), the spec name (a string, e.g. ``WhisperSpec``), ``uint32``
  spec revision, ``uint32`` variable count;
- per variable: its name (a string), ``uint8`` rank, rank × ``uint32`` dimensions, ``uint8``
  dtype (see :data:`DTYPES`), ``uint32`` byte count, the bytes (row-major);
- ``uint32`` alias count, then per alias its name and the name of the variable it shares.

A string is a ``uint16`` length that counts a trailing NUL, then the UTF-8 bytes and the NUL.
Scalars (rank 0) hold settings such as ``decoder/num_heads``. CTranslate2 stores a tensor
that equals an earlier one (in name order) once and aliases the others (a tied output
projection, layer norms that were never trained away from ones); :func:`read_model_bin`
resolves aliases, and :func:`alias_duplicates` makes them the way CTranslate2 does.

Every size is checked against the file size before anything is read, so a cut file is
reported as truncated (naming the variable), never read as garbage or as a huge allocation.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from core.atomic import atomic_write

__all__ = [
    "BINARY_VERSION",
    "DTYPES",
    "CTranslate2FormatError",
    "CTranslate2Model",
    "alias_duplicates",
    "read_model_bin",
    "read_spec_name",
    "write_model_bin",
]

#: The binary version this module reads and writes (CTranslate2 >= 3.0 writes 6).
BINARY_VERSION = 6
#: dtype ids of the format, in the order of CTranslate2's ``DataType`` enum.
DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.float16,
    torch.bfloat16,
)
#: Revisions of the specs this project writes (``ModelSpec.revision`` in CTranslate2).
SPEC_REVISIONS = {"WhisperSpec": 3}
_MAX_STRING = 0xFFFF - 1  # uint16 length, which counts the trailing NUL
_REWRITE_HINT = (
    "convert the model again with CTranslate2 >= 3 (ct2-transformers-converter) or take "
    "a fresh copy of the faster-whisper folder"
)


class CTranslate2FormatError(ValueError):
    """A ``model.bin`` that is not a (complete, version-6) CTranslate2 model file."""


@dataclass
class CTranslate2Model:
    """The contents of a CTranslate2 ``model.bin``.

    Attributes:
        path: The file it was read from.
        spec_name: The model specification, e.g. ``"WhisperSpec"``.
        revision: The specification's revision (its variable layout version).
        variables: Name → tensor in its stored dtype; an alias name maps to the very tensor
            of the variable it aliases.
        aliases: Alias name → the name of the stored variable it shares (as in the file).
    """

    path: Path
    spec_name: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)


class _Reader:
    """Sequential reads from a file that check the file size first (truncation errors)."""

    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.handle, self.path, self.size = handle, path, size

    def remaining(self) -> int:
        return self.size - self.handle.tell()

    def take(self, count: int, what: str) -> bytes:
        if count > self.remaining():
            raise CTranslate2FormatError(
                f"{self.path} is truncated: {what} needs {count} bytes at offset "
                f"{self.handle.tell()}, but the file ends at {self.size}. The copy was cut "
                f"short (or its parts were not all joined); {_REWRITE_HINT}."
            )
        return self.handle.read(count)

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", what)
        raw = self.take(length, what)
        if length == 0 or raw[-1] != 0:
            raise CTranslate2FormatError(
                f"{self.path}: {what} at offset {self.handle.tell() - length} is not a "
                f"NUL-terminated string; the file is corrupt: {_REWRITE_HINT}."
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CTranslate2FormatError(
                f"{self.path}: {what} is not UTF-8 ({err}); the file is corrupt."
            ) from err


def _open_checked(path: Path) -> tuple[BinaryIO, _Reader, int]:
    """Open ``path`` and read its binary version, refusing other files and versions."""
    if not path.is_file():
        raise FileNotFoundError(
            f"no CTranslate2 model file at {str(path)!r}; a faster-whisper folder holds "
            "model.bin, config.json, tokenizer.json and vocabulary.txt (or .json)."
        )
    handle = open(path, "rb")  # noqa: SIM115 - closed by the callers
    reader = _Reader(handle, path, os.fstat(handle.fileno()).st_size)
    try:
        if reader.size < 4:
            raise CTranslate2FormatError(
                f"{path} is not a CTranslate2 model file ({reader.size} bytes); expected a "
                "model.bin written by CTranslate2 (faster-whisper folders hold one)."
            )
        version = reader.unpack("I", "the binary version")
        if not 1 <= version <= 64:
            raise CTranslate2FormatError(
                f"{path} is not a CTranslate2 model file (its first 4 bytes read as version "
                f"{version}); expected a model.bin written by CTranslate2 (faster-whisper "
                "folders hold one)."
            )
        if version != BINARY_VERSION:
            raise CTranslate2FormatError(
                f"{path} is a CTranslate2 model of binary version {version}; only version "
                f"{BINARY_VERSION} is read here: {_REWRITE_HINT}."
            )
    except BaseException:
        handle.close()
        raise
    return handle, reader, version


def read_spec_name(path: str | Path) -> str:
    """The spec name of a CTranslate2 ``model.bin`` (e.g. ``"WhisperSpec"``), read cheaply.

    Lets a caller refuse a model of the wrong kind before hashing or reading the weights.
    """
    handle, reader, _ = _open_checked(Path(path))
    with handle:
        return reader.string("the spec name")


def read_model_bin(path: str | Path) -> CTranslate2Model:
    """Read a CTranslate2 ``model.bin`` (binary version 6) into tensors.

    Each tensor keeps its stored dtype (int8 / float16 weights are not converted) and shape;
    scalars are 0-dimensional tensors. Aliases are resolved: ``variables`` has every alias
    name too, mapped to the tensor of the variable it shares.

    Raises:
        FileNotFoundError: no file at ``path``.
        CTranslate2FormatError: not a CTranslate2 file, another binary version, a size or
            dtype that does not add up, a truncated file, bytes after the alias table, or an
            alias to a variable that does not exist.
    """
    path = Path(path)
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is
        raise RuntimeError("reading CTranslate2 files needs a little-endian machine.")
    handle, reader, _ = _open_checked(path)
    with handle:
        spec_name = reader.string("the spec name")
        revision = reader.unpack("I", "the spec revision")
        count = reader.unpack("I", "the variable count")
        variables: dict[str, torch.Tensor] = {}
        for index in range(count):
            where = f"variable {index + 1} of {count}"
            name = reader.string(f"the name of {where}")
            where = f"variable {name!r}"
            rank = reader.unpack("B", f"the rank of {where}")
            shape = [reader.unpack("I", f"a dimension of {where}") for _ in range(rank)]
            dtype_id = reader.unpack("B", f"the dtype of {where}")
            if dtype_id >= len(DTYPES):
                raise CTranslate2FormatError(
                    f"{path}: {where} has dtype id {dtype_id}, not one of CTranslate2's "
                    f"{len(DTYPES)} (float32, int8, int16, int32, float16, bfloat16); the "
                    f"file is corrupt or from a newer CTranslate2: {_REWRITE_HINT}."
                )
            dtype = DTYPES[dtype_id]
            nbytes = reader.unpack("I", f"the byte count of {where}")
            numel = 1
            for dim in shape:
                numel *= dim
            expected = numel * dtype.itemsize
            if nbytes != expected:
                raise CTranslate2FormatError(
                    f"{path}: {where} of shape {shape} and dtype {dtype} should hold "
                    f"{expected} bytes but says {nbytes}; the file is corrupt: "
                    f"{_REWRITE_HINT}."
                )
            data = reader.take(nbytes, f"the data of {where}")
            if name in variables:
                raise CTranslate2FormatError(
                    f"{path}: variable {name!r} is stored twice; the file is corrupt."
                )
            if nbytes:
                tensor = torch.frombuffer(bytearray(data), dtype=dtype)
            else:
                tensor = torch.empty(0, dtype=dtype)
            variables[name] = tensor.reshape(shape)
        aliases: dict[str, str] = {}
        alias_count = reader.unpack("I", "the alias count")
        for index in range(alias_count):
            alias = reader.string(f"the name of alias {index + 1} of {alias_count}")
            aliases[alias] = reader.string(f"the target of alias {alias!r}")
        extra = reader.remaining()
        if extra:
            raise CTranslate2FormatError(
                f"{path} has {extra} unexpected bytes after its alias table; it is not a "
                "single CTranslate2 model (two files joined, or a wrong part appended?): "
                f"{_REWRITE_HINT}."
            )
    for alias, target in aliases.items():
        seen = {alias}
        while target in aliases and target not in variables:  # a chain of aliases
            if target in seen:
                raise CTranslate2FormatError(f"{path}: alias {alias!r} is part of a cycle.")
            seen.add(target)
            target = aliases[target]
        if target not in variables:
            raise CTranslate2FormatError(
                f"{path}: alias {alias!r} names {target!r}, which the file does not hold; "
                f"the file is corrupt: {_REWRITE_HINT}."
            )
        variables[alias] = variables[target]
    return CTranslate2Model(path, spec_name, revision, variables, aliases)


def alias_duplicates(
    variables: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each distinct tensor once, as CTranslate2's ``LayerSpec._alias_variables`` does.

    A non-scalar tensor equal (same dtype, shape and values) to one whose name comes earlier
    in sorted order becomes an alias of the first such name. Returns ``(stored, aliases)``.
    Compare before casting (CTranslate2 aliases before it quantizes), so the same model
    gives the same file.
    """
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    groups: dict[tuple[torch.dtype, tuple[int, ...]], list[str]] = {}
    for name in sorted(variables):
        tensor = variables[name]
        if tensor.dim() == 0:
            stored[name] = tensor
            continue
        group = groups.setdefault((tensor.dtype, tuple(tensor.shape)), [])
        first = next((other for other in group if torch.equal(variables[other], tensor)), None)
        if first is None:
            group.append(name)
            stored[name] = tensor
        else:
            aliases[name] = first
    return stored, aliases


def _string(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > _MAX_STRING:
        raise ValueError(f"{what} {text[:60]!r}... is longer than {_MAX_STRING} bytes.")
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def write_model_bin(
    path: str | Path,
    spec_name: str,
    variables: Mapping[str, torch.Tensor],
    aliases: Mapping[str, str] | None = None,
    *,
    revision: int | None = None,
) -> Path:
    """Write a CTranslate2 ``model.bin`` (binary version 6), atomically.

    Variables and aliases are written in name order, as CTranslate2 writes them. Each
    tensor is written in its own dtype (cast it first to choose float16 / float32); 0-dim
    tensors become scalars. The file appears complete or not at all (a temporary file in
    the same folder, then ``os.replace``).

    Args:
        path: The file to write (usually ``<folder>/model.bin``).
        spec_name: The model specification, e.g. ``"WhisperSpec"``.
        variables: Name → tensor (float32, int8, int16, int32, float16 or bfloat16).
        aliases: Alias name → the name of a variable in ``variables``.
        revision: The spec's revision; default: the known one for ``spec_name``
            (:data:`SPEC_REVISIONS`).

    Raises:
        ValueError: an unsupported dtype, an alias to a missing variable or one that is also
            a variable, an unknown spec without ``revision``, or a name too long.
    """
    path = Path(path)
    aliases = dict(aliases or {})
    if revision is None:
        if spec_name not in SPEC_REVISIONS:
            raise ValueError(
                f"write_model_bin({str(path)!r}): no known revision for spec {spec_name!r}; "
                f"pass revision= (known: {SPEC_REVISIONS})."
            )
        revision = SPEC_REVISIONS[spec_name]
    for name, tensor in variables.items():
        if tensor.dtype not in DTYPES:
            raise ValueError(
                f"write_model_bin({str(path)!r}): variable {name!r} has dtype {tensor.dtype}; "
                "CTranslate2 stores float32, int8, int16, int32, float16 and bfloat16 "
                "(cast it first)."
            )
    for alias, target in aliases.items():
        if alias in variables or target not in variables:
            raise ValueError(
                f"write_model_bin({str(path)!r}): alias {alias!r} -> {target!r} must name a "
                "written variable and must not be a variable itself."
            )

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<I", BINARY_VERSION))
            out.write(_string(spec_name, "spec name"))
            out.write(struct.pack("<II", revision, len(variables)))
            for name in sorted(variables):
                tensor = variables[name].detach().to("cpu").contiguous()
                out.write(_string(name, "variable name"))
                out.write(struct.pack("<B", tensor.dim()))
                out.write(struct.pack(f"<{tensor.dim()}I", *tensor.shape))
                data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
                out.write(struct.pack("<BI", DTYPES.index(tensor.dtype), len(data)))
                out.write(data)
            out.write(struct.pack("<I", len(aliases)))
            for alias in sorted(aliases):
                out.write(_string(alias, "alias name"))
                out.write(_string(aliases[alias], "alias target"))

    return atomic_write(path, write)
