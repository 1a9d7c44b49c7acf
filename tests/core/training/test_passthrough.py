"""Base-argument pass-through: an app's module lists only its own arguments and forwards
``**kwargs`` to ``FineTuneModule``; jsonargparse follows the call, so every base option is
accepted, shown by ``--help``, saved in the checkpoint and restored on resume, where the
config fixes the module class and where the config picks it (``class_path``/``init_args``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from jsonargparse import ArgumentParser

from core.training import FineTuneModule, run_cli
from core.training.module import default_loss
from tests.core.training.toys import ToyData, ToyNet, toy_app_configs, trainer_args

#: FineTuneModule's own arguments (all but ``model``, which the subclasses build).
BASE_OPTIONS = (
    "adapter",
    "modules_to_save",
    "regularizers",
    "optimizer",
    "lr_scheduler",
    "loss",
    "monitor",
    "calibration_batches",
)


class PassModule(FineTuneModule):
    """Builds its network from its own argument and passes everything else through.

    Args:
        hidden: Width of the hidden layers.
    """

    def __init__(self, hidden: int = 8, **kwargs: Any) -> None:
        torch.manual_seed(0)
        super().__init__(model=ToyNet(hidden=hidden), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def shared_step(self, batch: Any, stage: str) -> dict[str, Any]:
        x, y = batch
        logits = self(x)
        if stage == "predict":
            return {"preds": logits.argmax(-1)}
        return {"loss": self.loss_fn(logits, y), "acc": (logits.argmax(-1) == y).float().mean()}


class DeeperModule(PassModule):
    """Two levels of pass-through, and one base argument with a default of its own.

    Args:
        tag: An argument of this level.
        monitor: Re-listed to change its default (the only way ``--help`` shows the new one).
    """

    def __init__(self, tag: str = "x", monitor: str = "val/acc", **kwargs: Any) -> None:
        self.tag = tag
        super().__init__(monitor=monitor, **kwargs)


class FixedLossModule(PassModule):
    """A module that has no use for ``loss``: it fixes it, so the option disappears."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(loss=default_loss, **kwargs)


def write_configs(tmp_path: Path) -> dict[bool, Path]:
    """``{subclass_mode: default config}``: the class fixed, or picked (``class_path``)."""
    return toy_app_configs(tmp_path, "tests.core.training.test_passthrough.PassModule", hidden=8)


FAST = trainer_args(max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1)
FAST += trainer_args(enable_progress_bar=False, enable_model_summary=False)

#: Base options set on the command line, and how each shows on the module.
GIVEN = [
    "--model.monitor",
    "val/acc",
    "--model.calibration_batches",
    "3",
    "--model.optimizer.lr",
    "0.05",
    "--model.lr_scheduler",
    "StepLR",
    "--model.lr_scheduler.step_size",
    "2",
    "--model.adapter",
    "LoraConfig",
    "--model.adapter.r",
    "2",
    "--model.adapter.target_modules",
    "[fc1]",
    "--model.modules_to_save",
    "[head]",
    "--model.regularizers+",
    "tests.core.training.toys.ConstantPenalty",
    "--model.loss",
    "torch.nn.functional.cross_entropy",
]


def run(subclass_mode: bool, config: Path, args: list[str]) -> Any:
    module_cls = FineTuneModule if subclass_mode else PassModule
    return run_cli(module_cls, ToyData, config, args=args, subclass_mode=subclass_mode)


