"""Save and load adapters in the Hugging Face PEFT layout.

A saved adapter is a directory with ``adapter_config.json`` and
``adapter_model.safetensors`` whose keys are ``base_model.model.<module path>.<tensor>``
(``lora_A.weight``, ``lora_B.weight``, ``lora_magnitude_vector``), exactly as PEFT writes
them, so LoRA/DoRA/rsLoRA adapters move between this library, PEFT and PEFT-aware servers.
Methods PEFT does not ship use the same layout with their own ``peft_type``.

A save and a load may run at the same time (a trainer re-saving ``adapter/`` while a server
reloads it): a save builds the new directory next to the old one and swaps the two in one
step (``core.atomic.atomic_directory``), so a crash leaves one whole version; a load opens
the directory once and both files through that handle, so the config and the weights it
returns come from the same save (if a swap came between the two opens, or the directory is
briefly absent mid-swap, it reads again).

A load also refuses NaN/inf weights and misspelled config fields, which would otherwise give
silently wrong results.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor, nn

from core.atomic import atomic_directory

from .api import adapter_layers, adapter_names, delete_adapter, inject
from .config import AdapterConfig, config_from_dict
from .targeting import is_hf_conv1d, resolve_modules_to_save

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_READ_ATTEMPTS = 10  # reads retried while saves swap the directory; sleeps total ~0.5 s


def _config_of(model: nn.Module, name: str) -> AdapterConfig:
    for _, layer in adapter_layers(model):
        if name in layer.configs:
            return layer.configs[name]
    raise ValueError(f"no adapter named {name!r} to save; the model has {adapter_names(model)}.")


def adapter_state_dict(model: nn.Module, name: str = "default") -> tuple[dict[str, Tensor], dict]:
    """(PEFT-keyed tensors, adapter_config.json dict) of adapter ``name``, ready to write."""
    config = _config_of(model, name)
    tensors: dict[str, Tensor] = {}
    notes: dict[str, Any] = {}
    for layer_name, layer in adapter_layers(model):
        if name not in layer.adapters:
            continue
        state, unit_notes = layer.adapters[name].portable_state(layer.base_layer)
        notes |= {k: v for k, v in unit_notes.items() if v}
        for local, tensor in state.items():
            tensors[f"{PEFT_PREFIX}{layer_name}.{local}"] = (
                tensor.detach().cpu().clone().contiguous()
            )
    for module_name in resolve_modules_to_save(model, config.modules_to_save):
        for local, tensor in model.get_submodule(module_name).state_dict().items():
            key = f"{PEFT_PREFIX}{module_name}.{local}"
            tensors[key] = tensor.detach().cpu().clone().contiguous()
    json_dict = config.saved_json_dict(notes)
    if "fan_in_fan_out" in json_dict:  # PEFT's flag for GPT-2 style Conv1D (weight is in x out)
        json_dict["fan_in_fan_out"] = any(
            is_hf_conv1d(layer.base_layer) for _, layer in adapter_layers(model)
        )
    return tensors, json_dict


def save_adapter(model: nn.Module, path: str | Path, name: str = "default") -> Path:
    """Write adapter ``name`` to directory ``path`` atomically (all files appear at once).

    PiSSA/CorDA adapters are written as plain LoRA deltas against the original W0, so they
    load onto an unmodified base model here and in PEFT.
    """
    tensors, json_dict = adapter_state_dict(model, name)
    return write_adapter_dir(path, tensors, json_dict)


def write_adapter_dir(path: str | Path, tensors: dict[str, Tensor], json_dict: dict) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into ``path`` atomically.

    The new directory is built next to ``path`` and then takes its place in one step
    (``core.atomic.atomic_directory``: ``renameat2(RENAME_EXCHANGE)`` on Linux, so the
    adapter never goes missing; elsewhere two renames, a gap :func:`read_adapter_files`
    waits out). Whole directories are swapped, never files inside one, which is what lets a
    reader holding the directory open see one save.
    """
    with atomic_directory(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(json_dict, indent=2, sort_keys=True))
    return Path(path)


