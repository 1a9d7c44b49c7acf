"""Save and load adapters in the Hugging Face PEFT layout.

A saved adapter is a directory with ``adapter_config.json`` and
``adapter_model.safetensors`` whose keys are ``base_model.model.<module path>.<tensor>``
(``lora_A.weight``, ``lora_B.weight``, ``lora_magnitude_vector``), exactly as PEFT writes
them, so LoRA/DoRA/rsLoRA adapters move between this library, PEFT and PEFT-aware servers.
Methods PEFT does not ship use the same layout with their own ``peft_type``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from core.atomic import atomic_directory

from .api import adapter_layers, adapter_names, delete_adapter, inject
from .config import AdapterConfig, LoraConfig, config_from_dict
from .targeting import is_hf_conv1d, resolve_modules_to_save

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def _config_of(model: nn.Module, name: str) -> AdapterConfig:
    for _, layer in adapter_layers(model):
        if name in layer.configs:
            return layer.configs[name]
    raise ValueError(f"no adapter named {name!r} to save; the model has {adapter_names(model)}.")


def adapter_state_dict(model: nn.Module, name: str = "default") -> tuple[dict[str, Tensor], dict]:
    """(PEFT-keyed tensors, adapter_config.json dict) of adapter ``name``, ready to write."""
    config = _config_of(model, name)
    tensors: dict[str, Tensor] = {}
    converted = False
    for layer_name, layer in adapter_layers(model):
        if name not in layer.adapters:
            continue
        state, notes = layer.adapters[name].portable_state(layer.base_layer)
        converted |= bool(notes.get("converted_svd_init"))
        for local, tensor in state.items():
            tensors[f"{PEFT_PREFIX}{layer_name}.{local}"] = (
                tensor.detach().cpu().clone().contiguous()
            )
    for module_name in resolve_modules_to_save(model, config.modules_to_save):
        for local, tensor in model.get_submodule(module_name).state_dict().items():
            key = f"{PEFT_PREFIX}{module_name}.{local}"
            tensors[key] = tensor.detach().cpu().clone().contiguous()
    json_dict = config.to_json_dict()
    if "fan_in_fan_out" in json_dict:  # PEFT's flag for GPT-2 style Conv1D (weight is in x out)
        json_dict["fan_in_fan_out"] = any(
            is_hf_conv1d(layer.base_layer) for _, layer in adapter_layers(model)
        )
    if converted and isinstance(config, LoraConfig):
        json_dict = _as_plain_lora(json_dict, config)
    return tensors, json_dict


def _as_plain_lora(json_dict: dict, config: LoraConfig) -> dict:
    """Config of a PiSSA/CorDA adapter re-expressed as a rank-2r plain LoRA on W0."""
    factor = 2**0.5 if config.use_rslora else 2.0
    json_dict = dict(json_dict)
    json_dict["r"] = 2 * config.r
    json_dict["lora_alpha"] = config.alpha * factor
    json_dict["rank_pattern"] = {k: 2 * v for k, v in config.rank_pattern.items()}
    json_dict["alpha_pattern"] = {k: v * factor for k, v in config.alpha_pattern.items()}
    json_dict["init_lora_weights"] = True
    json_dict["corda_config"] = None
    return json_dict


def save_adapter(model: nn.Module, path: str | Path, name: str = "default") -> Path:
    """Write adapter ``name`` to directory ``path`` atomically (all files appear at once).

    PiSSA/CorDA adapters are written as plain LoRA deltas against the original W0, so they
    load onto an unmodified base model here and in PEFT.
    """
    tensors, json_dict = adapter_state_dict(model, name)
    return write_adapter_dir(path, tensors, json_dict)


def write_adapter_dir(path: str | Path, tensors: dict[str, Tensor], json_dict: dict) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into ``path`` atomically."""
    with atomic_directory(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(json_dict, indent=2, sort_keys=True))
    return Path(path)


def read_adapter(path: str | Path) -> tuple[AdapterConfig, dict[str, Tensor]]:
    """Read and check an adapter directory; errors name the file and the fix."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory {str(path)!r} does not exist.")
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(
                f"{str(f)!r} is missing: an adapter directory needs {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} (as written by save_adapter or PEFT's save_pretrained)."
            )
    try:
        config = config_from_dict(json.loads(config_file.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{str(config_file)!r} is not valid JSON ({err}); re-save the adapter."
        ) from err
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{str(weights_file)!r} is corrupt or truncated ({err}); re-save or re-download "
            "the adapter."
        ) from err
    return config, tensors


def load_adapter(model: nn.Module, path: str | Path, name: str = "default") -> nn.Module:
    """Inject adapter ``name`` from a PEFT-layout directory and fill in its weights.

    Missing, unexpected and wrongly shaped tensors raise an error naming them; on error the
    half-built adapter is removed again.
    """
    config, tensors = read_adapter(path)
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
