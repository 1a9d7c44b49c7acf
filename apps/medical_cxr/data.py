"""Chest X-ray studies as a LightningDataModule, for report generation and classification.

``CxrDataModule(source=...)`` reads one of the layouts of :mod:`.sources`:

* ``"embedded"`` (default): the 3,955 real IU X-ray reports from the installed
  ``torchxrayvision`` package, each paired with a **synthetic** radiograph rendered from that
  report's labels (:mod:`.phantom`), with the lung-field mask. The reports are real; the
  images are not. Rendered phantoms are kept in the app's cache (:mod:`core.cache`).
* ``"iu_xray"``, ``"mimic_cxr"``, ``"chexpert"``: the real data sets on disk.

Splits are by patient (:mod:`.splits`): the shipped split files for the embedded data, the
official split for MIMIC-CXR, a patient hash elsewhere. ``label_fraction`` (1.0, 0.1, 0.01:
BenchX) keeps the nested fraction of the training patients. The training order is shuffled
with the run's seed (``seed_everything``); the splits have no seed (they are fixed).

A batch is a dict: ``image`` float32 ``(B, 1, S, S)`` in [0, 1], ``labels`` float32
``(B, 14)`` (binary, uncertain mapped by ``uncertain_as``), ``label_states`` int64
``(B, 14)`` (0 negative or not mentioned, 1 uncertain, 2 positive), ``text`` list of reports,
``study_id`` list, and ``mask`` uint8 ``(B, S, S)`` for the embedded data. Problems with the
data (corrupt image, report without the needed section, text or CSV line not in UTF-8, a
label cell not 1/0/-1/blank) follow ``on_error`` and are found in ``setup`` in the main
process, never inside a DataLoader worker; each ``setup`` logs a summary of its own skips.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from core.cache import cached

from .images import read_image, resize
from .labeler import CHEXPERT_LABELS, label_vector
from .phantom import render_phantom
from .sources import (
    Study,
    check_on_error,
    load_chexpert,
    load_embedded,
    load_iu_xray,
    load_mimic_cxr,
)
from .splits import SHIPPED_DIR, fraction_name, fraction_subset, patient_splits, read_split_file

SOURCES = ("embedded", "iu_xray", "mimic_cxr", "chexpert")
#: Raise when the phantoms' drawing changes: a new version is a new cache entry.
PHANTOM_VERSION = 2
APP = "medical_cxr"


def run_seed() -> int:
    """The seed of this run (``seed_everything`` sets ``PL_GLOBAL_SEED``), 0 if unset."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def render_all(
    studies: Sequence[Study], size: int, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Phantoms of ``studies`` as uint8 images ``(N, S, S)`` and lung masks, cached.

    The cache entry (:func:`core.cache.cached`, kind ``phantoms``) is keyed by the phantom
    version, the size, the study ids and their labels, so a stale one is never read.
    ``cache_dir``: a folder instead of the app's cache (``$SPECIALIST_FINETUNERS_CACHE``).
    """
    config = {
        "version": PHANTOM_VERSION,
        "size": size,
        "studies": [(s.study_id, s.labels) for s in studies],
    }

    def build() -> dict[str, torch.Tensor]:
        images = np.empty((len(studies), size, size), dtype=np.uint8)
        masks = np.empty((len(studies), size, size), dtype=np.uint8)
        for i, study in enumerate(tqdm(studies, desc="rendering phantoms", leave=False)):
            img, mask = render_phantom(study.labels, study.study_id, size)
            images[i] = np.round(img * 255)
            masks[i] = mask
        return {"images": torch.from_numpy(images), "masks": torch.from_numpy(masks)}

    entry = cached("phantoms", config, build, app=APP, cache_dir=cache_dir)
    return entry["images"].numpy(), entry["masks"].numpy()


class CxrDataset(Dataset):
    """Studies with their images: rendered arrays (embedded) or files read on access.

    Files were checked in ``setup``; a file that breaks afterwards still raises an
    ``ImageLoadError`` naming it.
    """

    def __init__(
        self,
        studies: Sequence[Study],
        image_size: int,
        uncertain_as: int = 0,
        images: np.ndarray | None = None,
        masks: np.ndarray | None = None,
    ) -> None:
        self.studies = list(studies)
        self.image_size = image_size
        self.images, self.masks = images, masks
        shape = (len(self.studies), len(CHEXPERT_LABELS))
        positive = torch.tensor([label_vector(s.labels, 0) for s in self.studies]).reshape(shape)
        uncertain = torch.tensor([label_vector(s.labels, 1) for s in self.studies]).reshape(shape)
        uncertain = uncertain - positive
        # 0 negative / not mentioned, 1 uncertain, 2 positive (a report generator's prompt)
        self.states = (2 * positive + uncertain).long()
        # binary targets: positive, and uncertain counted as ``uncertain_as``
        self.targets = (positive + uncertain_as * uncertain).float()

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> dict[str, Any]:
        study = self.studies[index]
        if self.images is not None:
            image = self.images[index].astype(np.float32) / 255.0
        else:
            # The first (frontal, for MIMIC/IU ordering) image of the study.
            image = resize(read_image(study.image_paths[0]), self.image_size)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "labels": self.targets[index],
            "label_states": self.states[index],
            "text": study.text,
            "study_id": study.study_id,
        }
        if self.masks is not None:
            item["mask"] = torch.from_numpy(self.masks[index])
        return item


def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """Sampling weight per study: ``sqrt(max_j y_ij / p_j)``, ``p_j`` the share of studies
    positive for observation ``j`` ("No Finding" included), so a study weighs as its rarest
    positive finding, softened by the square root; a study with no positive label (only
    uncertain findings) gets the mean weight. Weights sum to 1.
    """
    y = targets.float()
    share = y.mean(0)
    inverse = torch.where(share > 0, 1.0 / share.clamp(min=1e-12), torch.zeros_like(share))
    weight = (y * inverse).max(dim=1).values
    has_positive = y.sum(1) > 0
    if has_positive.any():
        weight[~has_positive] = weight[has_positive].mean()
    else:
        weight = torch.ones(len(y))
    weight = weight.sqrt()
    return weight / weight.sum()


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


class CxrDataModule(pl.LightningDataModule):
    """Chest X-ray studies (reports, labels, images) split by patient.

    Args:
        source: ``"embedded"`` (real IU X-ray reports + synthetic images), ``"iu_xray"``,
            ``"mimic_cxr"`` or ``"chexpert"`` (on-disk layouts, :mod:`.sources`).
        root: Data folder: the MIMIC-CXR-JPG root, or the CheXpert CSV file.
        reports: IU X-ray report archive/folder (``embedded``: default is the package's).
        images: IU X-ray PNG folder; CheXpert image root.
        sections: Report sections that form the text (``findings``, ``impression``, ...).
        image_size: Side of the square model input; ``model.image_size`` follows it.
        batch_size: Studies per batch.
        label_fraction: Share of the training patients kept (1.0, 0.1, 0.01: BenchX).
        split_dir: Folder with ``train/val/test.txt`` and ``train_<p>pct.txt``; default: the
            shipped files for ``embedded``, the official split for MIMIC, a patient hash else.
        uncertain_as: How an uncertain label (-1) counts in the binary targets (0 or 1);
            ``model.uncertain_as`` follows it (linked in ``train.py``).
        on_error: ``"raise"`` (a one-line error naming the file, line and fix) or ``"skip"``
            (count, log and leave out) for a corrupt image, a report without the needed
            sections or not in UTF-8, a CSV line not in UTF-8 or an invalid label cell.
        check_images: Decode every image once in ``setup`` (finds corrupt files early).
        max_studies: Keep at most this many studies per split (quick runs, tests).
        balanced_sampling: Draw training studies with replacement, weighted by their rarest
            positive finding (:func:`balanced_weights`): label-balanced sampling, so the
            decoder reads the rare findings' sentences more often. An epoch is still as many
            studies as the training split.
        num_workers: DataLoader worker processes.
        cache_dir: Where rendered phantoms (and the report tokenizer) are cached; ``None``:
            the app's cache, ``$SPECIALIST_FINETUNERS_CACHE/medical_cxr``.
    """

    def __init__(
        self,
        source: str = "embedded",
        root: str | None = None,
        reports: str | None = None,
        images: str | None = None,
        sections: list[str] | None = None,
        image_size: int = 64,
        batch_size: int = 32,
        label_fraction: float = 1.0,
        split_dir: str | None = None,
        uncertain_as: int = 0,
        on_error: str = "skip",
        check_images: bool = True,
        max_studies: int | None = None,
        balanced_sampling: bool = False,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r} must be one of {SOURCES}.")
        check_on_error(on_error)
        if image_size < 16:
            raise ValueError(f"data.image_size={image_size} must be >= 16.")
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1.")
        if not 0 < label_fraction <= 1:
            raise ValueError(f"data.label_fraction={label_fraction} must lie in (0, 1].")
        if uncertain_as not in (0, 1):
            raise ValueError(f"data.uncertain_as={uncertain_as} must be 0 or 1.")
        self.save_hyperparameters()
        self.source = source
        self.root, self.reports, self.images = root, reports, images
        self.sections = list(sections or ["findings"])
        self.image_size = image_size
        self.batch_size = batch_size
        self.label_fraction = label_fraction
        self.split_dir = split_dir
        self.uncertain_as = uncertain_as
        self.on_error = on_error
        self.check_images = check_images
        self.max_studies = max_studies
        self.balanced_sampling = balanced_sampling
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.sets: dict[str, CxrDataset] = {}
        self.train_override: Dataset | None = None

    # ------------------------------------------------------------------ loading
    def load_studies(self) -> list[Study]:
        """All studies of the configured source (errors follow ``on_error``)."""
        if self.source == "embedded":
            return load_embedded(self.sections, self.on_error, self.reports)
        if self.source == "iu_xray":
            if not self.reports or not self.images:
                raise ValueError("data.source=iu_xray needs data.reports and data.images.")
            return load_iu_xray(
                self.reports, self.images, self.sections, self.on_error, self.check_images
            )
        if not self.root:
            raise ValueError(f"data.source={self.source} needs data.root.")
        if self.source == "mimic_cxr":
            return load_mimic_cxr(
                self.root, self.sections, self.on_error, self.check_images, self.reports
            )
        return load_chexpert(self.root, self.images, self.on_error, self.check_images)

    def split_ids(self, studies: Sequence[Study]) -> dict[str, list[str]]:
        """Study ids per split, with the label fraction applied to ``train``."""
        patient_of = {s.study_id: s.patient_id for s in studies}
        split_dir = self.split_dir
        if split_dir is None and self.source == "embedded":
            split_dir = str(SHIPPED_DIR / "iu_xray")
        if split_dir is not None:
            ids = {name: read_split_file(split_dir, name) for name in ("train", "val", "test")}
            if self.label_fraction < 1:
                try:
                    ids["train"] = read_split_file(split_dir, fraction_name(self.label_fraction))
                except FileNotFoundError:
                    ids["train"] = fraction_subset(ids["train"], self.label_fraction, patient_of)
        elif all(s.split for s in studies):
            ids = {
                name: sorted(s.study_id for s in studies if s.split == name)
                for name in ("train", "val", "test")
            }
        else:
            ids = patient_splits((s.study_id, s.patient_id) for s in studies)
        if self.label_fraction < 1 and split_dir is None:
            ids["train"] = fraction_subset(ids["train"], self.label_fraction, patient_of)
        return ids

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        studies = self.load_studies()
        if not studies:
            raise ValueError(
                f"data.source={self.source}: no usable study was found (see the problems "
                "skipped, logged above); check the paths and data.sections."
            )
        by_id = {s.study_id: s for s in studies}
        for name, ids in self.split_ids(studies).items():
            chosen = [by_id[i] for i in ids if i in by_id]
            if self.max_studies is not None:
                chosen = chosen[: self.max_studies]
            if not chosen:
                raise ValueError(
                    f"the {name} split of data.source={self.source} is empty; check "
                    "data.split_dir and data.max_studies."
                )
            images = masks = None
            if self.source == "embedded":
                images, masks = render_all(chosen, self.image_size, self.cache_dir)
            self.sets[name] = CxrDataset(
                chosen, self.image_size, self.uncertain_as, images=images, masks=masks
            )

    def train_texts(self) -> list[str]:
        """Reports of the training split (to train a tokenizer on)."""
        self.setup("fit")
        return [s.text for s in self.sets["train"].studies]

    # ------------------------------------------------------------------ loaders
    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.sets:
            raise RuntimeError("CxrDataModule.setup() must run before asking for a loader.")
        generator = torch.Generator().manual_seed(run_seed())
        sampler = None
        if shuffle and self.balanced_sampling:
            weights = balanced_weights(self.sets[name].targets)
            sampler = WeightedRandomSampler(weights, len(weights), generator=generator)
            shuffle = False
        return DataLoader(
            self.sets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            generator=generator if shuffle else None,
            persistent_workers=self.num_workers > 0,
        )

    def use_train_dataset(self, dataset: Dataset) -> None:
        """Train on ``dataset`` instead of the training studies (preference pairs the model
        built from the studies of one split); validation and test stay as they are."""
        self.train_override = dataset

    def train_dataloader(self) -> DataLoader:
        if self.train_override is not None:
            return DataLoader(
                self.train_override,
                batch_size=self.batch_size,
                shuffle=True,
                collate_fn=collate,
                generator=torch.Generator().manual_seed(run_seed()),
            )
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