@pytest.mark.parametrize("subclass_mode", [False, True], ids=["class-fixed", "class-picked"])
def test_base_options_reach_the_module_and_the_checkpoint(tmp_path, subclass_mode) -> None:
    config = write_configs(tmp_path)[subclass_mode]
    cli = run(
        subclass_mode, config, ["fit", *FAST, "--trainer.default_root_dir", str(tmp_path), *GIVEN]
    )
    module = cli.model
    assert type(module) is PassModule
    assert module.monitor == "val/acc" and module.calibration_batches == 3
    assert module.adapter_config.r == 2 and module.adapter_config.target_modules == ["fc1"]
    assert module.modules_to_save == ["head"]
    assert type(module.regularizers[0]).__name__ == "ConstantPenalty"
    assert module.loss_fn is torch.nn.functional.cross_entropy
    optimizer = cli.trainer.optimizers[0]
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.05)
    assert type(cli.trainer.lr_scheduler_configs[0].scheduler).__name__ == "StepLR"

    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    hparams = torch.load(last, weights_only=True)["hyper_parameters"]
    assert hparams["hidden"] == 8
    assert hparams["monitor"] == "val/acc" and hparams["calibration_batches"] == 3
    assert hparams["adapter"]["init_args"]["r"] == 2
    assert hparams["optimizer"]["init_args"]["lr"] == pytest.approx(0.05)
    assert hparams["lr_scheduler"]["init_args"]["step_size"] == 2
    assert hparams["modules_to_save"] == ["head"]
    # ...so the checkpoint alone rebuilds the module.
    loaded = PassModule.load_from_checkpoint(last)
    assert loaded.monitor == "val/acc" and loaded.adapter_config.r == 2
    assert torch.equal(loaded.model.head.weight, module.model.head.weight)


@pytest.mark.parametrize("subclass_mode", [False, True], ids=["class-fixed", "class-picked"])
def test_resume_keeps_the_base_options(tmp_path, subclass_mode) -> None:
    config = write_configs(tmp_path)[subclass_mode]
    root = ["--trainer.default_root_dir", str(tmp_path / "runs")]
    first = run(subclass_mode, config, ["fit", *FAST, *root, *GIVEN[:6]])
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    epochs = ["--trainer.max_epochs", "2"]
    second = run(subclass_mode, config, ["fit", *FAST, *root, *epochs, "--ckpt_path", str(last)])
    assert second.model.monitor == "val/acc" and second.model.calibration_batches == 3
    assert second.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)
    metrics = json.loads((Path(second.trainer.log_dir) / "metrics.json").read_text())
    assert metrics["fit"]["global_step"] == 4 and metrics["fit"]["ckpt_path"] == str(last)


@pytest.mark.parametrize("subclass_mode", [False, True], ids=["class-fixed", "class-picked"])
def test_help_lists_the_base_options(tmp_path, capsys, subclass_mode) -> None:
    config = write_configs(tmp_path)[subclass_mode]
    if subclass_mode:
        args = ["fit", "--model.help", "tests.core.training.test_passthrough.PassModule"]
    else:
        args = ["fit", "--help"]
    with pytest.raises(SystemExit) as exit_info:
        run(subclass_mode, config, args)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("hidden", *BASE_OPTIONS):
        assert f"--model.{name} " in out, name
    assert "Metric that ``ReduceLROnPlateau`` watches" in out  # the base class's own docs


def options_of(cls: type) -> dict[str, Any]:
    """``{option: default}`` of a class as jsonargparse sees it (groups such as ``optimizer``
    by name, default ``None``)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "m")
    defaults = parser.get_defaults().items()
    return {k.split(".")[1]: v if k.count(".") == 1 else None for k, v in defaults}


def test_pass_through_across_two_levels_and_a_changed_default() -> None:
    options = options_of(DeeperModule)
    assert {"tag", "hidden", *BASE_OPTIONS} <= set(options)
    assert options["monitor"] == "val/acc"  # the subclass's default is the one shown
    module = DeeperModule(tag="t", hidden=4, calibration_batches=2)
    assert module.monitor == "val/acc" and module.calibration_batches == 2
    assert module.hparams["tag"] == "t" and module.hparams["hidden"] == 4


def test_a_base_argument_the_subclass_fixes_is_not_an_option() -> None:
    options = options_of(FixedLossModule)
    assert "loss" not in options and "model" not in options
    assert {"hidden", "monitor", "adapter"} <= set(options)
    with pytest.raises(TypeError, match="loss"):
        FixedLossModule(loss=default_loss)
