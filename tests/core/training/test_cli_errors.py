"""Bad input to run_cli: one line ``error: ...`` naming the input and the fix, exit code 2, no
traceback unless asked for, and no run directory left behind (issue #20, items 4 and 5).

In process on the core's example app (``core.examples``); a few end-to-end runs of
``python -m core.examples.train`` check the exit codes and the environment variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import Namespace

from core.examples.data import DigitsDataModule
from core.examples.module import DigitsClassifier
from core.examples.train import DEFAULT_CONFIG, main
from core.training import FineTuneModule, run_cli
from core.training.ckpt_checks import (
    MODULE_CLASS_KEY,
    explicit_model_options,
    lookup,
)
from core.training.config_checks import yaml_files_in
from core.training.errors import (
    DEBUG_ENV,
    UsageError,
    debug_from_env,
    is_user_error,
    pop_debug_flag,
)
from core.training.run_dirs import RunDirGuard, holds_nothing_of_use
from tests.core.training.toys import ToyData, ToyModule, trainer_args

REPO = Path(__file__).resolve().parents[3]
FAST = trainer_args(
    max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False
)


def digits(args: list[str], **kwargs) -> object:
    """The example app's command line as the shell runs it (one-line errors, exit 2)."""
    return run_cli(
        DigitsClassifier, DigitsDataModule, DEFAULT_CONFIG, args=args, exit_on_error=True, **kwargs
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``last.ckpt`` of a two-step fit of the example app (hidden_size 64, LoRA r=8)."""
    root = tmp_path_factory.mktemp("trained")
    cli = main(["fit", *FAST, "--trainer.default_root_dir", str(root)])
    return Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"


def _rewrite(ckpt: Path, out: Path, **changes) -> Path:
    """A copy of ``ckpt`` with top-level keys changed (``None`` removes a key)."""
    data = torch.load(ckpt, weights_only=True)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    torch.save(data, out)
    return out


def _bad_inputs(tmp: Path, ckpt: Path) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (arguments after ``fit``, texts the error line must hold: input and fix)."""
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("model:\n  hidden_size: [1, 2\n")
    empty = tmp / "empty.ckpt"
    empty.write_bytes(b"")
    truncated = tmp / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:4000])
    not_a_ckpt = tmp / "notes.ckpt"
    not_a_ckpt.write_text("these are notes, not weights\n")
    return {
        "lora-r-0": (["--model.adapter.init_args.r", "0"], ["r=0", "must be > 0"]),
        "negative-lr": (
            ["--model.optimizer.init_args.lr", "-0.01"],
            ["--model.optimizer.init_args.lr=-0.01", "torch.optim.AdamW", "give a valid value"],
        ),
        "yaml-syntax": (
            ["--config", str(bad_yaml)],
            [str(bad_yaml), "line 3", "opened at line 2", "fix the YAML"],
        ),
        "missing-ckpt": (
            ["--ckpt_path", str(tmp / "nope.ckpt")],
            [f"--ckpt_path {tmp / 'nope.ckpt'}: no such file", "give the checkpoint"],
        ),
        "ckpt-is-a-directory": (
            ["--ckpt_path", str(ckpt.parent.parent)],
            ["is a directory", "give a .ckpt file in it", "last.ckpt"],
        ),
        "empty-ckpt": (["--ckpt_path", str(empty)], [str(empty), "empty file", "give another"]),
        "truncated-ckpt": (
            ["--ckpt_path", str(truncated)],
            [str(truncated), "cannot be read", "truncated", "give a complete .ckpt"],
        ),
        "not-a-ckpt": (
            ["--ckpt_path", str(not_a_ckpt)],
            [str(not_a_ckpt), "cannot be read", "give a complete .ckpt"],
        ),
        "conflicting-option": (
            ["--ckpt_path", str(ckpt), "--model.hidden_size", "32"],
            [
                "model.hidden_size=64 (you gave 32 with --model.hidden_size)",
                "drop those options",
                "leave out --ckpt_path",
            ],
        ),
    }


