"""The encoder options' one place: both image tasks build the same encoder from them, load
whole-network weights (`pretrained`) before adapters, and export an encoder adapter."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from apps.medical_cxr.classification_module import ClassifierModule
from apps.medical_cxr.encoder_module import EncoderModule
from apps.medical_cxr.report_module import ReportGenModule
from core.adapters import LoraConfig, SsfConfig, adapter_names, load_adapter

from .tiny import TINY_ARCH

ENCODER = {"image_size": 32, "vit_dim": 32, "vit_depth": 1, "vit_heads": 2, "patch_size": 16}


def save(module: EncoderModule, path) -> str:
    """A Lightning checkpoint of ``module`` at ``path``."""
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


def test_both_tasks_build_the_same_encoder_from_the_same_options():
    torch.manual_seed(0)
    report = ReportGenModule(**TINY_ARCH | {"encoder": "vit_tiny"})
    torch.manual_seed(0)
    classifier = ClassifierModule(**ENCODER, encoder="vit_tiny")
    a, b = report.model.encoder.state_dict(), classifier.model.encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert report.image_size == classifier.image_size == 32


def test_pretrained_weights_load_before_the_adapter(tmp_path):
    torch.manual_seed(0)
    trained = ClassifierModule(**ENCODER)
    path = save(trained, tmp_path / "cls.ckpt")
    torch.manual_seed(1)
    module = ClassifierModule(
        **ENCODER, pretrained=path, adapter=LoraConfig(r=2, target_modules=["qkv"])
    )
    base = {
        k.replace(".base_layer", ""): v
        for k, v in module.model.state_dict().items()
        if "lora" not in k
    }
    for name, value in trained.model.state_dict().items():
        assert torch.equal(base[name], value), name
    adapted = save(module, tmp_path / "lora.ckpt")
    with pytest.raises(ValueError, match=r"holds adapter layers; merge them first"):
        ClassifierModule(**ENCODER, pretrained=adapted)
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained"):
        ClassifierModule(**ENCODER, pretrained=str(tmp_path / "none.ckpt"))


def test_encoder_adapter_is_injected_and_exported_after_fit(tmp_path):
    module = ClassifierModule(**ENCODER, encoder_adapter=SsfConfig(target_modules=["qkv"]))
    assert adapter_names(module.model.encoder) == ["encoder"]
    module.trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    module.on_fit_end()
    exported = ClassifierModule(**ENCODER)
    load_adapter(exported.model.encoder, tmp_path / "adapter_encoder", name="encoder")
    saved = {k: v for k, v in module.model.encoder.state_dict().items() if "ssf" in k.lower()}
    loaded = exported.model.encoder.state_dict()
    assert saved and all(torch.equal(v, loaded[k]) for k, v in saved.items())
    with pytest.raises(ValueError, match=r"model\.encoder_adapter"):
        ClassifierModule(**ENCODER, encoder_adapter=LoraConfig(target_modules=["no_such"]))
