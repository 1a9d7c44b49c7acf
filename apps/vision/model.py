"""The image-text classifier that every robust fine-tuning method shares, and its builder.

- :class:`ImageTextClassifier`: image encoder -> projection -> L2 norm -> linear head whose
  initial weights are ``logit_scale * zero_shot_weights``; it also carries the text side
  (prompt features + text projection) for contrastive fine-tuning (FLYP).
- :func:`build_classifier`: the zero-shot classifier of a named backbone: the embedded
  default (EfficientNet-lite0 + MiniLM, LiT-aligned here and cached), an open_clip model or
  an image-only timm model, each from local weights (``model.pretrained``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.towers import build_timm, efficientnet_lite0

from .alignment import AlignmentConfig, lit_alignment, prompt_features_for
from .prompts import DEFAULT_TEMPLATES, DIGIT_NAMES, check_templates, prompts
from .towers import build_open_clip

__all__ = ["ImageTextClassifier", "build_classifier"]


class ImageTextClassifier(nn.Module):
    """``head(normalize(image_proj(image_encoder(x))))`` plus the text side for FLYP.

    Args:
        image_encoder: Pixels (or precomputed trunk features) -> feature vectors.
        image_proj: Image features -> joint embedding (``nn.Identity`` for open_clip).
        text_proj: Frozen text-tower features -> joint embedding (``None``: image-only).
        prompt_features: (C, T, Dt) text-tower features of every class x template prompt,
            kept as a buffer (the text tower itself stays frozen and outside the model);
            ``None`` for an image-only backbone (then ``num_classes`` and ``dim`` are needed).
        logit_scale: Temperature of the joint space (CLIP's exp(t)).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        image_proj: nn.Module,
        text_proj: nn.Module | None,
        prompt_features: Tensor | None,
        logit_scale: float,
        num_classes: int | None = None,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.image_proj = image_proj
        self.text_proj = text_proj
        if prompt_features is None:
            # An image-only backbone (timm): no text side, the head starts random.
            if num_classes is None or dim is None:
                raise ValueError("without prompt_features, give num_classes and dim.")
            self.prompt_features = None
            self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
            self.head = nn.Linear(dim, num_classes)
            return
        self.register_buffer("prompt_features", prompt_features.float().clone())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        with torch.no_grad():
            dim = self.class_text_embeddings().shape[-1]
        self.head = nn.Linear(dim, prompt_features.shape[0])
        self.reset_head_to_zero_shot()

    @property
    def num_classes(self) -> int:
        return int(self.head.out_features)

    def embed_image(self, x: Tensor) -> Tensor:
        """Normalized joint-space image embeddings."""
        return F.normalize(self.image_proj(self.image_encoder(x)), dim=-1)

    def class_text_embeddings(self) -> Tensor:
        """(C, T, D) normalized joint-space embeddings of every prompt."""
        return F.normalize(self.text_proj(self.prompt_features), dim=-1)

    def zero_shot_weights(self) -> Tensor:
        """(C, D): templates averaged per class, normalized (CLIP's zero-shot classifier)."""
        return F.normalize(self.class_text_embeddings().mean(1), dim=-1)

    @torch.no_grad()
    def reset_head_to_zero_shot(self) -> None:
        """Head weight = logit_scale * zero-shot weights, bias = 0."""
        self.head.weight.copy_(self.logit_scale * self.zero_shot_weights())
        self.head.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed_image(x))


def build_classifier(
    backbone: str = "embedded",
    pretrained: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    split: int = 6,
    alignment: AlignmentConfig | None = None,
    cache_dir: str | Path | None = None,
    text_model_path: str | Path | None = None,
) -> ImageTextClassifier:
    """The zero-shot classifier of a backbone.

    Args:
        backbone: ``"embedded"`` (EfficientNet-lite0 + MiniLM, LiT-aligned and cached),
            ``"open_clip:<arch>"`` (a CLIP model) or ``"timm:<name>"`` (an image-only model:
            head from a linear probe or random, no FLYP).
        pretrained: Local weight file of an open_clip / timm backbone (``None``: random
            initialisation). The embedded backbone's weights ship in packages, so it takes
            none.
        class_names / templates: Classes in label order and prompt templates (default: the
            ten digit names and eight digit prompts).
        split: Embedded backbone: EfficientNet block where the frozen trunk ends.
        alignment: Embedded backbone: the LiT alignment settings (:class:`AlignmentConfig`).
        cache_dir: Embedded backbone: where the LiT heads are cached (``core.cache``).
        text_model_path: Embedded backbone: local sentence-transformer directory (default:
            the packaged MiniLM).
    """
    names = list(class_names or DIGIT_NAMES)
    temps = check_templates(templates or DEFAULT_TEMPLATES)
    kind, _, name = backbone.partition(":")
    if kind == "embedded":
        if pretrained is not None:
            raise ValueError(
                f"model.pretrained={str(pretrained)!r} is for open_clip / timm backbones; the "
                "embedded backbone's weights ship in packages: leave model.pretrained unset."
            )
        align_cfg = alignment or AlignmentConfig()
        lit = lit_alignment(align_cfg, cache_dir=cache_dir, text_model_path=text_model_path)
        feats = lit["prompt_features"]
        if names != DIGIT_NAMES or temps != DEFAULT_TEMPLATES:
            feats = prompt_features_for(names, temps, text_model_path)
        image_proj = nn.Linear(lit["image_proj"]["weight"].shape[1], align_cfg.embed_dim)
        image_proj.load_state_dict(lit["image_proj"])
        text_proj = nn.Linear(feats.shape[-1], align_cfg.embed_dim)
        text_proj.load_state_dict(lit["text_proj"])
        encoder = efficientnet_lite0(split=split)
        return ImageTextClassifier(encoder, image_proj, text_proj, feats, lit["logit_scale"])
    if kind == "open_clip" and name:
        import open_clip

        clip = build_open_clip(name, pretrained).eval()
        tokenizer = open_clip.get_tokenizer(name)
        with torch.no_grad():
            feats = clip.encode_text(tokenizer(prompts(names, temps))).float()
        feats = F.normalize(feats, dim=-1).view(len(names), len(temps), -1)
        scale = float(clip.logit_scale.exp())
        return ImageTextClassifier(clip.visual, nn.Identity(), nn.Identity(), feats, scale)
    if kind == "timm" and name:
        encoder = build_timm(name, pretrained, num_classes=0)
        dim = int(encoder.num_features)
        return ImageTextClassifier(encoder, nn.Identity(), None, None, 1.0, len(names), dim)
    raise ValueError(
        f"model.backbone={backbone!r} is not 'embedded', 'open_clip:<architecture>' or "
        "'timm:<model name>'."
    )
