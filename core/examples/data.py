"""Scikit-learn's handwritten digits (1,797 8x8 images, shipped with the library) as a
LightningDataModule with a deterministic, stratified train/val/test split."""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset


class DigitsDataModule(pl.LightningDataModule):
    """Digits as ``(x, y)`` batches: ``x`` float32 of shape (B, 64) in [0, 1], ``y`` int64.

    Args:
        source: Where the data comes from: ``embedded`` (the digits that ship with
            scikit-learn, the only source of this example).
        batch_size: Samples per batch.
        val_fraction: Share of the data held out for validation.
        test_fraction: Share of the data held out for testing.
        split_seed: Seed of the split (the same seed gives the same split on every machine);
            the run's seed (``seed_everything``) does not change it.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        source: Literal["embedded"] = "embedded",
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1.")
        if not (
            0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must "
                "each lie in (0, 1) and sum to less than 1."
            )
        if source != "embedded":
            raise ValueError(f"data.source={source!r}: this example reads only 'embedded'.")
        self.save_hyperparameters()
        self.source = source
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.num_features = 64
        self.num_classes = 10
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
        idx = np.arange(len(y))
        held_out = self.val_fraction + self.test_fraction
        train_idx, rest_idx = train_test_split(
            idx, test_size=held_out, random_state=self.split_seed, stratify=y
        )
        val_idx, test_idx = train_test_split(
            rest_idx,
            test_size=self.test_fraction / held_out,
            random_state=self.split_seed,
            stratify=y[rest_idx],
        )

        def subset(ids: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.from_numpy(x[ids]), torch.from_numpy(y[ids]))

        self.train_set = subset(train_idx)
        self.val_set = subset(val_idx)
        self.test_set = subset(test_idx)

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("DigitsDataModule.setup() must run before asking for a loader.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
