"""FineTuneModule: what trains, what the optimizer sees, regularizers, logging, hparams."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import pytest
import torch

from core.adapters import LoraConfig
from core.training import FineTuneModule, coerce_adapter_config

from .toys import ConstantPenalty, HeadL2, ToyData, ToyModule, ToyNet, quiet_trainer

# Steps called directly, without a Trainer, make self.log() warn; that is expected here.
no_trainer = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def _trainer(**kwargs) -> pl.Trainer:
    return quiet_trainer(**{"limit_train_batches": 2, "limit_val_batches": 1, **kwargs})


def _optimizer_param_ids(module: FineTuneModule) -> set[int]:
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    return {id(p) for group in opt.param_groups for p in group["params"]}


def test_optimizer_holds_only_adapter_and_head_parameters() -> None:
    module = ToyModule(
        adapter=LoraConfig(r=2, target_modules=["fc1", "fc2"]), modules_to_save=["head"]
    )
    named = dict(module.named_parameters())
    expected = {n for n in named if ".lora_" in n or n.startswith("model.head.")}
    assert expected == {
        "model.fc1.adapters.default.lora_A.weight",
        "model.fc1.adapters.default.lora_B.weight",
        "model.fc2.adapters.default.lora_A.weight",
        "model.fc2.adapters.default.lora_B.weight",
        "model.head.weight",
        "model.head.bias",
    }
    assert _optimizer_param_ids(module) == {id(named[n]) for n in expected}
    assert not named["model.fc1.base_layer.weight"].requires_grad


def test_default_optimizer_is_adamw_with_lr_1e3() -> None:
    opt = ToyModule().configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_without_adapter_everything_trains_and_modules_to_save_makes_a_probe() -> None:
    full = ToyModule()
    assert all(p.requires_grad for p in full.parameters())
    probe = ToyModule(modules_to_save=["head"])
    trainable = {n for n, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"model.head.weight", "model.head.bias"}


def test_modules_to_save_matches_module_names() -> None:
    module = ToyModule(adapter=LoraConfig(r=2, target_modules=["fc1"]), modules_to_save=["fc2"])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert "model.fc2.weight" in trainable and "model.head.weight" not in trainable


def test_unknown_modules_to_save_entry_names_the_entry_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"modules_to_save=\['haed'\] matched no module.*head"):
        ToyModule(adapter=LoraConfig(r=2), modules_to_save=["haed"])


@no_trainer
def test_constant_penalty_is_added_to_the_training_loss() -> None:
    module = ToyModule(regularizers=[ConstantPenalty(2.5)])
    batch = _batch()
    task_loss = module.shared_step(batch, "train")["loss"]
    assert module.training_step(batch, 0).item() == pytest.approx(task_loss.item() + 2.5)


@no_trainer
def test_penalty_gradient_flows_into_parameters() -> None:
    batch = _batch()
    plain, regularized = ToyModule(seed=1), ToyModule(seed=1, regularizers=[HeadL2(0.5)])
    plain.training_step(batch, 0).backward()
    regularized.training_step(batch, 0).backward()
    w = plain.model.head.weight
    extra = regularized.model.head.weight.grad - w.grad
    torch.testing.assert_close(extra, 2 * 0.5 * w.detach())
    torch.testing.assert_close(regularized.model.fc1.weight.grad, plain.model.fc1.weight.grad)


def test_penalties_are_logged_each_and_in_the_total() -> None:
    module = ToyModule(regularizers=[ConstantPenalty(2.5), ConstantPenalty(1.0), HeadL2(0.1)])
    trainer = _trainer()
    trainer.fit(module, datamodule=ToyData())
    m = trainer.callback_metrics
    assert m["train/reg/ConstantPenalty_0"].item() == pytest.approx(2.5)
    assert m["train/reg/ConstantPenalty_1"].item() == pytest.approx(1.0)
    assert m["train/reg/HeadL2"].item() > 0
    total = m["train/task_loss"] + 3.5 + m["train/reg/HeadL2"]
    assert m["train/loss"].item() == pytest.approx(total.item(), rel=1e-5)
    assert {"val/loss", "val/acc", "train/acc"} <= set(m)


def test_module_regularizer_state_is_in_the_checkpoint_state_dict() -> None:
    module = ToyModule(regularizers=[HeadL2(0.25)])
    assert module.state_dict()["regularizer_modules.0.weight"].item() == 0.25
    assert module.regularizers[0].weight.item() == 0.25


def test_regularizer_without_penalty_is_rejected() -> None:
    with pytest.raises(TypeError, match="penalty"):
        ToyModule(regularizers=[object()])


def test_hyperparameters_are_plain_and_load_with_weights_only() -> None:
    module = ToyModule(adapter=LoraConfig(r=3, target_modules=["fc1"]), modules_to_save=["head"])
    hp = dict(module.hparams)
    assert "model" not in hp and "optimizer" not in hp  # objects stay out of hparams
    assert hp["adapter"]["class_path"] == f"{LoraConfig.__module__}.{LoraConfig.__qualname__}"
    assert hp["adapter"]["init_args"]["r"] == 3
    buffer = io.BytesIO()
    torch.save(hp, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == hp
    rebuilt = coerce_adapter_config(hp["adapter"])
    assert rebuilt == LoraConfig(r=3, target_modules=["fc1"])


def test_adapter_dict_forms_are_accepted() -> None:
    assert coerce_adapter_config({"method": "lora", "r": 4}) == LoraConfig(r=4)
    as_class_path = {"class_path": "core.adapters.LoraConfig", "init_args": {"r": 5}}
    assert coerce_adapter_config(as_class_path) == LoraConfig(r=5)
    with pytest.raises(ValueError, match=r"torch\.nn\.Linear"):
        coerce_adapter_config({"class_path": "torch.nn.Linear"})
    with pytest.raises(ValueError, match="Unknown adapter method"):
        coerce_adapter_config({"method": "lorra"})


def test_schedulers_are_wired_and_plateau_watches_the_monitor() -> None:
    from functools import partial

    step = ToyModule(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=2))
    cfg = step.configure_optimizers()
    assert isinstance(cfg["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert "monitor" not in cfg["lr_scheduler"]
    plateau = ToyModule(lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"


def test_no_trainable_parameters_is_a_clear_error() -> None:
    module = ToyModule()
    module.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        module.configure_optimizers()


@no_trainer
def test_shared_step_without_loss_is_a_clear_error() -> None:
    class NoLoss(ToyModule):
        def shared_step(self, batch, stage):
            return {"acc": torch.tensor(1.0)}

    with pytest.raises(KeyError, match="'loss' entry"):
        NoLoss().validation_step(_batch(), 0)


@no_trainer
def test_base_class_requires_shared_step() -> None:
    module = FineTuneModule(ToyNet())
    with pytest.raises(NotImplementedError, match="shared_step"):
        module.training_step(_batch(), 0)


def test_predict_step_returns_shared_step_output() -> None:
    module = ToyModule()
    out = module.predict_step(_batch(), 0)
    assert set(out) == {"preds"} and out["preds"].shape == (8,)


def test_checkpoint_round_trip_rebuilds_the_adapter(tmp_path) -> None:
    module = ToyModule(adapter=LoraConfig(r=2, target_modules=["fc1"]), modules_to_save=["head"])
    trainer = _trainer()
    trainer.fit(module, datamodule=ToyData())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ToyModule.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert loaded.adapter_config == LoraConfig(
        r=2, target_modules=["fc1"], modules_to_save=["head"]
    )
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_corda_adapter_is_calibrated_on_training_batches_and_reloads(tmp_path) -> None:
    config = LoraConfig(r=2, init="corda", target_modules=["fc1", "fc2"])
    module = ToyModule(adapter=config, calibration_batches=3)
    assert not hasattr(module.model.fc1, "adapters")  # waits for the data
    w0 = module.model.fc1.weight.detach().clone()
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, datamodule=ToyData())
    unit = module.model.fc1.adapters["default"]
    assert unit.init_A.abs().sum() > 0  # calibrated factors, not placeholders
    residual = module.model.fc1.base_layer.weight.detach()
    init_delta = unit.scaling * unit.init_B @ unit.init_A
    torch.testing.assert_close(residual + init_delta, w0, atol=1e-5, rtol=1e-5)
    trainer.save_checkpoint(tmp_path / "corda.ckpt")

    loaded = ToyModule.load_from_checkpoint(tmp_path / "corda.ckpt", weights_only=True)
    x = torch.randn(5, 6)
    module.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), module(x))


def test_calibration_batches_must_be_positive() -> None:
    with pytest.raises(ValueError, match="calibration_batches=0"):
        ToyModule(calibration_batches=0)
