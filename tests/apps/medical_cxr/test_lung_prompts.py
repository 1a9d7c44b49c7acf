"""Box prompts from lung-field masks: components, tight boxes, per-prompt targets, jitter and
filled boxes, each against a hand-made mask or a brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.medical_cxr.lung_prompts import (
    fill_boxes,
    jitter_boxes,
    lung_components,
    mask_box,
    prompt_targets,
)
from apps.medical_cxr.phantom import render_phantom


def phantom_masks(n: int = 3, size: int = 32) -> torch.Tensor:
    """Lung-field masks ``(n, size, size)`` of normal phantoms."""
    return torch.from_numpy(np.stack([render_phantom({}, f"seg{i}", size)[1] for i in range(n)]))


def test_lung_components_and_boxes():
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:8, 7:11] = 1  # image-right lung, larger
    mask[3:6, 1:4] = 1  # image-left lung
    mask[0, 0] = 1  # a speck: a third component, dropped
    left, right = lung_components(mask)
    assert mask_box(left) == (1, 3, 3, 5) and mask_box(right) == (7, 2, 10, 7)
    assert left.sum() == 9 and right.sum() == 24
    # One component: split at the vertical midline.
    one = np.zeros((6, 8), dtype=np.uint8)
    one[1:5, 2:7] = 1
    halves = lung_components(one)
    assert mask_box(halves[0]) == (2, 1, 3, 4) and mask_box(halves[1]) == (4, 1, 6, 4)
    assert mask_box(np.zeros((4, 4))) == (0, 0, 0, 0)


def test_prompt_targets_cover_the_lung_field():
    masks = phantom_masks(3)
    targets, boxes = prompt_targets(masks, "lung_boxes")
    assert targets.shape == (3, 2, 32, 32) and boxes.shape == (3, 2, 4)
    assert torch.equal(targets.amax(1).to(torch.uint8), masks)
    assert (targets.sum(1) <= 1).all()  # the two lungs do not overlap
    assert (boxes[:, 0, 2] < boxes[:, 1, 0]).all()  # image-left lung first
    whole, box = prompt_targets(masks, "box")
    assert whole.shape == (3, 1, 32, 32) and box.shape == (3, 1, 4)
    assert box[0, 0].tolist() == [
        min(boxes[0, :, 0].tolist()),
        min(boxes[0, :, 1].tolist()),
        max(boxes[0, :, 2].tolist()),
        max(boxes[0, :, 3].tolist()),
    ]
    none, no_box = prompt_targets(masks, "none")
    assert no_box is None and none.shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match=r"model\.prompt"):
        prompt_targets(masks, "points")


def test_fill_boxes_matches_brute_force():
    boxes = torch.tensor(
        [[[1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 6.0, 1.0]], [[0, 0, 7, 7], [0, 0, 0, 0]]]
    )
    filled = fill_boxes(boxes, 8).numpy()
    expected = np.zeros((2, 8, 8), dtype=np.uint8)
    for b in range(2):
        for x0, y0, x1, y1 in boxes[b].int().tolist():
            expected[b, y0 : y1 + 1, x0 : x1 + 1] = 1
    assert np.array_equal(filled, expected)


def test_jitter_boxes_only_widens_within_the_image():
    boxes = torch.tensor([[[4.0, 5.0, 20.0, 25.0], [0.0, 1.0, 31.0, 30.0]]])
    assert torch.equal(jitter_boxes(boxes, 32, 0.0), boxes)
    gen = torch.Generator().manual_seed(0)
    out = jitter_boxes(boxes, 32, 0.1, generator=gen)
    assert (out[..., :2] <= boxes[..., :2]).all() and (out[..., 2:] >= boxes[..., 2:]).all()
    assert (out >= 0).all() and (out <= 31).all()
    assert ((boxes - out).abs() <= 0.1 * 32 + 1e-6).all() and not torch.equal(out, boxes)
