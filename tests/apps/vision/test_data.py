import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from apps.vision.data import VisionDataModule, class_subset
from apps.vision.shifts import SHIFT_CLASSES

from .conftest import TINY_DATA


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 10, 3), value, dtype=np.uint8)).save(path)


def test_class_subset_rules():
    assert class_subset(torch.tensor([0, 1, 2]), 3) is None
    # a class missing from a shift: evaluation projects onto the covered classes
    assert class_subset(torch.tensor([0, 2, 2]), 3) == [0, 2]
    assert class_subset(torch.tensor([0]), 3, declared=[0, 1]) == [0, 1]
    with pytest.raises(ValueError, match=r"shift 'x': labels \[2\] are not among the classes"):
        class_subset(torch.tensor([0, 2]), 3, declared=[0, 1], name="shift 'x'")


def test_folder_shift_missing_a_class_is_projected(tmp_path):
    for split in ("train", "val", "test"):
        for c, v in (("cat", 0), ("dog", 255)):
            _png(tmp_path / split / c / "a.png", v)
    _png(tmp_path / "night" / "cat" / "a.png", 5)
    dm = VisionDataModule(
        source="folder",
        train=str(tmp_path / "train"),
        val=str(tmp_path / "val"),
        test=str(tmp_path / "test"),
        shift_paths={"night": str(tmp_path / "night")},
        class_names=["cat", "dog"],
        image_size=8,
    )
    sets = dm.eval_sets()
    assert list(sets) == ["id_val", "id_test", "night"]
    assert sets["night"].classes == [0]
    with pytest.raises(ValueError, match=r"needs data\.train"):
        VisionDataModule(source="csv")


def test_embedded_benchmark_is_cached_and_deterministic(tiny_data, cache_dir):
    sets = tiny_data.eval_sets()
    assert list(sets) == ["id_val", "id_test", *TINY_DATA["shifts"]]
    assert sets["flip180"].classes == SHIFT_CLASSES["flip180"]
    x, y = tiny_data.sets["train"].tensors
    assert x.dtype == torch.float16 and x.shape[1:] == (192, 2, 2)
    assert len(y) == TINY_DATA["n_train"]
    assert torch.bincount(y).min() >= TINY_DATA["n_train"] // 10 - 1  # stratified
    sizes = {k: TINY_DATA[k] for k in ("n_train", "n_val", "n_test", "shifts")}
    again = VisionDataModule(cache_dir=cache_dir, **sizes)
    again.setup()
    assert torch.equal(again.sets["train"].tensors[0], x)
    flip_y = tiny_data.ood["flip180"][0].tensors[1]
    assert not set(flip_y.tolist()) & {6, 9}


def test_training_order_follows_the_run_seed_and_the_split_does_not(cache_dir):
    sizes = {k: TINY_DATA[k] for k in ("n_train", "n_val", "n_test", "shifts")}

    def first_batch_and_split(seed):
        pl.seed_everything(seed, verbose=False)
        dm = VisionDataModule(cache_dir=cache_dir, batch_size=8, **sizes)
        dm.setup()
        return next(iter(dm.train_dataloader()))[1], dm.sets["train"].tensors[1]

    batch0, split0 = first_batch_and_split(0)
    again0, _ = first_batch_and_split(0)
    batch1, split1 = first_batch_and_split(1)
    assert torch.equal(batch0, again0)  # the same run seed shuffles the same way
    assert not torch.equal(batch0, batch1)  # seed_everything changes the order ...
    assert torch.equal(split0, split1)  # ... but not the split (data.split_seed)
    # the loader's generator is seeded with the run's seed (torch.initial_seed())
    pl.seed_everything(1, verbose=False)
    train = TensorDataset(split0)
    fixed = DataLoader(
        train, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(batch0, next(iter(fixed))[0])


def test_undecodable_image_fails_in_setup_naming_the_file(tmp_path):
    for split in ("train", "val", "test"):
        for c, v in (("cat", 0), ("dog", 255)):
            _png(tmp_path / split / c / "a.png", v)
    (tmp_path / "val" / "dog" / "broken.png").write_bytes(b"not a png at all")
    dm = VisionDataModule(
        source="folder",
        train=str(tmp_path / "train"),
        val=str(tmp_path / "val"),
        test=str(tmp_path / "test"),
        class_names=["cat", "dog"],
        image_size=8,
    )
    with pytest.raises(ValueError, match=r"1 of 3 images of val .*broken\.png' cannot be decoded"):
        dm.setup("fit")
    assert not dm.sets  # nothing half set up: a second setup() checks again
    with pytest.raises(ValueError, match=r"broken\.png"):
        dm.setup("fit")