CASES = [
    "lora-r-0",
    "negative-lr",
    "yaml-syntax",
    "missing-ckpt",
    "ckpt-is-a-directory",
    "empty-ckpt",
    "truncated-ckpt",
    "not-a-ckpt",
    "conflicting-option",
]


def _assert_one_line(err: str, named: list[str]) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert err.rstrip().endswith(lines[0]), err  # the last thing printed
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run_dir(
    case, trained, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    args, named = _bad_inputs(tmp_path, trained)[case]
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        digits(["fit", *FAST, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    _assert_one_line(err, named)
    assert "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before  # no runs/examples/version_<n>


@pytest.mark.parametrize("case", CASES)
def test_debug_flag_adds_the_traceback(case, trained, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args, named = _bad_inputs(tmp_path, trained)[case]
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        digits(["fit", "--debug", *FAST, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    _assert_one_line(err, named)
    assert sorted(tmp_path.iterdir()) == before


def test_called_from_python_the_exception_propagates(trained, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"model\.hidden_size=64 \(you gave 32"):
        main(["fit", *FAST, "--ckpt_path", str(trained), "--model.hidden_size", "32"])
    with pytest.raises(UsageError, match=r"no such file"):
        main(["fit", "--ckpt_path", str(tmp_path / "nope.ckpt")])


def test_parse_errors_are_one_short_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args, named in [
        (["--model.nosuch", "3"], ["unrecognized arguments: --model.nosuch 3", "--help"]),
        (["--trainer.max_epochs", "many"], ["trainer.max_epochs", "many", "--help"]),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            digits(["fit", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err  # not the 80 lines of usage
        _assert_one_line(err, named)
    with pytest.raises(SystemExit):
        digits(["fit", "--debug", "--model.nosuch", "3"])
    assert "usage:" in capsys.readouterr().err  # --debug: jsonargparse's full usage
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ --ckpt_path of another app
def test_checkpoint_of_another_app_names_both_modules(
    trained, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert torch.load(trained, weights_only=True)[MODULE_CLASS_KEY] == (
        "core.examples.module.DigitsClassifier"
    )
    toy_config = tmp_path / "toy.yaml"
    toy_config.write_text("model:\n  seed: 0\ndata:\n  batch_size: 16\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            ToyModule,
            ToyData,
            toy_config,
            args=["test", "--ckpt_path", str(trained), "--trainer.default_root_dir", str(tmp_path)],
            app_name="toy",
            exit_on_error=True,
        )
    assert exit_info.value.code == 2
    _assert_one_line(
        capsys.readouterr().err,
        [
            f"--ckpt_path {trained} was written by core.examples.module.DigitsClassifier",
            "(app 'examples')",
            "runs tests.core.training.toys.ToyModule (app 'toy')",
            "give a checkpoint of this app",
            "python -m core.examples.train",
        ],
    )
    # Without the class (a checkpoint from before it was recorded): the hyperparameters tell.
    unstamped = _rewrite(trained, tmp_path / "old.ckpt", **{MODULE_CLASS_KEY: None})
    with pytest.raises(UsageError, match=r"hyperparameters do not fit ToyModule.*another app"):
        run_cli(ToyModule, ToyData, toy_config, args=["test", "--ckpt_path", str(unstamped)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.ckpt", "toy.yaml"]  # no runs/


def _subclass_config(tmp_path: Path) -> Path:
    """The example's default config with the module class named in it (subclass mode)."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    model = {"class_path": "core.examples.module.DigitsClassifier", "init_args": config["model"]}
    config["model"] = model
    path = tmp_path / "subclass.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_subclass_mode_accepts_only_modules_of_the_app(trained, tmp_path) -> None:
    config = _subclass_config(tmp_path)

    def run(args):
        return run_cli(FineTuneModule, DigitsDataModule, config, args=args, subclass_mode=True)

    foreign = _rewrite(
        trained, tmp_path / "toy.ckpt", **{MODULE_CLASS_KEY: "tests.core.training.toys.ToyModule"}
    )
    with pytest.raises(
        UsageError,
        match=r"written by tests\.core\.training\.toys\.ToyModule"
        r".*runs a module of core\.examples",
    ):
        run(["test", "--ckpt_path", str(foreign)])
    # The same class (saved outside subclass mode) is fine; a conflicting option is not.
    with pytest.raises(UsageError, match=r"model\.init_args\.hidden_size=64 \(you gave 16"):
        run(["test", "--ckpt_path", str(trained), "--model.init_args.hidden_size", "16"])
    cli = run(
        [
            "test",
            *FAST,
            "--trainer.limit_test_batches",
            "1",
            "--ckpt_path",
            str(trained),
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert cli.model.hparams["hidden_size"] == 64


# ---------------------------------------------------------------- options vs the checkpoint
def test_an_option_equal_to_the_checkpoint_value_resumes(trained, tmp_path) -> None:
    cli = main(
        [
            "fit",
            *FAST,
            "--trainer.max_epochs",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--ckpt_path",
            str(trained),
            "--model.hidden_size",
            "64",
            "--model.adapter.r",
            "8",
        ]
    )
    assert cli.trainer.global_step == 4  # 2 restored + 2 new
    assert cli.model.hparams["hidden_size"] == 64


def test_conflicts_in_a_config_file_and_several_options_are_all_named(
    trained, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = tmp_path / "wide.yaml"
    extra.write_text("model:\n  adapter:\n    init_args:\n      r: 4\n")
    with pytest.raises(UsageError) as info:
        main(
            [
                "validate",
                "--config",
                str(extra),
                "--ckpt_path",
                str(trained),
                "--model.optimizer.init_args.lr",
                "0.5",
            ]
        )
    message = str(info.value)
    assert f"model.adapter.init_args.r=8 (you gave 4 in {extra})" in message
    lr = "model.optimizer.init_args.lr=0.01 (you gave 0.5 with --model.optimizer.init_args.lr)"
    assert lr in message
    assert "validate uses the values the checkpoint was trained with" in message
    # Another adapter class: the class is compared (its arguments are the class's own).
    with pytest.raises(
        UsageError,
        match=r"model\.adapter=core\.adapters\.LoraConfig \(you gave "
        r"core\.adapters\.SsfConfig with --model\.adapter\)",
    ):
        main(["test", "--ckpt_path", str(trained), "--model.adapter", "SsfConfig"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.yaml"]  # no runs/


# ------------------------------------------------------------------------ bugs stay bugs
class BrokenPenalty:
    """A regularizer with a bug: its error must keep its traceback."""

    def penalty(self, model) -> torch.Tensor:
        raise RuntimeError("BrokenPenalty has a bug")


class RejectingPenalty:
    """A regularizer that rejects its input once training has started (after the run dir)."""

    def penalty(self, model) -> torch.Tensor:
        raise UsageError("RejectingPenalty: weight must be set; pass --model.regularizers.weight")


def test_a_bug_keeps_its_traceback_and_its_run_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="BrokenPenalty has a bug"):
        digits(["fit", *FAST, "--model.regularizers+", f"{__name__}.BrokenPenalty"])
    assert (tmp_path / "runs" / "examples" / "version_0" / "config.yaml").is_file()


def test_bad_input_found_during_fit_removes_the_run_dir_it_created(tmp_path, capsys) -> None:
    root = tmp_path / "runs" / "examples"
    (root / "version_0").mkdir(parents=True)  # an earlier run's directory stays
    with pytest.raises(SystemExit) as exit_info:
        digits(
            [
                "fit",
                *FAST,
                "--trainer.default_root_dir",
                str(root),
                "--model.regularizers+",
                f"{__name__}.RejectingPenalty",
            ]
        )
    assert exit_info.value.code == 2
    _assert_one_line(capsys.readouterr().err, ["RejectingPenalty", "--model.regularizers"])
    assert [p.name for p in root.iterdir()] == ["version_0"]  # version_1 (config.yaml) removed


# -------------------------------------------------------------------------------- units
def test_user_errors_are_ours_others_are_bugs() -> None:
    def ours():
        raise ValueError("data.batch_size=0 must be >= 1.")

    for raise_it, packages, expected in [
        (ours, {"tests"}, True),
        (ours, {"core"}, False),
        (lambda: torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=-1), {"tests"}, False),
        (lambda: (REPO / "no_such_file").read_text(), {"core"}, True),  # names the path
        (lambda: {}["missing key"], {"tests"}, False),
    ]:
        with pytest.raises(Exception) as info:
            raise_it()
        assert is_user_error(info.value, packages) is expected, (raise_it, packages)
    assert is_user_error(UsageError("x"), set())


def test_debug_flag_and_env(monkeypatch) -> None:
    assert pop_debug_flag(["fit", "--debug", "--x", "1", "--debug"]) == (["fit", "--x", "1"], True)
    assert pop_debug_flag(["fit", "--model.debug", "1"]) == (["fit", "--model.debug", "1"], False)
    for value, expected in [("1", True), ("true", True), ("0", False), ("", False)]:
        monkeypatch.setenv(DEBUG_ENV, value)
        assert debug_from_env() is expected


def test_explicit_options_and_lookup(tmp_path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("model:\n  adapter:\n    class_path: x.Y\n    init_args: {r: 4}\ntrainer: {}\n")
    adapter = tmp_path / "adapter.yaml"
    adapter.write_text("init_args:\n  alpha: 2\n")
    argv = [
        "fit",
        "--config",
        str(DEFAULT_CONFIG),
        "--config",
        str(user),
        "--model.hidden_size=8",
        "--model.regularizers+",
        "a.B",
        "--model.adapter",
        str(adapter),
        "--data.seed",
        "1",
    ]
    assert explicit_model_options(argv, DEFAULT_CONFIG) == [
        ("model.adapter.class_path", f"in {user}"),
        ("model.adapter.init_args.r", f"in {user}"),
        ("model.hidden_size", "with --model.hidden_size"),
        ("model.regularizers", "with --model.regularizers+"),
        ("model.adapter.init_args.alpha", f"in {adapter}"),
    ]
    assert yaml_files_in(argv) == [DEFAULT_CONFIG, user, adapter]
    config = Namespace(model=Namespace(adapter=Namespace(class_path="x.Y", init_args={"r": 4})))
    assert lookup(config, "model.adapter.r") == 4
    assert lookup(config, "model.adapter.init_args.r") == 4
    assert lookup(config, "model.adapter.class_path") == "x.Y"
    assert lookup(config, "model.adapter.alpha") is not None  # the missing sentinel
    assert lookup(config, "model.adapter.alpha") is lookup(config, "model.nothing")


def test_run_dir_guard_removes_only_what_the_run_created_and_holds_nothing(tmp_path) -> None:
    root = tmp_path / "a" / "runs"
    guard = RunDirGuard(root)
    (root / "version_0").mkdir(parents=True)
    (root / "version_0" / "config.yaml").write_text("x")
    assert holds_nothing_of_use(root / "version_0")
    assert guard.clean(root / "version_0") == [root / "version_0", root, tmp_path / "a"]
    assert not (tmp_path / "a").exists() and tmp_path.exists()

    (root / "version_0" / "checkpoints").mkdir(parents=True)
    guard = RunDirGuard(root)  # version_0 existed before this run: kept even if empty
    (root / "version_1" / "checkpoints").mkdir(parents=True)
    (root / "version_1" / "checkpoints" / "last.ckpt").write_bytes(b"1")
    assert not holds_nothing_of_use(root / "version_1")
    assert guard.clean(root / "version_1") == []  # holds a checkpoint
    assert guard.clean(root / "version_0") == []
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]


def test_help_mentions_debug(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--debug" in out and DEBUG_ENV in out


# ------------------------------------------------------------------------ end to end (shell)
def _shell(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    environment.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    return subprocess.run(
        [sys.executable, "-m", "core.examples.train", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_shell_exit_codes_and_debug_env(tmp_path) -> None:
    missing = tmp_path / "missing.ckpt"
    proc = _shell(["fit", "--ckpt_path", str(missing)], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --ckpt_path {missing}")
    assert "Traceback" not in proc.stderr

    proc = _shell(["fit", "--model.adapter.init_args.r", "0"], tmp_path, **{DEBUG_ENV: "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback (most recent call last)" in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: model.adapter: LoRA config: r=0 must be > 0."
    )
    assert not (tmp_path / "runs").exists()
