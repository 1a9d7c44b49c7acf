"""Read models from disk tensor by tensor, and write the merged model as it is produced.

Inputs (:func:`open_source` picks the reader from the path):

- a ``.safetensors`` file, or a Hugging Face model directory with ``model.safetensors`` or
  sharded ``model.safetensors.index.json``: read with plain positioned reads of the byte
  ranges a chunk needs (no memory map), so a merge holds chunks, never whole files;
- a ``pytorch_model.bin`` (or ``.index.json`` shards), ``.pt``/``.pth`` state dict or a
  Lightning ``.ckpt``: loaded with ``torch.load(mmap=True, weights_only=True)``, so tensors
  are paged in from the file as chunks are read. From a checkpoint the tensors under
  ``model.`` (a FineTuneModule's model) are taken, prefix stripped; LoRA adapters inside it
  (``<layer>.base_layer.*`` + ``<layer>.adapters.<name>.lora_*``) are folded into the
  weights using the adapter config in its ``hyper_parameters``;
- a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``): read
  as "base + the adapter's delta", computed row block by row block; needs the base.

The output is one safetensors file written by :class:`SafetensorsWriter`, whose header is
laid out up front, so every merged chunk goes straight to its place in the file. Two guards
keep a merge from harming what is on disk: :func:`check_output_apart` refuses an output that
is, contains or lies inside an input (replacing it would destroy the input), and
:func:`explain_full_disk` turns a full disk into one line naming the output and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.adapters import ADAPTER_REGISTRY, config_from_dict

from .lora_merge import (
    LoraAdapter,
    LoraFactors,
    apply_lora,
    lora_adapter_from_tensors,
    read_lora_adapter,
)
from .sources import MemoryReader, Source, TensorReader

_ST_TO_TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def sha256_file(path: str | Path, block: int = 1 << 23) -> str:
    """Hex SHA-256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ safetensors