def read_adapter_files(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The raw ``adapter_config.json`` dict and the tensors of one save of adapter ``path``.

    Both files are opened through one handle on the directory, so they belong to the same
    save even while another process re-saves the adapter; when a save swapped the directory
    between the two opens (a file is gone from the handle's directory), or the directory is
    briefly absent, the read starts again. A file that fails to parse is read again once, in
    case it was being written in place (PEFT's ``save_pretrained`` does that); a second
    identical read is reported as corrupt. Errors name the file and the fix.
    """
    path = Path(path)
    previous: tuple[bytes, bytes] | None = None
    for attempt in range(_READ_ATTEMPTS):
        if attempt:
            time.sleep(0.001 * 2 ** min(attempt - 1, 8))
        pair = _read_pair(path)
        if pair is None:
            continue
        try:
            return _parse(path, *pair)
        except ValueError:
            if pair == previous:
                raise
            previous = pair
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory {str(path)!r} does not exist.")
    raise RuntimeError(
        f"adapter {str(path)!r} kept changing while it was read ({_READ_ATTEMPTS} attempts): "
        "another process is saving it over and over; load it once the saves pause."
    )


def _read_pair(path: Path) -> tuple[bytes, bytes] | None:
    """(config bytes, weights bytes) from one directory, or ``None`` if a save moved it."""
    try:
        dir_fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        if _save_in_progress(path):
            return None
        raise FileNotFoundError(f"adapter directory {str(path)!r} does not exist.") from None
    except NotADirectoryError:
        raise FileNotFoundError(
            f"adapter directory {str(path)!r} is a file; give the directory holding "
            f"{CONFIG_NAME} and {WEIGHTS_NAME}."
        ) from None
    fds: list[int] = []
    try:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            try:
                fds.append(os.open(name, os.O_RDONLY, dir_fd=dir_fd))
            except FileNotFoundError:
                if not _same_directory(path, dir_fd):
                    return None  # a save swapped the directory after we opened it
                raise FileNotFoundError(
                    f"{str(path / name)!r} is missing: an adapter directory needs {CONFIG_NAME} "
                    f"and {WEIGHTS_NAME} (as written by save_adapter or PEFT's "
                    "save_pretrained)."
                ) from None
        blobs = []
        for fd in fds:
            with os.fdopen(os.dup(fd), "rb") as f:
                blobs.append(f.read())
        return blobs[0], blobs[1]
    finally:
        for fd in (*fds, dir_fd):
            os.close(fd)


def _same_directory(path: Path, dir_fd: int) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(dir_fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _save_in_progress(path: Path) -> bool:
    """Whether a save's temporary entry (``.<name>.*``) sits next to ``path``."""
    try:
        with os.scandir(path.parent) as entries:
            return any(e.name.startswith(f".{path.name}.") for e in entries)
    except OSError:
        return False


def _parse(path: Path, config_bytes: bytes, weights_bytes: bytes) -> tuple[dict, dict]:
    try:
        data = json.loads(config_bytes)
    except ValueError as err:
        raise ValueError(
            f"{str(path / CONFIG_NAME)!r} is not valid JSON ({err}); re-save the adapter."
        ) from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{str(path / CONFIG_NAME)!r} holds a JSON {type(data).__name__}, not an object; "
            "re-save the adapter."
        )
    try:
        tensors = load_safetensors(weights_bytes)
    except (SafetensorError, ValueError) as err:
        raise ValueError(
            f"{str(path / WEIGHTS_NAME)!r} is corrupt or truncated ({err}); re-save or "
            "re-download the adapter."
        ) from err
    return data, tensors


def check_finite(tensors: dict[str, Tensor], where: str | Path) -> None:
    """Raise ``ValueError`` naming the first tensor with NaN or inf values (and how many).

    A diverged run saves such weights without complaint, and the adapter then produces NaN
    or garbage outputs; refusing them at load time names the cause.
    """
    counts = ((key, _non_finite(t)) for key, t in tensors.items())
    bad = [(key, n) for key, n in counts if n]
    if bad:
        key, count = bad[0]
        others = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise ValueError(
            f"adapter tensor {key!r} in {str(where)!r} has {count} NaN/inf value(s){others}; "
            "the run that saved it probably diverged: re-train or re-save the adapter, or pass "
            "allow_non_finite=True to load it anyway."
        )


def _non_finite(t: Tensor) -> int:
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    if t.element_size() == 1:  # float8: torch has no isfinite for some of them
        t = t.float()
    return int(t.numel() - torch.isfinite(t).sum())


def read_adapter(
    path: str | Path, *, allow_non_finite: bool = False
) -> tuple[AdapterConfig, dict[str, Tensor]]:
    """Read and check an adapter directory; errors name the file and the fix.

    The config and the weights come from one save (see :func:`read_adapter_files`); unknown
    config fields warn, misspelled ones raise (see ``config_from_dict``); NaN/inf weights
    raise unless ``allow_non_finite``.
    """
    path = Path(path)
    data, tensors = read_adapter_files(path)
    config = config_from_dict(data, where=str(path / CONFIG_NAME))
    if not allow_non_finite:
        check_finite(tensors, path / WEIGHTS_NAME)
    return config, tensors


def load_adapter(
    model: nn.Module,
    path: str | Path,
    name: str = "default",
    *,
    allow_non_finite: bool = False,
) -> nn.Module:
    """Inject adapter ``name`` from a PEFT-layout directory and fill in its weights.

    Missing, unexpected and wrongly shaped tensors raise an error naming them, and so do
    NaN/inf weights unless ``allow_non_finite``; on error the half-built adapter is removed
    again.
    """
    config, tensors = read_adapter(path, allow_non_finite=allow_non_finite)
    tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
    inject(model, config, name=name)
    try:
        _copy_into(model, name, config, tensors, Path(path))
    except Exception:
        delete_adapter(model, name)
        raise
    return model


def _copy_into(
    model: nn.Module, name: str, config: AdapterConfig, tensors: dict[str, Tensor], path: Path
) -> None:
    targets: dict[str, Tensor] = {}
    for layer_name, layer in adapter_layers(model):
        if name in layer.adapters:
            for local, param in layer.adapters[name].named_parameters(remove_duplicate=False):
                targets[f"{layer_name}.{local}"] = param
    for module_name in resolve_modules_to_save(model, config.modules_to_save):
        for local, tensor in model.get_submodule(module_name).state_dict(keep_vars=True).items():
            targets[f"{module_name}.{local}"] = tensor
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"adapter {str(path)!r} does not fit this model: missing tensors {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected tensors {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}. Load it into the base model it was "
            "trained on, with the same target_modules."
        )
    for key, param in targets.items():
        if tuple(tensors[key].shape) != tuple(param.shape):
            raise ValueError(
                f"adapter tensor {key!r} in {str(path)!r} has shape {tuple(tensors[key].shape)} "
                f"but the model expects {tuple(param.shape)}; load it into the base model it "
                "was trained on."
            )
    with torch.no_grad():
        for key, param in targets.items():
            param.copy_(tensors[key].to(param.dtype))
