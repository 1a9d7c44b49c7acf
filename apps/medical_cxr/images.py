"""Decode chest radiographs from disk into float arrays in [0, 1] (bright = dense).

PNG/JPEG (8- or 16-bit) go through Pillow; DICOM goes through pydicom with the display
pipeline a radiologist's viewer applies: the modality LUT (rescale slope/intercept), the
VOI LUT or window centre/width (``window=True``), scaling of the stored bit depth to [0, 1]
and inversion of MONOCHROME1 images (where a high stored value means *dark*), so every
image comes out with bone bright and air dark whatever its source.

Every failure raises :class:`ImageLoadError`, whose message names the file and the fix, so
a corrupt file is reported in the main process (the data module checks files at setup) and
never crashes deep inside a DataLoader worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DICOM_SUFFIXES = (".dcm", ".dicom")


class ImageLoadError(ValueError):
    """An image file is missing, unreadable or not a single-frame grayscale/RGB image."""


def _fail(path: Path, why: str) -> ImageLoadError:
    return ImageLoadError(
        f"cannot read image {str(path)!r}: {why}. Re-export or remove the file, or set "
        "data.on_error=skip to leave such studies out (they are logged)."
    )


def read_dicom(path: str | Path, window: bool = True) -> np.ndarray:
    """A DICOM radiograph as float32 ``(H, W)`` in [0, 1], bright = dense.

    Args:
        path: The ``.dcm`` file.
        window: Apply the file's VOI LUT / window centre and width (what a viewer shows).
            Without it the full stored range after the modality LUT is scaled to [0, 1].
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    if not path.is_file():
        raise _fail(path, "the file does not exist")
    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken files
        raise _fail(path, f"not a decodable DICOM file ({type(err).__name__}: {err})") from err
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise _fail(path, f"PhotometricInterpretation {photometric} is not a grayscale radiograph")
    if raw.ndim != 2:
        raise _fail(path, f"pixel data of shape {raw.shape} is not a single 2-D frame")
    arr = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if window and has_voi:
        # pydicom keeps MONOCHROME1 polarity through the VOI LUT; we invert below.
        arr = np.asarray(apply_voi_lut(arr, ds, prefer_lut=True), dtype=np.float64)
        low, high = _voi_range(ds, arr)
    else:
        low, high = float(arr.min()), float(arr.max())
    out = np.clip((arr - low) / max(high - low, 1e-12), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def _voi_range(ds, arr: np.ndarray) -> tuple[float, float]:
    """Output range of the VOI transform: the window's edges, or the LUT's bit depth."""
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    # apply_voi_lut with a window maps into [min, max] of the stored range (y_min..y_max).
    bits = int(getattr(ds, "BitsStored", 16))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    if signed:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def read_image(path: str | Path, window: bool = True) -> np.ndarray:
    """Any supported radiograph (PNG/JPEG/TIFF 8/16-bit, DICOM) as float32 ``(H, W)`` in [0, 1]."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path, window=window)
    if not path.is_file():
        raise _fail(path, "the file does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
                return np.clip(arr / top, 0.0, 1.0).astype(np.float32)
            if mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                span = max(float(arr.max() - arr.min()), 1e-12)
                return ((arr - arr.min()) / span).astype(np.float32)
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise _fail(path, f"not a decodable image ({type(err).__name__}: {err})") from err


def check_image(path: str | Path) -> None:
    """Cheap integrity check (header and, for PNG/JPEG, a full decode); raises ImageLoadError."""
    read_image(path)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` x ``size`` float32 resize (antialiased bilinear through Pillow)."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    img = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
