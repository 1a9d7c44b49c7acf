"""Real on-disk image formats: ImageFolder directories and CSV files (``data.source``).

:class:`ImageFolderDataset` reads ``root/<class name>/<image>``; :class:`CsvImageDataset`
reads a CSV with a ``path`` column and a ``label`` (class name or index) or ``caption``
column (a caption names its class, for image-caption fine-tuning). Images are decoded with
PIL; ``check_images`` decodes each once, so one that fails to decode stops ``setup`` with an
error naming the file, never an epoch. A CSV must be UTF-8 (an error names the line that is
not).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.textio import read_utf8

__all__ = [
    "IMAGE_EXTENSIONS",
    "CsvImageDataset",
    "ImageFolderDataset",
    "decode_image",
    "pixel_transform",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def decode_image(path: str | Path) -> Any:
    """Open ``path`` as an RGB PIL image, or raise ``ValueError`` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {str(path)!r} does not exist; fix the path.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"image {str(path)!r} cannot be decoded ({type(err).__name__}: {err}); replace the "
            "file with a valid PNG/JPEG or remove it from the data set."
        ) from err


def pixel_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """PIL image -> float tensor (3, S, S): resize, [0, 1], per-channel normalisation."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class _LabeledImages(Dataset):
    """(path, label) pairs decoded lazily."""

    def __init__(self, items: list[tuple[Path, int]], class_names: list[str], transform: Any):
        if not items:
            raise ValueError("the data set holds no image.")
        self.items, self.class_names, self.transform = items, class_names, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.items[i]
        image = decode_image(path)
        return (self.transform(image) if self.transform else image), label

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.items]

    def check_images(self, name: str) -> None:
        """Decode every image once, so a bad file stops ``setup`` rather than an epoch.

        Raises the first failure's type (``ValueError``, or ``FileNotFoundError`` for a
        missing file) with one message naming that file and how many of set ``name`` failed.
        """
        failures: list[Exception] = []
        for path, _ in self.items:
            try:
                decode_image(path)
            except (ValueError, FileNotFoundError) as err:
                failures.append(err)
        if failures:
            first = failures[0]
            raise type(first)(
                f"{len(failures)} of {len(self.items)} images of {name} cannot be read, the "
                f"first: {first}"
            ) from first


class ImageFolderDataset(_LabeledImages):
    """``root/<class name>/<image>``; ``class_names`` fixes the label order.

    Without ``class_names`` the sorted folder names are the classes. With it, a folder that
    is not a known class is an error, and classes without a folder are simply absent (a
    shift that covers fewer classes).
    """

    def __init__(
        self, root: str | Path, class_names: Sequence[str] | None = None, transform: Any = None
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist.")
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        names = list(class_names) if class_names is not None else folders
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise ValueError(
                f"image folder {str(root)!r} has class folders {unknown} that are not among "
                f"the classes {names}; rename them or add them to class_names."
            )
        items = [
            (p, names.index(folder))
            for folder in folders
            for p in sorted((root / folder).iterdir())
            if p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        super().__init__(items, names, transform)


class CsvImageDataset(_LabeledImages):
    """A CSV with ``path`` and ``label`` (class name or index) or ``caption`` columns.

    Relative paths are read relative to the CSV's folder. A caption's class is the one
    class name it contains (whole word, case-insensitive); none or several is an error.
    """

    def __init__(
        self, csv_path: str | Path, class_names: Sequence[str], transform: Any = None
    ) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"CSV {str(csv_path)!r} does not exist.")
        names = list(class_names)
        reader = csv.DictReader(io.StringIO(read_utf8(csv_path), newline=""))
        header = reader.fieldnames or []
        if "path" not in header or not ({"label", "caption"} & set(header)):
            raise ValueError(
                f"CSV {str(csv_path)!r} needs a header with 'path' and 'label' or 'caption'."
            )
        items = []
        for row in reader:
            path = Path(row["path"])
            path = path if path.is_absolute() else csv_path.parent / path
            items.append((path, self._label(row, names, f"{csv_path}:{reader.line_num}")))
        super().__init__(items, names, transform)

    @staticmethod
    def _label(row: dict[str, str], names: list[str], where: str) -> int:
        if row.get("label") not in (None, ""):
            value = row["label"].strip()
            if value in names:
                return names.index(value)
            if value.isdigit() and int(value) < len(names):
                return int(value)
            raise ValueError(f"{where}: label {value!r} is not a class name or index of {names}.")
        words = set(str(row.get("caption", "")).lower().replace(".", " ").split())
        found = [i for i, n in enumerate(names) if n.lower() in words]
        if len(found) != 1:
            raise ValueError(
                f"{where}: caption {row.get('caption')!r} names {len(found)} of the classes "
                f"{names}; each caption must name exactly one."
            )
        return found[0]
