"""Box prompts for lung-field segmentation, from the lung-field masks (MedSAM style).

``"lung_boxes"``: one box per lung, the tight box of each of the mask's two largest connected
components (image-left lung first), since a single box around the field would also cover
the mediastinum; ``"box"``: one box around the whole field; ``"none"``: no prompt. Boxes are
``(x0, y0, x1, y1)`` in pixels, max coordinates inclusive (SAM's ``batched_mask_to_box``
convention). Training widens them at random (:func:`jitter_boxes`, MedSAM's perturbation);
:func:`fill_boxes` turns them into masks (the trivial baseline the prompts give for free).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

PROMPTS = ("lung_boxes", "box", "none")


def lung_components(mask: np.ndarray) -> list[np.ndarray]:
    """The two lung fields of a binary mask ``(H, W)``, image-left first.

    The two largest 8-connected components; a mask with fewer than two is split at the
    image's vertical midline instead (either half may then be empty).
    """
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), dtype=int))
    if count >= 2:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.argsort(-sizes, kind="stable")[:2] + 1
        parts = [labels == k for k in keep]
        parts.sort(key=lambda p: float(np.nonzero(p)[1].mean()))
        return parts
    field = mask > 0
    half = mask.shape[1] // 2
    left, right = field.copy(), field.copy()
    left[:, half:] = False
    right[:, :half] = False
    return [left, right]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(x0, y0, x1, y1)`` of a binary mask, max coordinates inclusive (SAM's
    ``batched_mask_to_box`` convention); ``(0, 0, 0, 0)`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def prompt_targets(masks: Tensor, prompt: str) -> tuple[Tensor, Tensor | None]:
    """Per-prompt targets ``(B, K, H, W)`` float and boxes ``(B, K, 4)`` (mask pixels, max
    inclusive) for a batch of lung-field masks ``(B, H, W)``; boxes are ``None`` for
    ``prompt="none"`` (one target: the whole field)."""
    if prompt not in PROMPTS:
        raise ValueError(f"model.prompt={prompt!r} must be one of {PROMPTS}.")
    field = (masks > 0).cpu().numpy()
    if prompt == "none":
        return torch.from_numpy(field[:, None].astype(np.float32)), None
    targets, boxes = [], []
    for m in field:
        parts = lung_components(m) if prompt == "lung_boxes" else [m]
        targets.append(np.stack(parts))
        boxes.append([mask_box(p) for p in parts])
    return (
        torch.from_numpy(np.stack(targets).astype(np.float32)),
        torch.tensor(boxes, dtype=torch.float32),
    )


def jitter_boxes(boxes: Tensor, size: int, fraction: float, generator: Any = None) -> Tensor:
    """Widen each box side outwards by a uniform random 0..``fraction * size`` pixels (MedSAM's
    training perturbation), clipped to the image ``[0, size - 1]``."""
    if fraction <= 0:
        return boxes
    shift = torch.rand(boxes.shape, generator=generator) * fraction * size
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    return (boxes + sign * shift.to(boxes)).clamp(0, size - 1)


def fill_boxes(boxes: Tensor, size: int) -> Tensor:
    """The union of the boxes ``(B, K, 4)`` (pixels, max inclusive) filled, ``(B, size, size)``."""
    coords = torch.arange(size, dtype=boxes.dtype, device=boxes.device)
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    inside_x = (coords >= x0.round()) & (coords <= x1.round())  # (B, K, W)
    inside_y = (coords >= y0.round()) & (coords <= y1.round())  # (B, K, H)
    return (inside_y[..., :, None] & inside_x[..., None, :]).any(dim=1).to(torch.uint8)
