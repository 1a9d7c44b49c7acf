"""RegularizerCallback: attaches to any FineTuneModule, logs penalties, hooks, checkpoints."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from core.regularizers import EWC, L2SP, HalfFineTuning, LwF, RegularizerCallback
from tests.core.training.toys import ToyData, ToyModule, quiet_trainer


def _trainer(callbacks, **kwargs) -> pl.Trainer:
    return quiet_trainer(
        callbacks=callbacks, **{"limit_train_batches": 3, "limit_val_batches": 1, **kwargs}
    )


def test_attached_penalties_are_added_and_logged_like_the_modules_own() -> None:
    module = ToyModule()
    l2sp, lwf = L2SP(alpha=5.0, head=[]), LwF(weight=2.0)
    l2sp.update(module.model)
    lwf.update(module.model)
    keys_before = set(module.state_dict())
    trainer = _trainer([RegularizerCallback([l2sp, lwf])])
    trainer.fit(module, datamodule=ToyData())
    m = trainer.callback_metrics
    assert m["train/reg/L2SP"].item() > 0 and m["train/reg/LwF"].item() > 0
    total = m["train/task_loss"] + m["train/reg/L2SP"] + m["train/reg/LwF"]
    assert m["train/loss"].item() == pytest.approx(total.item(), rel=1e-5)
    assert set(module.state_dict()) == keys_before  # the bare module's checkpoint layout
    assert module.regularizers == []  # detached at teardown


def test_not_yet_updated_regularizers_log_zero_and_update_on_fit_end_readies_them() -> None:
    module = ToyModule()
    ewc = EWC(lambda_=100.0, labels="true", max_samples=32)
    callback = RegularizerCallback([ewc], update_on_fit_end=True)
    trainer = _trainer([callback])
    trainer.fit(module, datamodule=ToyData())
    assert trainer.callback_metrics["train/reg/EWC"].item() == 0.0
    assert ewc.ready
    trainer = _trainer([callback])
    trainer.fit(module, datamodule=ToyData(seed=5))
    assert trainer.callback_metrics["train/reg/EWC"].item() > 0.0
    assert ewc.terms() == [0, 1]


def test_stage_hooks_freeze_the_hft_half_during_fit_and_restore_it() -> None:
    module = ToyModule()
    hft = HalfFineTuning(granularity="tensor", seed=0)
    mask = hft.mask(module.model)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    _trainer([RegularizerCallback([hft])]).fit(module, datamodule=ToyData())
    for name, p in module.model.named_parameters():
        assert torch.equal(p, before[name]) != mask[name], name
        assert p.requires_grad


def test_regularizer_state_is_in_the_checkpoint_and_loads_back(tmp_path) -> None:
    module = ToyModule()
    ewc = EWC(lambda_=1.0, labels="true")
    ewc.update(module.model, ToyData().train_dataloader())
    trainer = _trainer([RegularizerCallback([ewc])], max_steps=1)
    trainer.fit(module, datamodule=ToyData())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=False)
    fresh_ewc = EWC(lambda_=1.0, labels="true")
    fresh = RegularizerCallback([fresh_ewc])
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("RegularizerCallback")]
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh_ewc.penalty(module.model), ewc.penalty(module.model))


def test_registry_specs_are_built_so_a_yaml_can_name_methods() -> None:
    callback = RegularizerCallback(["l2sp", {"method": "ewc", "lambda_": 3.0}])
    l2sp, ewc = callback.regularizers
    assert isinstance(l2sp, L2SP) and isinstance(ewc, EWC) and ewc.lambda_ == 3.0
    assert callback.names == ["L2SP", "EWC"]
    with pytest.raises(ValueError, match="Unknown regularizer method 'ewk'"):
        RegularizerCallback(["ewk"])


def test_non_finetune_modules_and_objects_without_penalty_are_rejected() -> None:
    with pytest.raises(TypeError, match="penalty"):
        RegularizerCallback([object()])

    class Plain(pl.LightningModule):
        pass

    with pytest.raises(TypeError, match="FineTuneModule"):
        RegularizerCallback([L2SP()]).setup(None, Plain(), "fit")
