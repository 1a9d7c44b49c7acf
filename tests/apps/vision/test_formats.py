import numpy as np
import pytest
from PIL import Image

from apps.vision.formats import CsvImageDataset, ImageFolderDataset, pixel_transform


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


def test_non_utf8_csv_names_file_and_line(tmp_path):
    _png(tmp_path / "img" / "a.png", 0)
    (tmp_path / "l.csv").write_bytes("path,caption\nimg/a.png,a dog\nimg/a.png,ein Hund für\n"
                                     .encode("latin-1"))  # fmt: skip
    with pytest.raises(ValueError, match=r"l\.csv: line 3, column 21: byte 0xfc") as err:
        CsvImageDataset(tmp_path / "l.csv", ["cat", "dog"])
    assert "re-save the file as UTF-8" in str(err.value) and "\n" not in str(err.value)
