"""Readers for models on disk, the streaming safetensors writer and the output guards
(core.merging.io)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.adapters import LoraConfig, inject, save_adapter
from core.merging import merge_adapter_into_base
from core.merging.io import (
    AdapterSource,
    OutputWriteError,
    SafetensorsFile,
    SafetensorsSource,
    SafetensorsWriter,
    TorchSource,
    check_output_apart,
    explain_full_disk,
    open_source,
    plan_bytes,
)
from tests.core.adapters.models import tiny_llama

TENSORS = {
    "f32": torch.randn(3, 5),
    "bf16": torch.randn(7).to(torch.bfloat16),
    "f16": torch.randn(2, 2, 2).to(torch.float16),
    "f64": torch.randn(4).double(),
    "i64": torch.arange(6).reshape(2, 3),
    "flag": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
}


def test_reads_what_safetensors_wrote(tmp_path: Path) -> None:
    save_file(TENSORS, str(tmp_path / "m.safetensors"))
    f = SafetensorsFile(tmp_path / "m.safetensors")
    for key, value in TENSORS.items():
        whole = f.read(key, 0, value.numel()).reshape(value.shape)
        assert whole.dtype == value.dtype and torch.equal(whole, value), key
    assert torch.equal(f.read("f32", 4, 9), TENSORS["f32"].reshape(-1)[4:9])
    f.close()


def test_writer_places_chunks_in_any_order(tmp_path: Path) -> None:
    plan = [(k, tuple(v.shape), v.dtype) for k, v in TENSORS.items()]
    writer = SafetensorsWriter(tmp_path / "out.safetensors", plan, {"note": "hi"})
    for key, value in reversed(TENSORS.items()):
        flat = value.reshape(-1)
        write = writer.sink(key, tuple(value.shape), value.dtype)
        half = flat.numel() // 2
        write(slice(half, flat.numel()), flat[half:])
        write(slice(0, half), flat[:half])
    writer.close()
    loaded = load_file(str(tmp_path / "out.safetensors"))
    for key, value in TENSORS.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_writer_refuses_an_incomplete_file(tmp_path: Path) -> None:
    writer = SafetensorsWriter(tmp_path / "out.safetensors", [("a", (4,), torch.float32)])
    writer.sink("a", (4,), torch.float32)(slice(0, 2), torch.ones(2))
    with pytest.raises(RuntimeError, match="not written completely"):
        writer.close()


def test_a_truncated_file_is_named(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(100)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"bad\.safetensors.*not a valid safetensors"):
        SafetensorsFile(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        SafetensorsFile(tmp_path / "junk.safetensors")


def _llama() -> nn.Module:
    torch.manual_seed(0)
    return tiny_llama(16, max_position_embeddings=16, tie_word_embeddings=False).eval()


def test_hf_directories_sharded_and_not(tmp_path: Path) -> None:
    model = _llama()
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "shards", max_shard_size="10KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    expected = model.state_dict()
    for folder in ("one", "shards"):
        source = open_source(tmp_path / folder)
        assert isinstance(source, SafetensorsSource)
        assert set(source) == set(expected)
        for key in expected:
            assert torch.equal(source[key], expected[key]), key
        source.close()


def test_torch_bin_files(tmp_path: Path) -> None:
    state = {"a": torch.randn(3), "b": torch.arange(4)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    source = open_source(tmp_path)
    assert isinstance(source, TorchSource)
    assert torch.equal(source["a"], state["a"]) and torch.equal(source["b"], state["b"])


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)


def _base() -> MLP:
    torch.manual_seed(0)
    return MLP()


def _lora_model(config: LoraConfig) -> nn.Module:
    model = _base()
    inject(model, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    return model


def test_lightning_checkpoint_with_lora_is_folded(tmp_path: Path) -> None:
    config = LoraConfig(r=2, alpha=4, target_modules=["fc1"])
    model = _lora_model(config)
    save_adapter(model, tmp_path / "adapter")
    checkpoint = {
        "epoch": 1,
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {
            "adapter": {
                "class_path": "core.adapters.LoraConfig",
                "init_args": {"target_modules": ["fc1"], "r": 2, "alpha": 4.0},
            }
        },
    }
    checkpoint["state_dict"]["regularizer.anchor"] = torch.zeros(1)  # outside the model
    torch.save(checkpoint, tmp_path / "last.ckpt")
    source = open_source(tmp_path / "last.ckpt")
    expected = merge_adapter_into_base(_base().state_dict(), tmp_path / "adapter")
    assert set(source) == set(expected)
    for key in expected:
        torch.testing.assert_close(source[key], expected[key])
    # reading a row range matches the whole tensor
    reader = source.reader("fc1.weight")
    torch.testing.assert_close(reader.read(5, 30), expected["fc1.weight"].reshape(-1)[5:30])


def test_checkpoint_with_lora_but_no_config_is_explained(tmp_path: Path) -> None:
    model = _lora_model(LoraConfig(r=2, target_modules=["fc1"]))
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
        tmp_path / "x.ckpt",
    )
    with pytest.raises(ValueError, match="no adapter config"):
        open_source(tmp_path / "x.ckpt")


def test_adapter_directory_reads_as_base_plus_delta(tmp_path: Path) -> None:
    model = _lora_model(LoraConfig(r=2, target_modules=["fc1", "head"], use_dora=True))
    save_adapter(model, tmp_path / "adapter")
    save_file(_base().state_dict(), str(tmp_path / "base.safetensors"))
    base = open_source(tmp_path / "base.safetensors")
    source = open_source(tmp_path / "adapter", base=base)
    assert isinstance(source, AdapterSource)
    expected = merge_adapter_into_base(_base().state_dict(), tmp_path / "adapter")
    for key in expected:
        torch.testing.assert_close(source[key], expected[key])
    torch.testing.assert_close(
        source.reader("head.weight").read(3, 17), expected["head.weight"].reshape(-1)[3:17]
    )


def test_adapter_directory_errors(tmp_path: Path) -> None:
    model = _lora_model(LoraConfig(r=2, target_modules=["fc1"]))
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="set base"):
        open_source(tmp_path / "adapter")
    save_file({"fc1.weight": torch.zeros(8, 7)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=r"fc1\.weight.*shape"):
        open_source(tmp_path / "adapter", base=open_source(tmp_path / "wrong.safetensors"))


def test_unknown_inputs_are_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no model"):
        open_source(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a known model format"):
        open_source(tmp_path / "x.txt")


@pytest.mark.parametrize(
    ("output", "relation"),
    [
        ("in/a.safetensors", "is"),
        ("in", "contains"),
        (".", "contains"),
        ("in/hf/sub/merged", "lies inside"),
        ("in/hf", "is"),
        ("in/../in/hf", "is"),
        ("link_to_hf/merged", "lies inside"),
        ("link_to_in", "contains"),
    ],
)
def test_an_output_overlapping_an_input_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, relation: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in" / "hf" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "link_to_hf").symlink_to(tmp_path / "in" / "hf")
    (tmp_path / "link_to_in").symlink_to(tmp_path / "in")
    inputs = [None, "in/a.safetensors", str(tmp_path / "in" / "hf")]
    with pytest.raises(ValueError, match=rf"^output '{re.escape(output)}' .*{relation} input"):
        check_output_apart(output, inputs)


@pytest.mark.parametrize(
    "output", ["in/a.safetensors.merged", "in/hf2", "in/h", "merged", "in/a", "link_to_in/new"]
)
def test_outputs_apart_from_the_inputs_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in" / "hf").mkdir(parents=True)
    (tmp_path / "in" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "link_to_in").symlink_to(tmp_path / "in")
    check_output_apart(output, ["in/a.safetensors", "in/hf"])


def test_a_full_disk_is_explained_and_other_errors_pass_through(tmp_path: Path) -> None:
    nbytes = plan_bytes([("w", (1024, 1024), torch.float32), ("b", (3,), torch.bfloat16)])
    assert nbytes == 4 * 2**20 + 6
    with pytest.raises(OutputWriteError) as info, explain_full_disk(tmp_path / "o", nbytes):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (
        f"no space left on the disk holding output '{tmp_path / 'o'}' while writing the merge "
        "(the merged files need about 4.0 MiB); free space there or choose an output on "
        "another disk, then rerun. Nothing was written."
    )
    with pytest.raises(PermissionError), explain_full_disk(tmp_path / "o"):
        raise PermissionError(errno.EACCES, "denied")


def test_the_refusal_shows_where_a_symlink_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    with pytest.raises(ValueError) as info:
        check_output_apart("link", ["in"])
    assert str(info.value).startswith(f"output 'link' (= '{tmp_path / 'in'}') is input 'in';")
    with pytest.raises(ValueError) as info:
        check_output_apart(".", ["in"])
    assert str(info.value).startswith("output '.' contains input 'in';")
