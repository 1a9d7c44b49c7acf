"""Report generation: the tiny recipe end to end (fit, then test: metrics, evaluation files,
report.md, the tokenizer in the checkpoint), fine-tuning from a checkpoint (`pretrained`),
options, and a data-dependent adapter calibrated on the app's batches."""

from __future__ import annotations

import json

import pytest
import torch

from apps.medical_cxr.metrics import CE_KEYS
from apps.medical_cxr.report_module import ReportGenModule
from apps.medical_cxr.train import main
from core.adapters import LoraConfig
from core.tokenizers import CHECKPOINT_KEY

from .tiny import TINY_ARCH, TINY_CONFIG, TRAINER


@pytest.mark.slow
def test_tiny_recipe_fits_then_tests_and_writes_the_run_directory(sft_run):
    cli, run_dir = sft_run
    assert isinstance(cli.model, ReportGenModule)
    assert cli.model.hparams["image_size"] == 32  # from data.image_size (linked)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fit"]["global_step"] == 4 and "val/token_loss" in metrics["fit"]
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", *CE_KEYS):
        assert 0.0 <= metrics["test"][f"test/{key}"] <= 1.0 or key == "CIDEr"
    out = run_dir / "eval" / "test_seed0"
    refs, hyps = (out / "refs.txt").read_text(), (out / "hyps.txt").read_text()
    assert len(refs.splitlines()) == len(hyps.splitlines()) == 16
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["ce_f1_micro"] == pytest.approx(metrics["test"]["test/ce_f1_micro"], abs=1e-6)
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# Chest X-ray report generation: test split, seed 0\n\n**Data:**")
    assert "16 studies, " in report and "uncertain labels count as 0." in report
    assert "| ce_f1_micro |" in report and "- generated:" in report
    for png in ("curves.png", "per_label_test.png", "examples_test.png"):
        assert f"]({png})" in report
        assert (run_dir / png).stat().st_size > 1000, png
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert isinstance(ckpt[CHECKPOINT_KEY]["json"], str)  # the tokenizer travels with it
    loaded = ReportGenModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    text = "heart size is normal ."
    assert loaded.tokenizer(text).input_ids == cli.model.tokenizer(text).input_ids


@pytest.mark.slow
def test_pretrained_starts_from_the_checkpoint_weights_and_tokenizer(sft_run):
    cli, run_dir = sft_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    module = ReportGenModule(**TINY_ARCH, pretrained=ckpt)
    trained = cli.model.model.state_dict()
    for name, value in module.model.state_dict().items():
        assert torch.equal(value, trained[name]), name
    assert module.tokenizer is not None and module.vocab_size == 200
    text = "no pleural effusion ."
    assert module.tokenizer(text).input_ids == cli.model.tokenizer(text).input_ids
    with pytest.raises(ValueError, match=r"model\.pretrained .* does not fit this network"):
        ReportGenModule(**{**TINY_ARCH, "decoder_hidden": 64}, pretrained=ckpt)


def test_options_are_checked_and_base_options_pass_through():
    module = ReportGenModule(**TINY_ARCH, monitor="val/token_acc", calibration_batches=2)
    assert module.monitor == "val/token_acc" and module.calibration_batches == 2
    assert module.hparams["monitor"] == "val/token_acc" and module.hparams["vit_dim"] == 32
    with pytest.raises(TypeError, match="loss"):  # fixed by the module: not an option
        ReportGenModule(**TINY_ARCH, loss=torch.nn.functional.mse_loss)
    with pytest.raises(ValueError, match=r"model\.uncertain_as"):
        ReportGenModule(**TINY_ARCH | {"uncertain_as": 2})
    with pytest.raises(ValueError, match=r"model\.label_loss_weight"):
        ReportGenModule(**TINY_ARCH | {"label_loss_weight": -1.0})
    with pytest.raises(ValueError, match=r"model\.max_text_tokens"):
        ReportGenModule(**TINY_ARCH | {"max_text_tokens": 2})


def test_encoder_adapter_per_part():
    module = ReportGenModule(
        **TINY_ARCH | {"encoder": "vit_tiny"},
        adapter=LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),
        encoder_adapter={"class_path": "core.adapters.SsfConfig",
                         "init_args": {"target_modules": ["qkv", "fc1"]}},
    )  # fmt: skip
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any("lora" in n and "decoder" in n for n in trainable)
    assert any("encoder" in n and "ssf" in n.lower() for n in trainable)
    assert all("lora" in n or "ssf" in n.lower() for n in trainable)


@pytest.mark.slow
def test_corda_lora_calibrates_on_report_batches(fast_embedded, tmp_path):
    """A data-dependent LoRA init (CorDA) runs the app's dict batches through the network."""
    cli = main(
        ["fit", "--config", str(TINY_CONFIG), "--model.init_args.adapter", "LoraConfig",
         "--model.init_args.adapter.init_args.r", "2",
         "--model.init_args.adapter.init_args.init", "corda",
         "--model.init_args.adapter.init_args.target_modules", "[q_proj, v_proj]",
         "--model.init_args.calibration_batches", "1",
         "--trainer.default_root_dir", str(tmp_path), *TRAINER]
    )  # fmt: skip
    assert cli.model.calibration_batches == 1
    assert (tmp_path / "version_0" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_after_encoder_epochs_the_encoder_is_frozen_and_read_once_per_study(
    fast_embedded, tmp_path
):
    from lightning.pytorch.callbacks import Callback

    snapshots: list[dict[str, torch.Tensor]] = []

    class Snapshot(Callback):
        def on_train_epoch_end(self, trainer, module):
            encoder = module.model.encoder.state_dict()
            state = {f"encoder.{k}": v.clone() for k, v in encoder.items()}
            state["label_head"] = module.model.label_head.weight.clone()
            state["projector"] = module.model.projector[0].weight.clone()
            snapshots.append(state)

    cli = main(
        ["--config", str(TINY_CONFIG), "--model.init_args.encoder_epochs", "1",
         "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2",
         "--trainer.default_root_dir", str(tmp_path), *TRAINER],
        run=False,
    )  # fmt: skip
    cli.trainer.callbacks.append(Snapshot())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    module = cli.model
    assert module.encoder_frozen and not module.model.encoder.training
    first, second, third = snapshots
    assert not torch.equal(first["projector"], second["projector"])  # the rest still trains
    for name in first:
        if name != "projector":  # encoder weights, batch-norm statistics, classifier
            assert torch.equal(second[name], third[name]), name
    batch = next(iter(cli.datamodule.val_dataloader()))
    cached = module.image_tokens(batch)
    assert len(module._token_cache) >= len(batch["study_id"])
    with torch.no_grad():
        assert torch.allclose(cached, module.model.encoder(batch["image"]), atol=1e-6)
    with pytest.raises(ValueError, match=r"model\.encoder_epochs"):
        ReportGenModule(**TINY_ARCH, encoder_epochs=-1)
    with pytest.raises(ValueError, match=r"model\.label_prompt needs .* model\.label_loss_weight"):
        ReportGenModule(**TINY_ARCH | {"label_loss_weight": 0.0})
