"""The command line: every recipe instantiates without running, the help lists the base
options and adapter methods of the module classes, and the options model and data share are
set once, on the data."""

from __future__ import annotations

import pytest

from apps.medical_cxr.classification_module import ClassifierModule
from apps.medical_cxr.report_module import ReportGenModule
from apps.medical_cxr.segmentation import SegmentationModule
from apps.medical_cxr.train import DEFAULT_CONFIG, LINKS, main
from core.training import UsageError, tiny_config

from .tiny import CONFIGS

#: Recipes that start from a checkpoint of another run (test_preference_module has them).
SECOND_STAGE = {"preference.yaml"}


@pytest.mark.parametrize(
    "recipe", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in SECOND_STAGE)
)
def test_every_recipe_instantiates_without_running(recipe, tmp_path):
    args = ["--config", str(CONFIGS / recipe), "--trainer.default_root_dir", str(tmp_path)]
    cli = main(args, run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None
    assert not any(tmp_path.iterdir())  # nothing written


def test_tiny_recipe_is_found_where_the_contract_looks():
    assert tiny_config("apps.medical_cxr") == CONFIGS / "tiny.yaml"


def test_default_run_is_report_generation_at_the_data_image_size(tmp_path):
    cli = main(["--trainer.default_root_dir", str(tmp_path)], run=False)
    assert type(cli.model) is ReportGenModule and cli.datamodule.source == "embedded"
    assert cli.model.image_size == cli.datamodule.image_size == 128
    assert cli.model.monitor == "val/loss" and cli.model.calibration_batches == 8


def test_shared_options_are_set_on_the_data_only(tmp_path):
    root = ["--trainer.default_root_dir", str(tmp_path)]
    cli = main([*root, "--data.image_size", "32", "--data.uncertain_as", "1"], run=False)
    assert cli.model.image_size == 32 and cli.model.uncertain_as == 1
    for target in LINKS.values():
        option = "--" + target.replace("model.", "model.init_args.")
        with pytest.raises(UsageError, match=rf"{target} is set from data\."):
            main([*root, option, "32" if "size" in target else "1"], run=False)
    # A module without the option (segmentation has its own input size) is not linked.
    seg = main([*root, "--config", str(CONFIGS / "segmentation.yaml")], run=False)
    assert isinstance(seg.model, SegmentationModule) and seg.model.input_size == 128


def test_base_options_are_options_of_every_module(tmp_path):
    cli = main(
        ["--config", str(CONFIGS / "classification.yaml"), "--trainer.default_root_dir",
         str(tmp_path), "--model.init_args.monitor", "val/auroc",
         "--model.init_args.calibration_batches", "3"],
        run=False,
    )  # fmt: skip
    assert isinstance(cli.model, ClassifierModule)
    assert cli.model.monitor == "val/auroc" and cli.model.calibration_batches == 3
    with pytest.raises(SystemExit):  # the modules fix their loss: not an option
        main(["--model.init_args.loss", "torch.nn.functional.mse_loss"], run=False)


@pytest.mark.parametrize(
    "module", ["ReportGenModule", "ClassifierModule", "PreferenceModule", "SegmentationModule"]
)
def test_help_lists_base_options_and_adapter_methods(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", module])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("adapter", "monitor", "calibration_batches", "optimizer", "pretrained"):
        assert f"--model.{option} " in text, (module, option)
    assert "--model.loss " not in text  # each module fixes its loss
    if module != "SegmentationModule":
        assert "--model.encoder_pretrained " in text and "--model.encoder_adapter " in text


def test_fit_help_names_the_module_classes_and_data_options(capsys):
    """The config picks the module class, so ``fit --help`` lists the classes; each class's
    options (adapter methods included) are in ``--model.help <Class>`` (above)."""
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = "".join(capsys.readouterr().out.split())  # help wraps long names anywhere
    assert "--model.help" in text and "--data.source" in text and "--data.image_size" in text
    for name in ("report_module.ReportGenModule", "classification_module.ClassifierModule"):
        assert f"apps.medical_cxr.{name}" in text
    assert "data.image_size-->model.init_args.image_size" in text


def test_default_config_is_the_apps(tmp_path):
    assert DEFAULT_CONFIG == CONFIGS / "default.yaml"