class SafetensorsFile:
    """A safetensors file read with ``os.preadv`` into fresh buffers (no memory map)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"safetensors file {str(self.path)!r} does not exist.")
        size = self.path.stat().st_size
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            head = os.pread(self._fd, 8, 0)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            length = int.from_bytes(head, "little")
            if length > size - 8:
                raise ValueError(f"header length {length} exceeds the file size {size}")
            header = json.loads(os.pread(self._fd, length, 8))
            self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
            self.data_start = 8 + length
            self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
            for key, info in header.items():
                dtype = _ST_TO_TORCH.get(info["dtype"])
                if dtype is None:
                    raise ValueError(f"tensor {key!r} has unsupported dtype {info['dtype']!r}")
                begin, end = (int(x) for x in info["data_offsets"])
                shape = tuple(int(s) for s in info["shape"])
                if (
                    end - begin != _numel(shape) * _element_size(dtype)
                    or self.data_start + end > size
                ):
                    raise ValueError(f"tensor {key!r} has offsets outside the file or its shape")
                self.entries[key] = (dtype, shape, begin, end)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            os.close(self._fd)
            raise ValueError(
                f"{str(self.path)!r} is not a valid safetensors file ({err}); re-save or "
                "re-download it."
            ) from err

    def read(self, key: str, start: int, stop: int) -> Tensor:
        dtype, _, begin, _ = self.entries[key]
        size = _element_size(dtype)
        nbytes = (stop - start) * size
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        offset = self.data_start + begin + start * size
        done = 0
        while done < nbytes:
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise ValueError(f"{str(self.path)!r} ended early while reading {key!r}.")
            done += got
        return buf.view(dtype)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _FileReader(TensorReader):
    def __init__(self, file: SafetensorsFile, key: str) -> None:
        self.file, self.key = file, key
        self.dtype, self.shape = file.entries[key][0], file.entries[key][1]

    def read(self, start: int, stop: int) -> Tensor:
        return self.file.read(self.key, start, stop)


class SafetensorsSource(Source):
    """One or more safetensors files (HF shards) as one model."""

    def __init__(self, files: Sequence[str | Path], name: str) -> None:
        self.name = name
        self._files = [SafetensorsFile(f) for f in files]
        self._where: dict[str, SafetensorsFile] = {}
        for f in self._files:
            for key in f.entries:
                if key in self._where:
                    raise ValueError(f"tensor {key!r} appears in two shards of {name}.")
                self._where[key] = f

    def keys_list(self) -> list[str]:
        return list(self._where)

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        dtype, shape, _, _ = self._where[key].entries[key]
        return shape, dtype

    def reader(self, key: str) -> TensorReader:
        return _FileReader(self._where[key], key)

    def files(self) -> list[Path]:
        return [f.path for f in self._files]

    def close(self) -> None:
        for f in self._files:
            f.close()


class SafetensorsWriter:
    """Writes a safetensors file whose tensors (names, shapes, dtypes) are known up front.

    The header is written first; :meth:`sink` returns a function that writes any element
    range of one tensor at its final position, so a merge never holds the output.
    :meth:`close` checks every byte was written.
    """

    def __init__(
        self,
        path: str | Path,
        plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
        self._layout: dict[str, tuple[tuple[int, ...], torch.dtype, int, int]] = {}
        offset = 0
        for key, shape, dtype in plan:
            nbytes = _numel(shape) * _element_size(dtype)
            header[key] = {
                "dtype": _TORCH_TO_ST[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._layout[key] = (tuple(shape), dtype, offset, nbytes)
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self._data_start = 8 + len(text)
        self._written = dict.fromkeys(self._layout, 0)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, len(text).to_bytes(8, "little") + text, 0)
        os.ftruncate(self._fd, self._data_start + offset)

    def sink(
        self, key: str, shape: tuple[int, ...], dtype: torch.dtype
    ) -> Callable[[slice, Tensor], None]:
        planned_shape, planned_dtype, begin, _ = self._layout[key]
        if tuple(shape) != planned_shape or dtype != planned_dtype:
            raise RuntimeError(
                f"{key!r}: output planned as {planned_shape} {planned_dtype}, got {shape} {dtype}."
            )
        size = _element_size(dtype)

        def write(sl: slice, values: Tensor) -> None:
            data = values.reshape(-1).to(dtype).contiguous().view(torch.uint8).numpy()
            if data.nbytes != (sl.stop - sl.start) * size:
                raise RuntimeError(f"{key!r}: chunk {sl} got {data.nbytes} bytes.")
            view, offset, done = memoryview(data), self._data_start + begin + sl.start * size, 0
            while done < data.nbytes:
                done += os.pwrite(self._fd, view[done:], offset + done)
            self._written[key] += data.nbytes

        return write

    def abort(self) -> None:
        """Close without the completeness check (the merge failed; the file is discarded)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Flush to disk; raise if any tensor was not (or was over-) written."""
        try:
            wrong = [k for k, (_, _, _, n) in self._layout.items() if self._written[k] != n]
            if wrong:
                raise RuntimeError(f"output tensors {wrong[:3]} were not written completely.")
            os.fsync(self._fd)
        finally:
            self.abort()


# ------------------------------------------------------------------------- torch pickles
class TorchSource(Source):
    """A torch state dict file (``.bin``, ``.pt``, ``.ckpt``) loaded with ``mmap=True``.

    Tensors in the file under ``prefix`` are taken with the prefix removed (all tensors
    when ``prefix`` is empty). LoRA layers saved inside (a FineTuneModule checkpoint of a
    LoRA run) are folded into plain weights.
    """

    def __init__(self, files: Sequence[str | Path], name: str, prefix: str | None = None) -> None:
        self.name = name
        self._paths = [Path(f) for f in files]
        raw: dict[str, Tensor] = {}
        hparams: dict[str, Any] = {}
        for path in self._paths:
            try:
                loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as err:
                raise ValueError(
                    f"{str(path)!r} could not be read as a torch state dict with "
                    f"weights_only=True ({type(err).__name__}: {err}); convert it to "
                    "safetensors first."
                ) from err
            if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
                hparams = loaded.get("hyper_parameters") or {}
                loaded = loaded["state_dict"]
                if prefix is None:
                    prefix = "model."
            if not isinstance(loaded, dict):
                raise ValueError(
                    f"{str(path)!r} holds a {type(loaded).__name__}, not a state dict."
                )
            raw.update({k: v for k, v in loaded.items() if isinstance(v, Tensor)})
        prefix = prefix or ""
        tensors = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
        if not tensors:
            raise ValueError(
                f"{name} has no tensors under prefix {prefix!r} (first keys: {list(raw)[:3]}); "
                "set prefix: to the model's attribute path in the checkpoint."
            )
        self._tensors, self._lora, self._fan = _fold_lora(tensors, hparams, name)

    def keys_list(self) -> list[str]:
        return list(self._tensors)

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        t = self._tensors[key]
        return tuple(t.shape), (_delta_dtype(t.dtype) if key in self._lora else t.dtype)

    def stored_dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def reader(self, key: str) -> TensorReader:
        base = MemoryReader(self._tensors[key])
        if key in self._lora:
            return LoraReader(base, self._lora[key], self._fan)
        return base

    def files(self) -> list[Path]:
        return list(self._paths)


_ADAPTER_KEY = re.compile(r"^(.*)\.adapters\.([^.]+)\.(.+)$")
_BASE_LAYER_KEY = re.compile(r"^(.*)\.base_layer\.(.+)$")


def _fold_lora(
    tensors: dict[str, Tensor], hparams: Mapping[str, Any], name: str
) -> tuple[dict[str, Tensor], dict[str, LoraFactors], bool]:
    """Split ``<layer>.base_layer.*`` / ``<layer>.adapters.<n>.*`` into plain weights + LoRA."""
    plain: dict[str, Tensor] = {}
    parts: dict[str, Tensor] = {}
    names = set()
    for key, value in tensors.items():
        if m := _ADAPTER_KEY.match(key):
            names.add(m.group(2))
            if m.group(3) in ("init_A", "init_B"):
                continue  # PiSSA/CorDA initial factors: base_layer already is the residual
            parts[f"base_model.model.{m.group(1)}.{m.group(3)}"] = value
        elif m := _BASE_LAYER_KEY.match(key):
            plain[f"{m.group(1)}.{m.group(2)}"] = value
        else:
            plain[key] = value
    if not parts:
        return plain, {}, False
    if len(names) > 1:
        raise ValueError(
            f"{name} holds several adapters {sorted(names)}; merge from their PEFT directories "
            "(core.adapters.save_adapter) with base: set."
        )
    raw = hparams.get("adapter") if isinstance(hparams, Mapping) else None
    if isinstance(raw, Mapping) and "init_args" in raw:
        raw = {"method": _method_of_class_path(raw.get("class_path")), **raw["init_args"]}
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"{name} holds LoRA tensors (e.g. {next(iter(parts))!r}) but no adapter config in "
            "its hyper_parameters; merge the run's adapter/ directory with base: set instead."
        )
    config = config_from_dict(dict(raw))
    adapter = lora_adapter_from_tensors(_no_svd_init(config), parts, False, name)
    lora = {}
    for module, factors in adapter.modules.items():
        key = f"{module}.weight"
        if key not in plain:
            raise ValueError(f"{name}: LoRA on {module!r} but no tensor {key!r} in the checkpoint.")
        lora[key] = factors
    return plain, lora, False


def _method_of_class_path(class_path: Any) -> str:
    """The registered method whose config class a checkpoint's ``class_path`` names.

    Checkpoints name the class (``core.adapters.lora.LoraConfig``, or an older module path);
    the class name alone identifies the registration.
    """
    class_name = str(class_path or "").rsplit(".", 1)[-1]
    for method, cls in ADAPTER_REGISTRY.items():
        if cls.__name__ == class_name:
            return method
    raise ValueError(
        f"adapter class_path {class_path!r} names no registered adapter method; known: "
        f"{sorted(cls.__name__ for cls in ADAPTER_REGISTRY.values())}."
    )


def _no_svd_init(config: Any) -> Any:
    # In a checkpoint, PiSSA/CorDA layers store the residual as base_layer, so residual + s B A
    # is the fine-tuned weight: fold it like a plain LoRA.
    if config.rewrites_base:
        config.init = "default"
    return config


def _delta_dtype(dtype: torch.dtype) -> torch.dtype:
    """Base + LoRA delta is exact in float32 (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class LoraReader(TensorReader):
    """Reads W + s B A for a base weight, a block of whole rows at a time."""

    def __init__(self, base: TensorReader, factors: LoraFactors, fan_in_fan_out: bool) -> None:
        self.base, self.factors, self.fan = base, factors, fan_in_fan_out
        self.shape = base.shape
        self.dtype = _delta_dtype(base.dtype)
        self._row = _numel(self.shape[1:]) if len(self.shape) > 1 else 1
        if factors.magnitude is not None and fan_in_fan_out:
            self._row = self.numel  # DoRA norms run across stored rows: whole tensor at once

    def read(self, start: int, stop: int) -> Tensor:
        if stop <= start:
            return torch.empty(0, dtype=self.dtype)
        row = self._row
        first, last = start // row, -(-stop // row)
        block = self.base.read(first * row, last * row).to(self.dtype)
        width = _numel(self.shape[1:]) if len(self.shape) > 1 else 1
        rows = block.reshape(-1, width)
        first_row = first * row // width
        merged = apply_lora(rows, self.factors, self.fan, first_row).to(self.dtype)
        return merged.reshape(-1)[start - first * row : stop - first * row]


# ------------------------------------------------------------------------ PEFT adapters
class AdapterSource(Source):
    """A PEFT LoRA adapter directory seen as a full model: base + the adapter's delta."""

    def __init__(self, path: str | Path, base: Source, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or repr(str(path))
        self.base = base
        self.adapter: LoraAdapter = read_lora_adapter(self.path)
        self._lora: dict[str, LoraFactors] = {}
        keys = set(base.keys_list())
        for module, factors in self.adapter.modules.items():
            key = f"{module}.weight"
            if key not in keys:
                raise ValueError(
                    f"adapter {self.name} changes {module!r}, but the base {base.name} has no "
                    f"tensor {key!r}; use the base model the adapter was trained on."
                )
            shape = base.meta(key)[0]
            rows, cols = factors.b.shape[0], factors.a_matrix().shape[1]
            expected = (cols, rows) if self.adapter.fan_in_fan_out else (rows, cols)
            if (shape[0], _numel(shape[1:])) != expected:
                raise ValueError(
                    f"tensor {key!r} has shape {tuple(shape)} in the base {base.name}, but "
                    f"adapter {self.name} has a {expected} delta for it; use the base model "
                    "the adapter was trained on."
                )
            self._lora[key] = factors
        for key, value in self.adapter.extra.items():
            if key not in keys or tuple(base.meta(key)[0]) != tuple(value.shape):
                raise ValueError(
                    f"adapter {self.name} saves {key!r} (modules_to_save) with shape "
                    f"{tuple(value.shape)}, which the base {base.name} does not have."
                )

    def keys_list(self) -> list[str]:
        return self.base.keys_list()

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        shape, dtype = self.base.meta(key)
        return shape, (_delta_dtype(dtype) if key in self._lora else dtype)

    def stored_dtype(self, key: str) -> torch.dtype:
        return self.base.meta(key)[1]

    def reader(self, key: str) -> TensorReader:
        if key in self.adapter.extra:
            return MemoryReader(self.adapter.extra[key])
        if key in self._lora:
            return LoraReader(self.base.reader(key), self._lora[key], self.adapter.fan_in_fan_out)
        return self.base.reader(key)

    def files(self) -> list[Path]:
        return [self.path / "adapter_config.json", self.path / "adapter_model.safetensors"]


# ---------------------------------------------------------------------------------- opening
def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def stored_dtype(source: Source, key: str) -> torch.dtype:
    """The dtype ``key`` is stored in (a folded LoRA weight reads as float32 but is stored
    in its base's dtype)."""
    getter = getattr(source, "stored_dtype", None)
    return getter(key) if getter is not None else source.meta(key)[1]


def open_source(
    path: str | Path, base: Source | None = None, prefix: str | None = None, name: str | None = None
) -> Source:
    """Open a model on disk as a lazy :class:`Source` (see the module docstring).

    ``prefix`` selects (and strips) the tensors under it in torch checkpoints (default
    ``"model."`` for Lightning checkpoints, none for plain state dicts); safetensors files
    and HF directories are read as they are.
    """
    path = Path(path)
    label = name or repr(str(path))
    if not path.exists():
        raise FileNotFoundError(
            f"input {str(path)!r} does not exist; check the path in the config."
        )
    if path.is_dir():
        if is_adapter_dir(path):
            if base is None:
                raise ValueError(
                    f"{str(path)!r} is a PEFT adapter, a difference against a base model; set "
                    "base: to the model it was trained on."
                )
            return AdapterSource(path, base, label)
        if (path / "model.safetensors.index.json").is_file():
            return SafetensorsSource(_shards(path / "model.safetensors.index.json"), label)
        if (path / "model.safetensors").is_file():
            return SafetensorsSource([path / "model.safetensors"], label)
        if (path / "pytorch_model.bin.index.json").is_file():
            return TorchSource(_shards(path / "pytorch_model.bin.index.json"), label, prefix)
        if (path / "pytorch_model.bin").is_file():
            return TorchSource([path / "pytorch_model.bin"], label, prefix)
        raise ValueError(
            f"directory {str(path)!r} holds no model: expected one of {', '.join(WEIGHTS_HINT)}."
        )
    if path.suffix == ".safetensors":
        return SafetensorsSource([path], label)
    if path.suffix in (".ckpt", ".bin", ".pt", ".pth"):
        return TorchSource([path], label, prefix)
    raise ValueError(
        f"input {str(path)!r} is not a known model format: expected one of "
        f"{', '.join(WEIGHTS_HINT)}."
    )


WEIGHTS_HINT = (
    "a .safetensors file",
    "a Hugging Face model directory (model.safetensors[.index.json] or pytorch_model.bin)",
    "a PEFT adapter directory (adapter_config.json)",
    "a Lightning .ckpt or a torch .bin/.pt/.pth state dict",
)


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{str(index)!r} is not a valid shard index ({err}).") from err
    return [index.parent / f for f in dict.fromkeys(weight_map.values())]


# ----------------------------------------------------------------------------- output guards
def check_output_apart(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Raise ``ValueError`` if ``output`` is, contains or lies inside one of ``inputs``.

    Writing the output replaces ``output`` as a whole (with ``overwrite``), so an output equal
    to an input file, or to a folder holding inputs, would destroy them, and an output inside
    an input directory would change that input. Paths are compared after resolving symlinks
    and by file identity, so a link or another spelling of an input is caught as well. The
    check holds even with ``overwrite``: it guards inputs, not earlier outputs.
    """
    out = Path(output).resolve()
    for given in inputs:
        if given is None:
            continue
        inp = Path(given).resolve()
        if _same_path(out, inp):
            relation = "is"
        elif any(_same_path(parent, out) for parent in inp.parents):
            relation = "contains"
        elif any(_same_path(parent, inp) for parent in out.parents):
            relation = "lies inside"
        else:
            continue
        shown = [
            f"{str(p)!r}" + (f" (= {str(r)!r})" if Path(p).absolute() != r else "")
            for p, r in ((output, out), (given, inp))
        ]
        raise ValueError(
            f"output {shown[0]} {relation} input {shown[1]}; a merge never writes over its "
            "inputs, even with overwrite: choose an output path outside every input."
        )


def _same_path(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


class OutputWriteError(OSError):
    """The merged output could not be written (e.g. the disk is full); nothing was left."""


@contextmanager
def explain_full_disk(output: str | Path, nbytes: int | None = None) -> Iterator[None]:
    """Turn a full disk or quota (``ENOSPC``/``EDQUOT``) into a one-line
    :class:`OutputWriteError` naming ``output``, the space needed and the fix.

    Wrap it around the ``atomic_directory`` that writes the output, so the half-written
    temporary directory is already gone when the error is raised.
    """
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, OutputWriteError):
            raise
        need = f" (the merged files need about {_size(nbytes)})" if nbytes else ""
        explained = OutputWriteError(
            f"no space left on the disk holding output {str(output)!r} while writing the "
            f"merge{need}; free space there or choose an output on another disk, then rerun. "
            "Nothing was written."
        )
        explained.errno = err.errno
        raise explained from err


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def plan_bytes(plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]]) -> int:
    """Bytes the tensors of a write plan take in the output file."""
    return sum(_numel(shape) * _element_size(dtype) for _, shape, dtype in plan)
