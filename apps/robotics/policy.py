"""The vision-language-action policy: :class:`VisionLanguageEncoder` + one action head.

Training batches (from the datamodule) hold *normalised* values::

    {"image": (B, 3, H, W) uint8/float pixels or (B, C, h, w) cached trunk features,
     "proprio": (B, 2) normalised to [-1, 1], "instruction": list[str] of length B,
     "action": (B, chunk, A) normalised to [-1, 1], "action_pad": (B, chunk) bool, True = pad}

and :meth:`VLAPolicy.loss` returns the head's scalar loss. Evaluation calls the policy
protocol :meth:`VLAPolicy.predict_chunk` with raw env observations and gets env-unit actions;
the :class:`Normalizer` it was given (``apps.robotics.normalize``, built from the dataset's
``meta/stats.json``) maps proprio in and actions out.

What trains is chosen by ``finetune``:

- ``"adapter"``: an adapter from ``core.adapters`` on the image tower's ``top`` (``"lora"``,
  ``"dora"``, ``"ssf"``, or any ``AdapterConfig``); every pretrained weight is frozen, and
  the new layers (instruction pooling, FiLM, keypoints, MLP, action head) train in full as
  the adapter's ``modules_to_save``, so ``core.adapters.save_adapter(policy, dir)`` writes
  exactly what was trained (the text tower is never part of it).
- ``"top"``: the top block(s) train in full (the prototype's setting), plus the new layers.
- ``"frozen"``: only the new layers train.

The trunk is frozen in every mode (``SplitEncoder``), which is what makes caching trunk
features valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from apps.robotics.model import VisionLanguageEncoder, count_parameters
from apps.robotics.policies import ActionHead, make_head

FINETUNE_MODES = ("adapter", "top", "frozen")
#: Adapter methods with a ready configuration (:func:`adapter_config`).
ADAPTER_METHODS = ("lora", "dora", "ssf", "bottleneck")
#: The policy's layers that are new (not pretrained): trained in full in every mode.
NEW_MODULES = ("encoder.text_pool", "encoder.film", "encoder.keypoints", "encoder.mlp", "head")
#: Where the image tower's top sits in the policy's module names.
TOP_PREFIX = "encoder.image.top."
BATCH_KEYS = ("image", "proprio", "instruction", "action")


class NormalizerLike(Protocol):
    """What the policy needs of ``apps.robotics.normalize.Normalizer``."""

    def normalize_state(self, state: Any) -> Any: ...

    def normalize_action(self, action: Any) -> Any: ...

    def denormalize_action(self, action: Any) -> Any: ...


# ----------------------------------------------------------------------------- adapters
def top_adapter_targets(top: nn.Module, method: str, prefix: str = "") -> list[str]:
    """Full names (``prefix`` + name) of the layers in ``top`` that ``method`` adapts.

    - ``lora`` / ``dora``: the ungrouped (1x1 pointwise) convolutions ``conv_pw`` and
      ``conv_pwl`` of every inverted-residual block; the depthwise convs are grouped, which
      LoRA cannot factorise.
    - ``ssf``: every convolution (pointwise and depthwise), as in ``apps.vision``.
    - ``bottleneck``: the layers ``core.adapters``' bottleneck unit supports. It adapts
      linear layers only (it works on the last dimension), and this top is all
      convolutions, so today this raises ``ValueError`` saying so.
    """
    from core.adapters import get_method, logical_modules

    # Logical names: a layer already adapted is listed under its own name, not base_layer.
    modules = logical_modules(top)
    convs = {n: m for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    if method in ("lora", "dora"):
        names = [n for n, m in convs.items() if m.groups == 1]
    elif method == "ssf":
        names = list(convs)
    elif method == "bottleneck":
        supports = get_method("bottleneck").supports
        names = [n for n, m in modules.items() if n.endswith("conv_pwl") and supports(m)]
        if not names:
            raise ValueError(
                "bottleneck adapters cannot attach to the image tower's top: "
                "core.adapters' bottleneck unit adapts linear layers only (it acts on the "
                "last dimension) and the EfficientNet top is all convolutions. Use lora, "
                "dora or ssf, or teach core/adapters/bottleneck.py to run on the channel "
                "dimension of Conv2d outputs."
            )
    else:
        raise ValueError(
            f"no adapter targets for method {method!r}; choose one of {ADAPTER_METHODS}"
        )
    if not names:
        raise ValueError(
            f"the image tower's top has no layer that {method} can adapt (with "
            "model.top_blocks=0 there is no top: set model.adapter to null)"
        )
    return [f"{prefix}{n}" for n in names]


def adapter_config(method: str | Any, top: nn.Module, prefix: str = "") -> Any:
    """The ``core.adapters`` config of ``method`` on the layers of ``top``.

    ``method``: a name of :data:`ADAPTER_METHODS` (LoRA and DoRA with r = 8, alpha = 16;
    SSF from the identity; a 16-wide bottleneck), or an ``AdapterConfig``, returned as a copy
    whose unset ``target_modules`` become :func:`top_adapter_targets` and whose unset
    ``modules_to_save`` become :data:`NEW_MODULES`.
    """
    import dataclasses

    from core.adapters import AdapterConfig, BottleneckConfig, LoraConfig, SsfConfig

    if isinstance(method, AdapterConfig):
        name = "dora" if getattr(method, "use_dora", False) else method.method
        changes: dict[str, Any] = {}
        if method.target_modules is None:
            changes["target_modules"] = top_adapter_targets(top, name, prefix)
        if method.modules_to_save is None:
            changes["modules_to_save"] = list(NEW_MODULES)
        return dataclasses.replace(method, **changes)
    if method not in ADAPTER_METHODS:
        raise ValueError(
            f"unknown adapter {method!r}; choose one of {ADAPTER_METHODS} or pass an AdapterConfig"
        )
    common = {
        "target_modules": top_adapter_targets(top, method, prefix),
        "modules_to_save": list(NEW_MODULES),
    }
    if method == "lora":
        return LoraConfig(r=8, alpha=16.0, **common)
    if method == "dora":
        return LoraConfig(r=8, alpha=16.0, use_dora=True, **common)
    if method == "ssf":
        return SsfConfig(**common)
    return BottleneckConfig(bottleneck_dim=16, **common)


# ----------------------------------------------------------------------------- the policy
class VLAPolicy(nn.Module):
    """Encoder + action head, trained on normalised batches, queried in env units.

    Args:
        head: A name of ``POLICY_HEADS`` (``"tokens"``, ``"l1_chunk"``, ``"diffusion"``) or a
            ready :class:`ActionHead`.
        chunk_size: Actions per predicted chunk.
        action_dim: Action dimensions.
        normalizer: Maps proprio in and actions out (needed by :meth:`predict_chunk`).
        finetune: ``"adapter"``, ``"top"`` or ``"frozen"`` (see the module docstring).
        adapter: With ``finetune="adapter"``: ``"lora"``, ``"dora"``, ``"ssf"``,
            ``"bottleneck"`` or an ``AdapterConfig`` (its unset targets become
            :meth:`adapter_targets`).
        head_options: Keyword arguments of the head.
        encoder: A ready encoder; otherwise one is built from ``encoder_options``
            (:class:`VisionLanguageEncoder`'s arguments: ``pretrained``, ``text_tower``, ...).
    """

    def __init__(
        self,
        head: str | ActionHead = "l1_chunk",
        chunk_size: int = 8,
        action_dim: int = 2,
        normalizer: NormalizerLike | None = None,
        finetune: str = "adapter",
        adapter: str | Any = "lora",
        head_options: dict[str, Any] | None = None,
        encoder: VisionLanguageEncoder | None = None,
        **encoder_options: Any,
    ) -> None:
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune={finetune!r} must be one of {FINETUNE_MODES}")
        self.encoder = encoder if encoder is not None else VisionLanguageEncoder(**encoder_options)
        if isinstance(head, ActionHead):
            if (head.feature_dim, head.chunk_size, head.action_dim) != (
                self.encoder.feature_dim,
                chunk_size,
                action_dim,
            ):
                raise ValueError(
                    "the head's (feature_dim, chunk_size, action_dim) = "
                    f"{(head.feature_dim, head.chunk_size, head.action_dim)} do not match the "
                    f"policy's {(self.encoder.feature_dim, chunk_size, action_dim)}"
                )
            self.head = head
        else:
            self.head = make_head(
                head, self.encoder.feature_dim, action_dim, chunk_size, **(head_options or {})
            )
        self.chunk_size, self.action_dim = chunk_size, action_dim
        self.normalizer = normalizer
        self.finetune = finetune
        self.adapter = adapter if finetune == "adapter" else None
        self.config = {
            "head": self.head.name,
            "chunk_size": chunk_size,
            "action_dim": action_dim,
            "finetune": finetune,
            "adapter": _adapter_label(self.adapter),
            "head_options": dict(head_options or {}),
            "encoder": dict(self.encoder.config),
        }
        self._set_trainable()

    # ------------------------------------------------------------------ what trains
    def adapter_targets(self, method: str) -> list[str]:
        """Module names (in this policy) inside the image tower's ``top`` that ``method``
        adapts (see :func:`top_adapter_targets`)."""
        return top_adapter_targets(self.encoder.image.top, method, prefix=TOP_PREFIX)

    def _set_trainable(self) -> None:
        from core.adapters import inject

        self.encoder.image.trunk.requires_grad_(False)
        if self.finetune == "adapter":
            config = adapter_config(self.adapter, self.encoder.image.top, TOP_PREFIX)
            inject(self, config)  # freezes every base weight, then unfreezes NEW_MODULES
        else:
            self.encoder.image.top.requires_grad_(self.finetune == "top")
            for name in NEW_MODULES:
                self.get_submodule(name).requires_grad_(True)

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: ``trainable``, ``adapter``, ``new`` (pooling + FiLM + keypoints +
        MLP + head), ``top`` (trainable top weights), ``frozen`` (text tower not included)."""
        from core.adapters import adapter_layers

        adapter = sum(
            count_parameters(unit)
            for _, layer in adapter_layers(self)
            for unit in layer.adapters.values()
        )
        new = sum(count_parameters(self.get_submodule(n)) for n in NEW_MODULES)
        trainable = count_parameters(self)
        return {
            "trainable": trainable,
            "adapter": adapter,
            "new": new,
            "top": trainable - adapter - new,
            "frozen": count_parameters(self, trainable_only=False) - trainable,
        }

    # ------------------------------------------------------------------ training
    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    def features(
        self, image: Tensor, proprio: Tensor, instructions: Sequence[str] | Tensor
    ) -> Tensor:
        """Encoder features ``(B, F)`` (normalised proprio)."""
        return self.encoder(image, proprio, instructions)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        """The head's scalar loss on a normalised training batch (see the module docstring)."""
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(
                f"training batch lacks {missing} (it has {sorted(batch)}); the datamodule must "
                f"give {list(BATCH_KEYS)} and optionally 'action_pad'"
            )
        device = self.device
        feats = self.features(
            batch["image"].to(device), batch["proprio"].to(device), batch["instruction"]
        )
        pad = batch.get("action_pad")
        return self.head.loss(
            feats, batch["action"].to(device, feats.dtype), None if pad is None else pad.to(device)
        )

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Same as :meth:`loss`."""
        return self.loss(batch)

    # ------------------------------------------------------------------ the policy protocol
    @torch.no_grad()
    def predict_chunk(
        self, images: np.ndarray, proprio: np.ndarray, instructions: Sequence[str]
    ) -> np.ndarray:
        """Action chunks in env units for a batch of observations.

        Args:
            images: ``(N, H, W, 3)`` uint8 camera images.
            proprio: ``(N, proprio_dim)`` proprioception in env units (pusher x, y).
            instructions: ``N`` instruction strings (``""`` = blank).

        Returns:
            ``(N, chunk_size, action_dim)`` float32 actions in env units.
        """
        if self.normalizer is None:
            raise ValueError(
                "predict_chunk needs the dataset's Normalizer (apps.robotics.normalize) to map "
                "proprio in and actions out; pass normalizer= or set policy.normalizer"
            )
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be (N, H, W, 3) uint8; got shape {images.shape}, dtype {images.dtype}"
            )
        n = images.shape[0]
        proprio = np.asarray(proprio, dtype=np.float32)
        if proprio.shape != (n, self.encoder.proprio_dim):
            raise ValueError(
                f"proprio must be ({n}, {self.encoder.proprio_dim}) in env units; got shape "
                f"{proprio.shape}"
            )
        if isinstance(instructions, str) or len(instructions) != n:
            raise ValueError(f"instructions must be a list of {n} strings, one per image")
        was_training = self.training
        self.eval()
        try:
            device = self.device
            pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
            state = np.asarray(self.normalizer.normalize_state(proprio), dtype=np.float32)
            feats = self.features(pixels, torch.from_numpy(state).to(device), list(instructions))
            chunks = self.head.predict(feats).float().cpu().numpy()
        finally:
            self.train(was_training)
        actions = np.asarray(self.normalizer.denormalize_action(chunks), dtype=np.float32)
        return actions.reshape(n, self.chunk_size, self.action_dim)


def _adapter_label(adapter: Any) -> Any:
    """A plain-data description of ``adapter`` for the policy's config."""
    if adapter is None or isinstance(adapter, str):
        return adapter
    to_json = getattr(adapter, "to_json_dict", None)
    return to_json() if callable(to_json) else repr(adapter)


__all__ = [
    "ADAPTER_METHODS",
    "FINETUNE_MODES",
    "NEW_MODULES",
    "NormalizerLike",
    "VLAPolicy",
    "adapter_config",
    "top_adapter_targets",
]
