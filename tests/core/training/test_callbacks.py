"""Run-directory callbacks: atomic files, metrics.json, adapter export, predictions, manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file

from core.adapters import (
    AdapterBank,
    BottleneckConfig,
    LoraConfig,
    adapter_state_dict,
    load_adapter,
)
from core.training import AdapterExport, MetricsJson, PredictionsWriter
from core.training.callbacks import append_manifest, atomic_write, atomic_write_text, read_manifest
from core.training.checkpointing import AtomicCheckpointIO, LastStepCheckpoint

from .toys import ToyData, ToyModule, ToyNet, quiet_trainer


def _fit(tmp_path: Path, module: pl.LightningModule, stages=("fit",)) -> tuple[pl.Trainer, Path]:
    callbacks = [AdapterExport(), MetricsJson(), PredictionsWriter()]
    trainer = quiet_trainer(
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        limit_predict_batches=2,
        logger=CSVLogger(tmp_path, name=""),
        callbacks=callbacks,
    )
    data = ToyData()
    for stage in stages:
        getattr(trainer, stage)(module, datamodule=data)
    return trainer, Path(trainer.log_dir)


def test_adapter_export_writes_one_peft_folder_per_bank_adapter(tmp_path: Path) -> None:
    """A module serving an ``adapter_bank`` exports ``adapter/<name>/`` for each adapter."""
    module = ToyModule()
    bank = AdapterBank(module.model, BottleneckConfig(target_modules=["fc1"]), names=["a", "b"])
    module.__dict__["adapter_bank"] = bank  # the bank injected into module.model in place
    with torch.no_grad():
        for unit in (layer.adapters["b"] for layer in bank.layers):
            unit.adapter_up.weight.fill_(0.25)
    _, run_dir = _fit(tmp_path, module)
    adapter_dir = run_dir / "adapter"
    assert sorted(p.name for p in adapter_dir.iterdir()) == ["a", "b"]
    for name in ("a", "b"):
        written = load_file(adapter_dir / name / "adapter_model.safetensors")
        expected, _ = adapter_state_dict(module.model, name=name)
        assert set(written) == set(expected) and written
        for key, tensor in expected.items():
            assert torch.equal(written[key], tensor), key
    exports = [r for r in read_manifest(run_dir) if r["artifact"] == "adapter"]
    assert len(exports) == 1 and exports[0]["adapters"] == ["a", "b"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a.json", "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_adapter_export_writes_a_loadable_peft_adapter_once(tmp_path: Path) -> None:
    module = ToyModule(
        adapter=LoraConfig(r=2, target_modules=["fc1", "fc2"]), modules_to_save=["head"]
    )
    _, run_dir = _fit(tmp_path, module)
    adapter_dir = run_dir / "adapter"
    assert sorted(p.name for p in adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 2
    # Every tensor of the trained adapter is in the file, with the trained values.
    expected, _ = adapter_state_dict(module.model)
    written = load_file(adapter_dir / "adapter_model.safetensors")
    assert set(written) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(written[key], tensor), key
    # The head trained through modules_to_save is inside the adapter file, PEFT-keyed.
    assert {"base_model.model.head.weight", "base_model.model.head.bias"} <= set(written)
    assert torch.equal(written["base_model.model.head.weight"], module.model.head.weight.detach())
    # A fresh base model + the adapter (head included) reproduces the fine-tuned outputs.
    torch.manual_seed(0)
    fresh = ToyNet()
    load_adapter(fresh, adapter_dir)
    x = torch.randn(5, 6)
    module.eval()
    torch.testing.assert_close(fresh(x), module.model(x))
    exports = [r for r in read_manifest(run_dir) if r["artifact"] == "adapter"]
    assert len(exports) == 1 and exports[0]["rank"] == 0


def test_no_adapter_means_no_adapter_directory(tmp_path: Path) -> None:
    _, run_dir = _fit(tmp_path, ToyModule())
    assert not (run_dir / "adapter").exists()
    assert [r["artifact"] for r in read_manifest(run_dir)] == ["metrics"]


def test_metrics_json_has_one_section_per_stage(tmp_path: Path) -> None:
    trainer, run_dir = _fit(tmp_path, ToyModule(), stages=("fit", "validate", "test"))
    data = json.loads((run_dir / "metrics.json").read_text())
    assert set(data) == {"fit", "validate", "test"}
    assert {"train/loss", "val/loss", "val/acc"} <= set(data["fit"])
    assert data["fit"]["global_step"] == 3
    assert set(data["test"]) == {"test/loss", "test/acc", "epoch", "global_step"}
    assert data["test"]["test/acc"] == pytest.approx(trainer.callback_metrics["test/acc"].item())
    assert {"val/loss", "val/acc"} <= set(data["validate"])
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files


def test_predictions_writer_saves_predict_outputs(tmp_path: Path) -> None:
    _, run_dir = _fit(tmp_path, ToyModule(), stages=("predict",))
    saved = torch.load(run_dir / "predictions.pt", weights_only=True)
    assert len(saved["predictions"]) == 2
    assert saved["predictions"][0]["preds"].shape == (16,)


def test_the_adapters_partner_checkpoint_holds_the_same_step_and_weights(tmp_path: Path) -> None:
    """last.ckpt, named in the adapter's manifest line, is the fit's final state even when
    the best epoch came earlier (mode="max" on a falling loss: the first epoch is best)."""
    module = ToyModule(
        adapter=LoraConfig(r=2, target_modules=["fc1", "fc2"]), modules_to_save=["head"]
    )
    checkpoint = LastStepCheckpoint(monitor="val/loss", mode="max", save_last=True)
    trainer = quiet_trainer(
        max_epochs=3,
        limit_train_batches=3,
        limit_val_batches=2,
        enable_checkpointing=True,
        logger=CSVLogger(tmp_path, name=""),
        callbacks=[AdapterExport(), checkpoint],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=ToyData())
    (record,) = [r for r in read_manifest(trainer.log_dir) if r["artifact"] == "adapter"]
    partner = torch.load(record["checkpoint"], weights_only=True)
    assert Path(record["checkpoint"]).name == "last.ckpt"
    assert partner["global_step"] == record["global_step"] == trainer.global_step == 9
    assert torch.load(checkpoint.best_model_path, weights_only=True)["global_step"] == 3
    for name, value in module.state_dict().items():
        assert torch.equal(partner["state_dict"][name], value), name
    written = load_file(Path(record["path"]) / "adapter_model.safetensors")
    expected, _ = adapter_state_dict(module.model)
    assert all(torch.equal(written[k], v) for k, v in expected.items())


def test_manifest_lines_are_fsynced_and_a_torn_line_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    append_manifest(tmp_path, "metrics", tmp_path / "metrics.json", rank=0)
    assert synced  # the line (and the new manifest's folder entry) reached the disk
    with open(tmp_path / "manifest.jsonl", "a") as f:
        f.write('{"artifact": "adap')  # a kill in the middle of the next append
    with pytest.warns(UserWarning, match="skipped 1 line"):
        assert [r["artifact"] for r in read_manifest(tmp_path)] == ["metrics"]
    append_manifest(tmp_path, "predictions", tmp_path / "predictions.pt", rank=0)
    with pytest.warns(UserWarning, match="skipped 1 line"):
        records = read_manifest(tmp_path)
    assert [r["artifact"] for r in records] == ["metrics", "predictions"]
