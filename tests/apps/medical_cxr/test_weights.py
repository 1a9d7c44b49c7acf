"""Local weights: checkpoints read with clear errors, the architecture under old and new
names, the network state loaded whole, state-dict files for a backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apps.medical_cxr.weights import architecture, load_network_state, load_state, read_checkpoint


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained .* does not exist"):
        read_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot be read as a checkpoint"):
        read_checkpoint(tmp_path / "text.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match=r"not a Lightning checkpoint"):
        read_checkpoint(tmp_path / "plain.ckpt")
    torch.save({"state_dict": {"model.w": torch.ones(2)}}, tmp_path / "ok.ckpt")
    assert torch.equal(
        read_checkpoint(tmp_path / "ok.ckpt")["state_dict"]["model.w"], torch.ones(2)
    )


def test_architecture_maps_the_old_names():
    ckpt = {
        "hyper_parameters": {
            "decoder_path": "/lm",
            "encoder_checkpoint": None,
            "vit_dim": 8,
            "lr": 1,
        }
    }
    keys = ["decoder_pretrained", "encoder_pretrained", "vit_dim", "patch_size"]
    expected = {"decoder_pretrained": "/lm", "encoder_pretrained": None, "vit_dim": 8}
    assert architecture(ckpt, keys) == expected


def test_load_network_state():
    torch.manual_seed(0)
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()} | {"x.y": 1}}
    load_network_state(target, ckpt, "a.ckpt")
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)
    with pytest.raises(ValueError, match=r"does not fit this network"):
        load_network_state(nn.Linear(4, 2), ckpt, "a.ckpt")
    adapted = {"state_dict": {"model.fc.base_layer.weight": torch.zeros(2, 3)}}
    with pytest.raises(ValueError, match=r"holds adapter layers"):
        load_network_state(target, adapted, "a.ckpt")


def test_load_state_from_torch_and_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = nn.Linear(3, 2)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        target = nn.Linear(3, 2)
        load_state(target, tmp_path / name, "model.encoder_pretrained")
        assert torch.equal(target.weight, source.weight), name
    with pytest.raises(ValueError, match=r"matches none of the model's parameters"):
        load_state(nn.Sequential(nn.Linear(3, 2)), tmp_path / "w.pt", "model.encoder_pretrained")
    with pytest.raises(FileNotFoundError, match=r"model\.encoder_pretrained"):
        load_state(source, tmp_path / "none.pt", "model.encoder_pretrained")
