import numpy as np
import pytest
import torch
from PIL import Image

from apps.vision.data import (
    CsvImageDataset,
    ImageFolderDataset,
    VisionDataModule,
    class_subset,
    pixel_transform,
)
from apps.vision.shifts import SHIFT_CLASSES


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 10, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_reads_classes_and_names_a_corrupt_image(tmp_path):
    _png(tmp_path / "cat" / "a.png", 10)
    _png(tmp_path / "dog" / "b.png", 200)
    tf = pixel_transform(8, (0.5,) * 3, (0.5,) * 3)
    ds = ImageFolderDataset(tmp_path, ["cat", "dog", "fox"], tf)
    assert ds.labels == [0, 1]
    x, y = ds[1]
    assert x.shape == (3, 8, 8) and y == 1
    assert x.mean() == pytest.approx(200 / 255 * 2 - 1, abs=1e-3)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png at all")
    ds = ImageFolderDataset(tmp_path, ["cat", "dog"], tf)
    broken = [i for i, (p, _) in enumerate(ds.items) if p.name == "broken.png"]
    with pytest.raises(ValueError, match=r"broken\.png' cannot be decoded"):
        ds[broken[0]]


def test_image_folder_unknown_class_folder(tmp_path):
    _png(tmp_path / "wolf" / "a.png", 0)
    with pytest.raises(ValueError, match=r"class folders \['wolf'\]"):
        ImageFolderDataset(tmp_path, ["cat", "dog"])


def test_csv_labels_and_captions(tmp_path):
    _png(tmp_path / "img" / "a.png", 0)
    _png(tmp_path / "img" / "b.png", 255)
    (tmp_path / "l.csv").write_text("path,label\nimg/a.png,dog\nimg/b.png,0\n")
    assert CsvImageDataset(tmp_path / "l.csv", ["cat", "dog"]).labels == [1, 0]
    (tmp_path / "c.csv").write_text("path,caption\nimg/a.png,A photo of a Dog.\n")
    assert CsvImageDataset(tmp_path / "c.csv", ["cat", "dog"]).labels == [1]
    (tmp_path / "bad.csv").write_text("path,caption\nimg/a.png,a cat and a dog\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: caption .* names 2 of the classes"):
        CsvImageDataset(tmp_path / "bad.csv", ["cat", "dog"])
    (tmp_path / "bad2.csv").write_text("path,label\nimg/a.png,wolf\n")
    with pytest.raises(ValueError, match="label 'wolf' is not a class"):
        CsvImageDataset(tmp_path / "bad2.csv", ["cat", "dog"])


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
    assert list(sets) == ["id_val", "id_test", "rotation", "flip180"]
    assert sets["flip180"].classes == SHIFT_CLASSES["flip180"]
    x, y = tiny_data.sets["train"].tensors
    assert x.dtype == torch.float16 and x.shape[1:] == (192, 2, 2) and len(y) == 80
    assert torch.bincount(y).min() >= 7  # stratified
    again = VisionDataModule(
        cache_dir=cache_dir, n_train=80, n_val=40, n_test=50, shifts=["rotation", "flip180"]
    )
    again.setup()
    assert torch.equal(again.sets["train"].tensors[0], x)
    flip_y = tiny_data.ood["flip180"][0].tensors[1]
    assert not set(flip_y.tolist()) & {6, 9}


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


def test_non_utf8_csv_names_file_and_line(tmp_path):
    _png(tmp_path / "img" / "a.png", 0)
    (tmp_path / "l.csv").write_bytes("path,caption\nimg/a.png,a dog\nimg/a.png,ein Hund für\n"
                                     .encode("latin-1"))  # fmt: skip
    with pytest.raises(ValueError, match=r"l\.csv: line 3, column 21: byte 0xfc") as err:
        CsvImageDataset(tmp_path / "l.csv", ["cat", "dog"])
    assert "re-save the file as UTF-8" in str(err.value) and "\n" not in str(err.value)
