"""CodeDataModule: the data source, the data-only seed, packed loaders."""

from __future__ import annotations

import random

import pytest
import torch

from apps.code.data import CodeDataModule
from apps.code.records import Record, write_jsonl
from apps.code.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """A small code tokenizer saved as a local folder (``data.tokenizer``)."""
    folder = tmp_path_factory.mktemp("tok")
    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(50)]
    train_bpe(texts, 300).save_pretrained(folder)
    return folder


@pytest.fixture()
def train_file(tmp_path):
    records = [Record("a", f"def f{i}(x):\n", f"    return x + {i}\n") for i in range(40)]
    return write_jsonl(tmp_path / "train.jsonl", records)


def test_source_must_agree_with_the_paths():
    with pytest.raises(ValueError, match=r"data\.paths is given but data\.source is 'embedded'"):
        CodeDataModule(paths=["x.jsonl"])
    with pytest.raises(ValueError, match=r"data\.val_paths is given"):
        CodeDataModule(val_paths=["x.jsonl"])
    with pytest.raises(ValueError, match=r"data\.source: jsonl needs data\.paths"):
        CodeDataModule(source="jsonl")
    with pytest.raises(ValueError, match=r"data\.source='csv' must be one of embedded, jsonl"):
        CodeDataModule(source="csv", paths=["x.jsonl"])


def _validation(train_file, tokenizer_folder, split_seed):
    dm = CodeDataModule(source="jsonl", paths=[str(train_file)], tokenizer=str(tokenizer_folder),
                        seq_len=64, batch_size=2, split_seed=split_seed)  # fmt: skip
    dm.setup("fit")
    return dm


def test_split_seed_alone_picks_the_held_out_records(train_file, tokenizer_folder):
    torch.manual_seed(0)
    random.seed(0)
    first = _validation(train_file, tokenizer_folder, split_seed=0)
    torch.manual_seed(123)  # the run's seed (seed_everything) does not move the split
    random.seed(123)
    same = _validation(train_file, tokenizer_folder, split_seed=0)
    other = _validation(train_file, tokenizer_folder, split_seed=1)
    assert len(first.records["val"]) == 4 and len(first.records["train"]) == 36
    assert same.records["val"] == first.records["val"]
    assert other.records["val"] != first.records["val"]
    assert set(other.records["val"]) <= set(first.records["train"] + first.records["val"])
    assert same.rows["train"] == first.rows["train"]  # packing follows split_seed too
    batch = next(iter(first.val_dataloader()))
    assert batch["input_ids"].shape == (2, 64) and batch["task_names"] == ("a",)
