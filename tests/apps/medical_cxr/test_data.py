"""The data module on the embedded data: batches, labels, phantoms, cache, fractions, the
run-seeded shuffle, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from apps.medical_cxr import data as data_mod
from apps.medical_cxr.data import CxrDataModule
from apps.medical_cxr.labeler import CHEXPERT_LABELS, label_report, label_vector
from apps.medical_cxr.phantom import render_phantom
from apps.medical_cxr.splits import SHIPPED_DIR, read_split_file


def test_embedded_batches(fast_embedded, tmp_path):
    dm = CxrDataModule(image_size=32, batch_size=4, max_studies=8, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.sets.items()} == {"train": 8, "val": 8, "test": 8}
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["labels"].shape == (4, len(CHEXPERT_LABELS)) and batch["mask"].shape == (4, 32, 32)
    val_ids = read_split_file(SHIPPED_DIR / "iu_xray", "val")
    for i, study_id in enumerate(batch["study_id"]):
        assert study_id in val_ids
        text = batch["text"][i]
        assert text and text == text.lower()
        expected = label_vector(label_report(text), uncertain_as=0)
        assert batch["labels"][i].tolist() == expected
        image, mask = render_phantom(label_report(text), study_id, 32)
        np.testing.assert_allclose(batch["image"][i, 0].numpy(), image, atol=1 / 255 + 1e-6)
        np.testing.assert_array_equal(batch["mask"][i].numpy(), mask)
    assert len(dm.train_texts()) == 8


def test_phantom_cache_is_used(fast_embedded, tmp_path, monkeypatch):
    first = CxrDataModule(image_size=32, max_studies=4, cache_dir=str(tmp_path))
    first.setup("fit")
    assert len(list(tmp_path.glob("phantoms-*.pt"))) == 3  # one per split (core.cache)

    def fail(*args, **kwargs):
        raise AssertionError("rendered although the cache holds these phantoms")

    monkeypatch.setattr(data_mod, "render_phantom", fail)
    dm = CxrDataModule(image_size=32, max_studies=4, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert len(dm.sets["train"]) == 4
    assert np.array_equal(dm.sets["train"].images, first.sets["train"].images)
    assert np.array_equal(dm.sets["val"].masks, first.sets["val"].masks)
    # Another size is another entry: rendered, not read from the 32-pixel one.
    with pytest.raises(AssertionError, match="rendered although"):
        CxrDataModule(image_size=48, max_studies=4, cache_dir=str(tmp_path)).setup("fit")


def test_training_order_follows_the_run_seed(fast_embedded, tmp_path, monkeypatch):
    dm = CxrDataModule(image_size=32, batch_size=4, max_studies=16, cache_dir=str(tmp_path))
    dm.setup("fit")

    def first_batch_ids(seed: str) -> list[str]:
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        return next(iter(dm.train_dataloader()))["study_id"]

    assert first_batch_ids("0") == first_batch_ids("0")
    assert first_batch_ids("0") != first_batch_ids("1")
    # The same order as any DataLoader shuffled by a generator seeded with the run's seed.
    order = DataLoader(range(16), 4, shuffle=True, generator=torch.Generator().manual_seed(1))
    expected = next(iter(order)).tolist()
    assert first_batch_ids("1") == [dm.sets["train"].studies[i].study_id for i in expected]


def test_label_fraction_reads_the_shipped_files(fast_embedded):
    dm = CxrDataModule(label_fraction=0.01, image_size=32)
    ids = dm.split_ids(fast_embedded)
    assert ids["train"] == read_split_file(SHIPPED_DIR / "iu_xray", "train_1pct")
    assert ids["test"] == read_split_file(SHIPPED_DIR / "iu_xray", "test")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"data.source='mimic' must be one of"):
        CxrDataModule(source="mimic")
    with pytest.raises(ValueError, match=r"data.on_error"):
        CxrDataModule(on_error="ignore")
    with pytest.raises(ValueError, match=r"data.label_fraction"):
        CxrDataModule(label_fraction=0)
    with pytest.raises(ValueError, match=r"needs data.root"):
        CxrDataModule(source="mimic_cxr").setup("fit")


def test_real_layout_problems_surface_in_setup_not_in_a_worker(iu_layout):
    reports, images = iu_layout
    dm = CxrDataModule(
        source="iu_xray", reports=str(reports), images=str(images), on_error="raise",
        num_workers=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"CXR2.*no findings section"):
        dm.setup("fit")
    skip = CxrDataModule(
        source="iu_xray", reports=str(reports), images=str(images), on_error="skip",
        split_dir=None,
    )  # fmt: skip
    studies = skip.load_studies()
    assert [s.study_id for s in studies] == ["CXR1"]
    item = data_mod.CxrDataset(studies, 32)[0]
    assert (
        item["image"].shape == (1, 32, 32) and 0 <= item["image"].min() <= item["image"].max() <= 1
    )


def test_non_utf8_split_file_names_file_and_line(fast_embedded, tmp_path):
    for name in ("train", "val"):
        (tmp_path / f"{name}.txt").write_text("CXR1\nCXR2\n")
    (tmp_path / "test.txt").write_bytes(b"CXR3\nCXR4\xa0\n")
    dm = CxrDataModule(split_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"test\.txt: line 2, column 5: byte 0xa0") as err:
        dm.split_ids(fast_embedded)
    assert "re-save the file as UTF-8" in str(err.value)


def test_balanced_weights_follow_the_rarest_positive_finding():
    from apps.medical_cxr.data import balanced_weights

    targets = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.float32)
    # shares 3/5 and 1/5: rows weigh sqrt(5/3), sqrt(5); the unlabeled row the mean of those
    raw = [5 / 3, 5 / 3, 5 / 3, 5.0]
    raw.append(sum(raw) / 4)
    expected = torch.tensor(raw).sqrt()
    assert torch.allclose(balanced_weights(targets), expected / expected.sum())
