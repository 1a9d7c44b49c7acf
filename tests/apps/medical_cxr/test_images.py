"""Image decoding: the real chest radiograph of pydicom-data, PNG bit depths, corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from apps.medical_cxr.images import ImageLoadError, read_dicom, read_image, resize


def chest_dicom() -> Path:
    """RG1_UNCR.dcm: a real computed-radiography chest image (MONOCHROME1, 15-bit)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    assert path is not None, "pydicom-data ships RG1_UNCR.dcm"
    return Path(path)


def test_real_chest_dicom_is_windowed_inverted_and_scaled():
    path = chest_dicom()
    ds = pydicom.dcmread(path)
    assert ds.Modality == "CR" and ds.BodyPartExamined == "CHEST"
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    img = read_dicom(path)
    assert img.shape == (ds.Rows, ds.Columns) and img.dtype == np.float32
    assert 0.0 <= img.min() < img.max() <= 1.0
    # Reference: pydicom's own modality + VOI LUT, scaled by the 15-bit range, inverted.
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    expected = 1.0 - np.clip(voi / (2**15 - 1), 0, 1)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    # MONOCHROME1: a high stored value is dark, so the output runs against the raw pixels.
    raw = ds.pixel_array.astype(np.float64).ravel()[::97]
    assert np.corrcoef(raw, img.ravel()[::97])[0, 1] < -0.99
    # Anatomy check: the mediastinum/spine column is brighter than the lung fields beside it.
    rows = slice(int(0.3 * ds.Rows), int(0.5 * ds.Rows))
    centre = img[rows, int(0.47 * ds.Columns) : int(0.53 * ds.Columns)].mean()
    lungs = img[rows, int(0.25 * ds.Columns) : int(0.35 * ds.Columns)].mean()
    assert centre > lungs + 0.05


def test_dicom_without_window_uses_full_range():
    img = read_dicom(chest_dicom(), window=False)
    assert img.min() == pytest.approx(0.0) and img.max() == pytest.approx(1.0)


def test_png_8_and_16_bit(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    Image.fromarray((ramp * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "b.png")
    a, b = read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png")
    np.testing.assert_allclose(a, ramp, atol=1 / 255)
    np.testing.assert_allclose(b, ramp, atol=1e-4)
    assert resize(b, 32).shape == (32, 32)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ImageLoadError, match=r"broken.png.*on_error=skip"):
        read_image(bad)
    with pytest.raises(ImageLoadError, match=r"does not exist"):
        read_image(tmp_path / "nope.jpg")
    dcm = tmp_path / "bad.dcm"
    dcm.write_bytes(b"garbage" * 10)
    with pytest.raises(ImageLoadError, match=r"bad.dcm"):
        read_dicom(dcm)
