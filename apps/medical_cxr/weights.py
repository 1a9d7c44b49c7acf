"""Local weights of the chest X-ray networks, read from files; nothing is downloaded.

One spelling, ``pretrained``, for every kind of local weights (see docs/medical_cxr.md):

* ``model.pretrained``: the whole network, a Lightning checkpoint (``.ckpt``) of this app's
  module of the same task and architecture (a trained report generator to fine-tune or
  preference-tune; a local SAM checkpoint for segmentation);
* ``model.encoder_pretrained``: the image encoder's backbone alone, a state-dict file
  (``.pth``/``.pt``/``.safetensors``), read by :func:`load_state`;
* ``model.decoder_pretrained``: the text decoder alone, a ``save_pretrained`` causal-LM
  folder (read by :func:`apps.medical_cxr.model.build_decoder`).

Checkpoints written before these names existed keep working as ``model.pretrained``:
their architecture options are read under their old names (:data:`LEGACY_NAMES`) and
their tokenizer under its old key (:func:`core.tokenizers.load_tokenizer_state`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.towers import load_checkpoint_file

#: Old hyperparameter names -> today's (checkpoints written before ``pretrained``).
LEGACY_NAMES = {"decoder_path": "decoder_pretrained", "encoder_checkpoint": "encoder_pretrained"}


def read_checkpoint(path: str | Path, what: str = "model.pretrained") -> dict[str, Any]:
    """A Lightning checkpoint as a dict (tensors memory-mapped), or an error naming ``what``.

    Memory-mapping makes a second read of the same file (architecture, then weights) cheap.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{what} {str(file)!r} does not exist; train the model first (python -m "
            "apps.medical_cxr.train) and pass its checkpoints/last.ckpt."
        )
    try:
        try:
            ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old-style (not zip) file cannot be memory-mapped
            ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or not a torch file
        raise ValueError(
            f"{what} {str(file)!r} cannot be read as a checkpoint ({type(err).__name__}); give "
            "a complete .ckpt file written by a run."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{what} {str(file)!r} is not a Lightning checkpoint (no state_dict).")
    return ckpt


def architecture(checkpoint: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The hyperparameters among ``keys`` a checkpoint was trained with (old names mapped)."""
    saved = dict(checkpoint.get("hyper_parameters") or {})
    for old, new in LEGACY_NAMES.items():
        if old in saved:
            saved.setdefault(new, saved.pop(old))
    return {k: saved[k] for k in keys if k in saved}


def load_network_state(network: nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Load the ``model.*`` weights of a module checkpoint into ``network`` (same shapes).

    Raises:
        ValueError: The checkpoint holds adapter layers (merge them first), or its weights do
            not fit ``network`` (other architecture options).
    """
    state = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    if any(".base_layer." in k or "adapters." in k for k in state):
        raise ValueError(
            f"model.pretrained {str(path)!r} holds adapter layers; merge them first, or start "
            "from a checkpoint trained without an adapter."
        )
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"model.pretrained {str(path)!r} does not fit this network ({err}); use the same "
            "architecture options as the run that wrote it."
        ) from err


def load_state(module: nn.Module, path: str | Path, what: str, arch: str = "") -> None:
    """Load a local state-dict file (torch or safetensors, read by
    :func:`core.towers.load_checkpoint_file`) into ``module``.

    Every tensor of ``module`` must be in the file with its shape (a classifier the module
    lacks, e.g. ImageNet ``classifier.*``, may be left over): a partly matching file would
    silently leave the rest random.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file cannot be read, or does not fit ``module`` (the error names the
            file, the expected architecture ``arch`` and the fix).
    """
    file = Path(path)
    expected = (
        f"a state dict of the {arch} architecture"
        if arch
        else "a state dict of the same architecture"
    )
    fix = f"give {expected}, or leave {what} empty to start from random weights"
    if not file.is_file():
        raise FileNotFoundError(f"{what} {str(file)!r} does not exist; {fix}.")
    try:
        state = load_checkpoint_file(file)
    except Exception as err:  # truncated, corrupt, or not a state dict
        raise ValueError(
            f"{what} {str(file)!r} cannot be read as weights ({type(err).__name__}); {fix}."
        ) from err
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if len(missing) == len(own):
        raise ValueError(
            f"{what} {str(file)!r} matches none of the model's parameters (it has e.g. "
            f"{list(state)[:3]}, the model expects e.g. {list(own)[:3]}); {fix}."
        )
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        bad = ", ".join(
            [f"{k} missing" for k in missing[:3]]
            + [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3]]
        )
        raise ValueError(
            f"{what} {str(file)!r} does not fit the encoder ({len(missing)} tensors missing, "
            f"{len(wrong)} of another shape: {bad}); {fix}."
        )
    module.load_state_dict({k: state[k] for k in own})
