"""The robotics Lightning module (apps/robotics/module.py).

What trains follows ``adapter`` / ``train_top``; the adapter's targets are filled from the
image tower's top; a checkpoint carries the normaliser, so a policy loaded from it acts
exactly as the trained one; bad options are clear errors. The end-to-end run (fit, closed-loop
test, report, adapter export) is the app contract's tiny run (tests/apps/test_contract.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.robotics.data import RoboticsDataModule
from apps.robotics.module import PolicyModule
from apps.robotics.policy import NEW_MODULES, TOP_PREFIX
from core.adapters import LoraConfig, SsfConfig
from tests.core.training.toys import quiet_trainer

#: A small random-tower policy (ImageNet weights are tested in test_policy.py).
SMALL = {"pretrained_towers": False, "num_keypoints": 8, "feature_dim": 32, "chunk_size": 4}


def trainable_names(module: PolicyModule) -> list[str]:
    return [n for n, p in module.model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("config", [LoraConfig(r=4), SsfConfig()], ids=["lora", "ssf"])
def test_adapter_targets_the_top_and_only_it_and_the_new_layers_train(config):
    module = PolicyModule(adapter=config, **SMALL)
    targets = module.adapter_config.target_modules
    assert targets and all(t.startswith(TOP_PREFIX) for t in targets)
    assert set(module.adapter_config.modules_to_save) >= set(NEW_MODULES)
    names = trainable_names(module)
    new = [n for n in names if n.startswith(NEW_MODULES)]
    adapted = [n for n in names if not n.startswith(NEW_MODULES)]
    assert new and adapted
    assert all(n.startswith(TOP_PREFIX) and ("lora_" in n or "ssf_" in n) for n in adapted)
    assert not any(n.startswith("encoder.image.trunk") for n in names)


def test_without_an_adapter_train_top_picks_what_trains():
    full = trainable_names(PolicyModule(adapter=None, train_top=True, **SMALL))
    heads_only = trainable_names(PolicyModule(adapter=None, train_top=False, **SMALL))
    assert any(n.startswith(TOP_PREFIX) for n in full)
    assert heads_only and all(n.startswith(NEW_MODULES) for n in heads_only)
    assert set(heads_only) < set(full)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"execution": "teleport"}, "model.execution"),
        ({"eval_conditions": ["whisper"]}, "model.eval_conditions"),
        ({"eval_episodes": 0}, "model.eval_episodes"),
        ({"head": "magic"}, "magic"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        PolicyModule(**{**SMALL, **options})


def test_a_checkpoint_restores_the_normaliser_and_the_policy_acts_the_same(tmp_path):
    data = RoboticsDataModule(
        episodes=3, chunk_size=4, batch_size=8, pretrained_trunk=False, cache_dir=str(tmp_path)
    )
    module = PolicyModule(adapter=LoraConfig(r=4), **SMALL)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert module.policy.normalizer is not None
    # the default per-step warm-up (100 steps) + cosine schedule: 2 steps taken
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    assert scheduler.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 3 / 100)
    path = tmp_path / "policy.ckpt"
    trainer.save_checkpoint(path)

    loaded = PolicyModule.load_from_checkpoint(path, weights_only=False)
    assert loaded.policy.normalizer.to_dict() == module.policy.normalizer.to_dict()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    proprio = rng.uniform(10, 80, (2, 2)).astype(np.float32)
    instructions = ["push the red block to the target zone", ""]
    np.testing.assert_allclose(
        loaded.policy.predict_chunk(images, proprio, instructions),
        module.policy.predict_chunk(images, proprio, instructions),
        atol=1e-5,
    )


def test_a_run_without_a_logger_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = RoboticsDataModule(
        episodes=2,
        chunk_size=4,
        batch_size=8,
        pretrained_trunk=False,
        cache_dir=str(tmp_path / "c"),
    )
    module = PolicyModule(adapter=None, eval_episodes=1, eval_envs=1, hz_steps=0, **SMALL)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, limit_test_batches=1)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data)
    assert "success/trained" in {k.removeprefix("test/") for k in trainer.callback_metrics}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_bad_augmentation_settings_name_the_option():
    with pytest.raises(ValueError, match=r"model\.word_dropout"):
        PolicyModule(word_dropout=1.0, **SMALL)
    with pytest.raises(ValueError, match=r"model\.instruction_augmentation"):
        PolicyModule(instruction_augmentation=1.5, **SMALL)


def test_instruction_augmentation_applies_to_training_batches_only(monkeypatch):
    module = PolicyModule(instruction_augmentation=1.0, **SMALL)
    seen: list[list[str]] = []
    monkeypatch.setattr(
        module.policy, "loss", lambda batch: seen.append(batch["instruction"]) or torch.zeros(())
    )
    instructions = ["push the block to the red target"] * 8
    module.shared_step({"instruction": instructions}, "train")
    module.shared_step({"instruction": instructions}, "val")
    assert all(text != instructions[0] and "red" in text for text in seen[0])
    assert seen[1] == instructions
