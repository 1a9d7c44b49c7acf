"""Synthetic radiographs: deterministic, and each finding changes the image where it should."""

from __future__ import annotations

import numpy as np
import pytest

from apps.medical_cxr.labeler import CHEXPERT_LABELS
from apps.medical_cxr.phantom import render_phantom


def labels(**values: int) -> dict[str, int | None]:
    out: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS)
    for key, value in values.items():
        out[key.replace("_", " ")] = value
    return out


def test_deterministic_per_study_and_different_across_studies():
    a1, m1 = render_phantom(labels(), "CXR1", 64)
    a2, m2 = render_phantom(labels(), "CXR1", 64)
    b, _ = render_phantom(labels(), "CXR2", 64)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(a1, b)
    assert a1.dtype == np.float32 and a1.min() >= 0 and a1.max() <= 1
    assert m1.dtype == np.uint8 and set(np.unique(m1)) == {0, 1}
    # Lung fields are dark: the mean inside the mask is well below the body around it.
    assert a1[m1 == 1].mean() < 0.35
    assert a1[32:, 28:36].mean() > 0.35


def _heart_width(img: np.ndarray, size: int) -> int:
    row = img[int(0.68 * size)]
    return int((row > 0.6).sum())


def test_cardiomegaly_widens_the_heart_and_uncertain_is_in_between():
    size = 128
    widths = {
        value: np.mean(
            [
                _heart_width(render_phantom(labels(Cardiomegaly=value), f"s{i}", size)[0], size)
                for i in range(6)
            ]
        )
        for value in (0, -1, 1)
    }
    assert widths[0] < widths[-1] < widths[1]


def test_effusion_fills_the_lung_bases():
    size = 64
    base = np.mean([render_phantom(labels(), f"s{i}", size)[0][44:52].mean() for i in range(6)])
    fluid = np.mean(
        [
            render_phantom(labels(Pleural_Effusion=1), f"s{i}", size)[0][44:52].mean()
            for i in range(6)
        ]
    )
    assert fluid > base + 0.02


def test_every_finding_changes_the_image():
    normal, _ = render_phantom(labels(No_Finding=1), "same", 64)
    for name in CHEXPERT_LABELS[1:]:
        img, _ = render_phantom({**labels(), name: 1}, "same", 64)
        changed = np.abs(img - normal) > 0.05
        assert 15 <= changed.sum() < 0.3 * changed.size, name


def test_bad_input():
    with pytest.raises(KeyError, match=r"unknown label"):
        render_phantom({"Cardiomegally": 1}, "x")
    with pytest.raises(ValueError, match=r"size"):
        render_phantom(labels(), "x", size=8)
