"""The vision data module: ID train / val / test plus named distribution-shift sets.

``data.source`` picks where the images come from: ``embedded`` (the MNIST shift benchmark
that ships inside installed packages, as cached trunk features: :mod:`apps.vision.embedded`)
or a real on-disk format, ``folder`` or ``csv`` (:mod:`apps.vision.formats`).

**Class subsets.** A shift may cover fewer classes (``flip180`` leaves out 6 and 9, or a
folder without some class): evaluation then projects the logits onto the covered classes
(:func:`class_subset`), as ImageNet-R/A are scored on their 200 classes.

**Seeds.** ``data.split_seed`` fixes the embedded ID split and the shift sets, so every run
seed sees the same benchmark. The training loader's shuffling follows the run's seed
(``seed_everything``): its generator is seeded from ``torch.initial_seed()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .embedded import BenchmarkSpec, benchmark_features
from .formats import CsvImageDataset, ImageFolderDataset, pixel_transform
from .prompts import DIGIT_NAMES
from .shifts import SHIFT_CLASSES

__all__ = ["SOURCES", "EvalSet", "VisionDataModule", "class_subset"]

#: The values of ``data.source``.
SOURCES = ("embedded", "folder", "csv")


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
        cache_dir: Where the feature cache lives instead of ``<cache root>/vision``
            (``core.cache``; the root is ``$SPECIALIST_FINETUNERS_CACHE`` or
            ``~/.cache/specialist-finetuners``).

    The training loader shuffles with a generator seeded from ``torch.initial_seed()``:
    the run's seed (``seed_everything``), taken when the loader is made.
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
        cache_dir: str | None = None,
        check_images: bool = True,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
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
        self.num_workers, self.cache_dir = num_workers, cache_dir
        self.check_images = check_images
        self.sets: dict[str, Dataset] = {}
        self.ood: dict[str, tuple[Dataset, list[int] | None]] = {}

    @property
    def num_classes(self) -> int:
        """How many classes the labels index (``len(class_names)``)."""
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        """Build the ID sets and the shift sets once (later calls keep them)."""
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
        spec = BenchmarkSpec(
            *self.sizes,
            shifts=self.shifts,
            image_size=self.image_size,
            split=self.split,
            split_seed=self.split_seed,
        )
        feats = benchmark_features(spec, cache_dir=self.cache_dir)
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
        gen = torch.Generator().manual_seed(torch.initial_seed()) if train else None
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
