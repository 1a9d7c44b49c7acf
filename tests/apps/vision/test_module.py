import lightning.pytorch as pl
import pytest
import torch

from apps.vision.module import VisionModule
from core.adapters import LoraConfig

from .conftest import fit, quiet_trainer


def test_linear_probe_head_init_and_flyp_update_text_side(tiny_data, tiny_model_kwargs):
    pl.seed_everything(0)
    lp = VisionModule(head_init="linear_probe", lp_c=10.0, **tiny_model_kwargs)
    acc = lp.fit_linear_probe(tiny_data.train_dataloader())
    assert acc > 0.3  # chance is 0.1
    assert not torch.allclose(lp.model.head.weight, lp.initial_state["head.weight"])

    flyp = VisionModule(objective="flyp", mixup_weight=0.5, **tiny_model_kwargs)
    before = flyp.model.text_proj.weight.detach().clone()
    fit(flyp, tiny_data)
    assert not torch.equal(flyp.model.text_proj.weight, before)
    # after training, the head is the text side's zero-shot classifier
    ref = flyp.model.logit_scale * flyp.model.zero_shot_weights()
    assert torch.allclose(flyp.model.head.weight, ref, atol=1e-6)


def test_bad_module_options(tiny_model_kwargs):
    with pytest.raises(ValueError, match=r"needs model\.objective: flyp"):
        VisionModule(mixup_weight=0.5, **tiny_model_kwargs)
    with pytest.raises(ValueError, match=r"model\.backbone='resnet'"):
        VisionModule(backbone="resnet", **tiny_model_kwargs)
    with pytest.raises(ValueError, match="must contain exactly one"):
        VisionModule(templates=["no placeholder"], **tiny_model_kwargs)


def test_base_options_pass_through_to_fine_tune_module(tiny_model_kwargs):
    module = VisionModule(
        monitor="val/acc",
        calibration_batches=3,
        adapter=LoraConfig(r=2, target_modules=["image_proj"]),
        modules_to_save=["head"],
        **tiny_model_kwargs,
    )
    assert module.monitor == "val/acc" and module.calibration_batches == 3
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".head." in f".{n}" for n in trainable), trainable
    # the module's own options and the base options are both saved hyperparameters
    hp = module.hparams
    assert hp["monitor"] == "val/acc" and hp["embed_dim"] == tiny_model_kwargs["embed_dim"]
    assert hp["method"] == "finetuned" and "model" not in hp


def test_test_scores_shifts_and_reports_them(tiny_data, tiny_model_kwargs, tmp_path):
    pl.seed_everything(0)
    module = VisionModule(**{**tiny_model_kwargs, "method": "ft", "wiseft_alphas": [0.0, 1.0]})
    trainer = quiet_trainer(max_steps=2, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=tiny_data)
    tuned = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.test(module, datamodule=tiny_data, verbose=False)
    result = module.robustness
    assert [r["name"] for r in result.summary_rows()] == ["zeroshot", "ft", "wiseft_chosen"]
    ft = next(r for r in result.rows if r["name"] == "ft")
    # the tested weights' ID accuracy is the logged test accuracy, and they are kept
    assert ft["id"] == pytest.approx(float(trainer.callback_metrics["test/acc"]), abs=1e-6)
    for k, v in module.model.state_dict().items():
        assert torch.equal(v, tuned[k]), k
    assert not list(tmp_path.iterdir())  # without a logger there is no run directory
    report = module.test_report()
    assert report.title == "Vision: ft under distribution shift"
    assert list(report.sections) == ["Metrics", "ID / OOD accuracy", "WiSE-FT", "Calibration"]
    assert set(report.figures) == {"frontier", "reliability"}
    text = report.markdown()
    assert "| ft |" in text and "![frontier](frontier.png)" in text
    assert "## Figures" not in text  # every figure is placed in its section
