"""Class names and prompt templates: the text a zero-shot head is built from.

A CLIP-style zero-shot classifier has one weight vector per class: the normalized mean over
prompt templates ("a photo of the digit {}.") of the normalized text embeddings of the
filled-in prompts (:func:`zero_shot_weights`, CLIP's recipe). The embedded default's classes
are the ten digit names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_TEMPLATES",
    "DIGIT_NAMES",
    "check_templates",
    "prompts",
    "zero_shot_weights",
]

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

#: Prompt templates of the embedded default (each must hold one ``{}`` for the class name).
DEFAULT_TEMPLATES = [
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a drawing of the number {}.",
    "an image of the numeral {}.",
    "a scan of a handwritten digit {}.",
    "a picture of a {}.",
    "the digit {} written by hand.",
]


def check_templates(templates: Sequence[str]) -> list[str]:
    """Each template must hold exactly one ``{}`` where the class name goes."""
    templates = list(templates)
    if not templates:
        raise ValueError("templates is empty; give at least one prompt such as 'a photo of {}.'")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(
                f"prompt template {t!r} must contain exactly one '{{}}' where the class name "
                "goes, e.g. 'a photo of the digit {}.'."
            )
    return templates


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every (class, template) prompt, class-major: ``[c0 t0, c0 t1, ..., c1 t0, ...]``."""
    templates = check_templates(templates)
    if not class_names:
        raise ValueError("class_names is empty.")
    return [t.format(c) for c in class_names for t in templates]


def zero_shot_weights(
    encode_text: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
) -> Tensor:
    """(C, D) classifier weights: per class, mean of normalized prompt embeddings, normalized."""
    texts = prompts(class_names, templates)
    emb = F.normalize(encode_text(texts).float(), dim=-1)
    emb = emb.view(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)
