"""open_clip models for the vision app, weights from a local file (nothing is downloaded).

The timm and embedded towers shared with other apps live in :mod:`core.towers`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from core.towers import load_checkpoint_file

__all__ = ["build_open_clip"]


def build_open_clip(name: str, pretrained: str | Path | None = None) -> nn.Module:
    """An open_clip model by architecture name (``ViT-B-32``, ...), weights from a local file.

    ``open_clip.add_model_config(path)`` registers custom architectures first if needed.
    """
    import open_clip

    if name not in open_clip.list_models():
        known = ", ".join(open_clip.list_models()[:8])
        raise ValueError(
            f"open_clip has no architecture {name!r}; known: {known}, ... (register a JSON "
            "config with open_clip.add_model_config)."
        )
    model = open_clip.create_model(name, pretrained=None)
    if pretrained is not None:
        state = load_checkpoint_file(pretrained)
        model.load_state_dict(state, strict=True)
    return model
