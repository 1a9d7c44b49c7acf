"""DigitsDataModule: a deterministic, disjoint, stratified split of scikit-learn's digits."""

from __future__ import annotations

import pytest
import torch

from core.examples.data import DigitsDataModule


def _split(seed: int) -> DigitsDataModule:
    data = DigitsDataModule(split_seed=seed)
    data.setup("fit")
    return data


def _rows(dataset) -> set[tuple[float, ...]]:
    return {(*x.tolist(), int(y)) for x, y in dataset}


def test_split_sizes_and_value_range() -> None:
    data = _split(0)
    sizes = [len(data.train_set), len(data.val_set), len(data.test_set)]
    assert sum(sizes) == 1797
    assert sizes[1] == pytest.approx(0.15 * 1797, abs=2) and sizes[2] == pytest.approx(
        0.15 * 1797, abs=2
    )
    x, y = data.train_set.tensors
    assert x.dtype == torch.float32 and x.shape[1] == 64 and x.min() >= 0 and x.max() <= 1
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))


def test_split_is_deterministic_and_seeded() -> None:
    a, b, c = _split(0), _split(0), _split(1)
    assert torch.equal(a.test_set.tensors[0], b.test_set.tensors[0])
    assert not torch.equal(a.test_set.tensors[0], c.test_set.tensors[0])


def test_splits_are_disjoint_and_stratified() -> None:
    data = _split(0)
    test_labels = torch.bincount(data.test_set.tensors[1], minlength=10)
    assert test_labels.min() >= 24  # about 27 of each digit; stratified
    # Digits has a few duplicate images, so compare index sets via the split itself.
    train, test = _rows(data.train_set), _rows(data.test_set)
    assert len(train & test) <= 2


def test_loaders_batch_and_bad_settings_are_rejected() -> None:
    data = _split(0)
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (64, 64) and y.shape == (64,)
    with pytest.raises(ValueError, match=r"data\.batch_size"):
        DigitsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"data\.source='csv'"):
        DigitsDataModule(source="csv")  # type: ignore[arg-type]
