"""run_cli end to end on the core's example app: no-arg run, overrides, help, errors, resume,
and DDP with two CPU processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.adapters import adapter_state_dict
from core.examples.data import DigitsDataModule
from core.examples.module import DigitsClassifier
from core.examples.train import main
from core.training import read_manifest
from core.training.cli import (
    fits_then_tests,
    subcommand_index,
    tiny_config,
    with_default_config,
)
from core.training.run_files import AtomicCSVLogger
from tests.core.training.toys import trainer_args
from tests.runs import REPO, assert_files, run_python


def fast(root: Path, epochs: int = 1) -> list[str]:
    """Options for a run of seconds writing under ``root``."""
    return [
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
    ]


def test_no_argument_run_fits_then_tests_into_one_run_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main([])
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["examples"]
    assert [p.name for p in (tmp_path / "runs" / "examples").iterdir()] == ["version_0"]
    run_dir = tmp_path / "runs" / "examples" / "version_0"
    assert Path(cli.trainer.log_dir).resolve() == run_dir.resolve()
    assert_files(run_dir, "checkpoints/last.ckpt", "checkpoints/best.ckpt")
    assert_files(run_dir, "adapter/adapter_config.json", "adapter/adapter_model.safetensors")
    assert_files(run_dir, "metrics.json", "metrics.csv", "hparams.yaml", "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"fit", "test"}
    assert metrics["fit"]["epoch"] == 8  # the default config's max_epochs
    # LoRA + head on the frozen random MLP learns the digits well above chance (10%).
    assert metrics["test"]["test/acc"] > 0.8
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "val/loss", "test/acc"} <= set(header)
    assert json.loads((run_dir / "adapter/adapter_config.json").read_text())["peft_type"] == "LORA"


@pytest.mark.parametrize(
    "option",
    ["--model.adapter.init_args.r", "--model.adapter.r"],
    ids=["init_args", "short"],
)
def test_dotted_overrides_change_values(tmp_path, option) -> None:
    cli = main(
        [
            "fit",
            *fast(tmp_path),
            option,
            "4",
            "--model.optimizer.init_args.lr",
            "0.05",
            "--data.batch_size",
            "32",
        ]
    )
    assert cli.model.adapter_config.r == 4
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)
    assert cli.datamodule.batch_size == 32
    run_dir = Path(cli.trainer.log_dir)
    assert json.loads((run_dir / "adapter/adapter_config.json").read_text())["r"] == 4
    # Untouched values still come from the app's default config.
    assert cli.model.adapter_config.target_modules == ["fc1", "fc2"]
    assert cli.model.modules_to_save == ["head"]


def test_a_config_file_layers_over_the_default_config(tmp_path) -> None:
    extra = tmp_path / "ssf.yaml"
    extra.write_text(
        "model:\n  adapter:\n    class_path: core.adapters.SsfConfig\n"
        "    init_args:\n      target_modules: [fc2]\n"
    )
    cli = main(["fit", "--config", str(extra), *fast(tmp_path)])
    assert type(cli.model.adapter_config).__name__ == "SsfConfig"
    assert cli.model.hparams["hidden_size"] == 64  # from configs/default.yaml


def test_help_lists_the_adapter_methods_and_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for expected in ["--model.adapter", "LoraConfig", "SsfConfig", "use_dora", "use_rslora"]:
        assert expected in out, expected
    with pytest.raises(SystemExit):
        main(["fit", "--model.adapter.help", "LoraConfig"])
    assert "--model.adapter.use_dora" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--trainer.max_epochs", "many"], ["trainer.max_epochs", "many"]),
        (["--model.adapter.init_args.rank", "4"], ["rank"]),
        (["--model.adapter", "NoSuchAdapter"], ["model.adapter", "NoSuchAdapter"]),
    ],
    ids=["wrong-type", "unknown-option", "unknown-adapter"],
)
def test_bad_config_value_is_a_clear_parse_error(tmp_path, capsys, args, named) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *fast(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for text in named:
        assert text in err
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.adapter.init_args.r", "0"], r"r=0 must be > 0"),
        (["--model.modules_to_save", "[haed]"], r"modules_to_save=\['haed'\] matched no"),
    ],
    ids=["lora-rank", "modules-to-save"],
)
def test_bad_value_caught_by_the_model_names_it(tmp_path, args, message) -> None:
    with pytest.raises(ValueError, match=message):
        main(["fit", *fast(tmp_path), *args])
    assert not any(tmp_path.iterdir())


def test_missing_default_config_is_a_clear_error(tmp_path) -> None:
    from core.training import run_cli

    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        run_cli(DigitsClassifier, DigitsDataModule, tmp_path / "nope.yaml", args=["fit"])


def test_default_config_goes_right_after_the_subcommand() -> None:
    assert with_default_config(["fit", "--x", "1"], "d.yaml") == [
        "fit",
        "--config",
        "d.yaml",
        "--x",
        "1",
    ]
    assert with_default_config(["--help"], "d.yaml") == ["--help"]
    # A value that happens to be a subcommand's name is not the subcommand.
    argv = ["--trainer.default_root_dir", "test", "fit"]
    assert with_default_config(argv, "d.yaml") == [*argv, "--config", "d.yaml"]


def test_which_arguments_fit_then_test() -> None:
    assert subcommand_index(["--config", "x.yaml", "validate"]) == 2
    assert subcommand_index(["--trainer.default_root_dir=fit", "test"]) == 1
    assert subcommand_index(["--trainer.default_root_dir", "test"]) is None
    assert fits_then_tests([]) and fits_then_tests(["--config", "tiny.yaml"])
    assert not fits_then_tests(["test", "--ckpt_path", "x.ckpt"])
    assert not fits_then_tests(["--help"])


def test_options_without_a_subcommand_fit_then_test_in_one_run_dir(tmp_path) -> None:
    cli = main(
        ["--config", str(tiny_config("core.examples")), "--trainer.default_root_dir", str(tmp_path)]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["version_0"]
    run_dir = tmp_path / "version_0"
    assert isinstance(cli.trainer.logger, AtomicCSVLogger)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"fit", "test"} and metrics["fit"]["global_step"] == 1
    for name in ["config.yaml", "hparams.yaml", "metrics.csv", "report.md", "confusion.png"]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    artifacts = [r["artifact"] for r in read_manifest(run_dir)]
    assert artifacts == ["adapter", "metrics", "metrics", "report"]


def test_top_level_help_lists_the_subcommands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(sub in out for sub in ("fit", "validate", "test", "predict"))


def test_run_false_instantiates_a_recipe_without_running(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(
        ["--config", str(tiny_config("core.examples")), "--model.hidden_size", "16"], run=False
    )
    assert isinstance(cli.model, DigitsClassifier) and cli.model.hparams["hidden_size"] == 16
    assert isinstance(cli.datamodule, DigitsDataModule) and cli.datamodule.batch_size == 16
    assert cli.trainer.limit_train_batches == 1 and cli.trainer.global_step == 0
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(ValueError, match="drop the subcommand 'fit'"):
        main(["fit"], run=False)


def test_tiny_config_is_found_or_named(tmp_path) -> None:
    assert tiny_config("core.examples") == REPO / "core" / "examples" / "configs" / "tiny.yaml"
    with pytest.raises(FileNotFoundError, match=r"configs/tiny\.yaml' is missing"):
        tiny_config("core.training")
    with pytest.raises(FileNotFoundError, match="not an importable package"):
        tiny_config("no_such_package_here")


def test_regularizers_are_configurable_from_the_command_line(tmp_path) -> None:
    cli = main(
        [
            "fit",
            *fast(tmp_path),
            "--model.regularizers+",
            "tests.core.training.toys.ConstantPenalty",
            "--model.regularizers.value",
            "0.75",
        ]
    )
    assert cli.trainer.callback_metrics["train/reg/ConstantPenalty"].item() == pytest.approx(0.75)


def test_resume_from_last_checkpoint_continues_training(tmp_path) -> None:
    first = main(["fit", *fast(tmp_path, epochs=1)])
    first_dir = Path(first.trainer.log_dir)
    last = first_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    second = main(["fit", *fast(tmp_path, epochs=2), "--ckpt_path", str(last)])
    second_dir = Path(second.trainer.log_dir)
    assert second_dir != first_dir and second_dir.parent == first_dir.parent
    metrics = json.loads((second_dir / "metrics.json").read_text())
    assert metrics["fit"]["epoch"] == 2
    assert metrics["fit"]["global_step"] == 6  # 3 restored + 3 new steps
    assert metrics["fit"]["ckpt_path"] == str(last)
    assert torch.load(second_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_predict_subcommand_writes_predictions(tmp_path) -> None:
    fitted = main(["fit", *fast(tmp_path)])
    last = Path(fitted.trainer.log_dir) / "checkpoints" / "last.ckpt"
    cli = main(
        [
            "predict",
            *fast(tmp_path),
            "--trainer.limit_predict_batches",
            "2",
            "--ckpt_path",
            str(last),
        ]
    )
    saved = torch.load(Path(cli.trainer.log_dir) / "predictions.pt", weights_only=True)
    assert [p["preds"].shape[0] for p in saved["predictions"]] == [64, 64]


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_the_adapter_once(tmp_path) -> None:
    root = tmp_path / "runs"
    ddp = trainer_args(strategy="ddp", devices=2, accelerator="cpu", max_epochs=1)
    quiet = trainer_args(default_root_dir=root, enable_progress_bar=False)
    proc = run_python(["-m", "core.examples.train", "fit", *ddp, *quiet], tmp_path, timeout=600)
    output = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in output  # two processes joined the gloo group
    assert [p.name for p in root.iterdir()] == ["version_0"]
    run_dir = root / "version_0"

    # The data were split over 2 ranks: one epoch took ceil(ceil(n / 2) / batch) steps.
    data = DigitsDataModule()
    data.setup()
    expected_steps = math.ceil(math.ceil(len(data.train_set) / 2) / data.batch_size)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == expected_steps

    # Written once, by rank 0.
    exports = [r for r in read_manifest(run_dir) if r["artifact"] == "adapter"]
    assert len(exports) == 1 and exports[0]["rank"] == 0

    # Complete, and equal to the weights in the Lightning checkpoint.
    module = DigitsClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    expected, config = adapter_state_dict(module.model)
    written = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert set(written) == set(expected) and len(written) == 6  # 2 x (A, B) + head
    for key, tensor in expected.items():
        assert torch.equal(written[key], tensor), key
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text()) == config
    assert torch.equal(
        written["base_model.model.head.weight"], ckpt["state_dict"]["model.head.weight"]
    )


def test_help_lists_the_adapter_methods_where_the_config_picks_the_class(
    tmp_path, capsys, monkeypatch
) -> None:
    from core.training import FineTuneModule, run_cli
    from core.training.cli import adapter_methods_help

    monkeypatch.setenv("COLUMNS", "1000")  # no option name or default broken across lines
    config = tmp_path / "picked.yaml"
    config.write_text("model:\n  class_path: core.examples.module.DigitsClassifier\n")
    summary = " ".join(adapter_methods_help().split())

    def option_help(args: list[str], option: str) -> str:
        """The help ``args`` print for ``option`` (up to the next option), on one line."""
        with pytest.raises(SystemExit) as exit_info:
            run_cli(FineTuneModule, DigitsDataModule, config, args=args, subclass_mode=True)
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert " ".join(out.split()).count(summary) == 1, "the methods are listed once"
        start = out.index(f"\n  {option} ")
        return " ".join(out[start : out.index("\n  --", start + 1)].split())

    # fit --help: the option that picks the class lists the methods and how to set them.
    picker = option_help(["fit", "--help"], "--model")
    assert summary in picker and "--model.adapter <Name>" in picker
    assert "--model.adapter.init_args.<option>" in picker and "--model.help <Class>" in picker
    # fit --model.help <Class>: the class's adapter option lists them, as where it is fixed.
    class_help = ["fit", "--model.help", "core.examples.module.DigitsClassifier"]
    adapter = option_help(class_help, "--model.adapter")
    assert summary in adapter and "Pick one with --model.adapter <Name>" in adapter
