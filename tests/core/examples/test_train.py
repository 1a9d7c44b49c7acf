"""The example app keeps the app contract (docs/new_domain_app.md, "The app contract"): a
tiny fit + test from the command line, its run directory, every recipe instantiates, the
adapter methods in ``--help``, and its report."""

from __future__ import annotations

import json

import pytest

from core.examples.module import DigitsClassifier
from core.examples.train import DEFAULT_CONFIG, main
from core.training.cli import tiny_config
from tests.runs import REPO, assert_files, run_python

RECIPES = sorted(DEFAULT_CONFIG.parent.glob("*.yaml"))


def test_tiny_fit_and_test_from_the_command_line(tmp_path) -> None:
    tiny = ["--config", "core/examples/configs/tiny.yaml"]
    root = ["--trainer.default_root_dir", str(tmp_path)]
    proc = run_python(["-m", "core.examples.train", *tiny, *root], cwd=REPO)
    run_dir = tmp_path / "version_0"
    assert [p.name for p in tmp_path.iterdir()] == ["version_0"]
    assert_files(run_dir, "config.yaml", "metrics.json", "report.md", "adapter/adapter_config.json")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert set(json.loads((run_dir / "metrics.json").read_text())) == {"fit", "test"}
    assert f"report: {run_dir / 'report.md'}" in proc.stdout + proc.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_parses_and_instantiates(recipe) -> None:
    cli = main(["--config", str(recipe)], run=False)
    assert isinstance(cli.model, DigitsClassifier)
    assert cli.datamodule.source == "embedded"


def test_help_lists_the_adapter_methods(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("LoraConfig", "SsfConfig", "--model.monitor"))


def test_report_holds_the_confusion_matrix_of_the_test_batches(tmp_path) -> None:
    cli = main(
        ["--config", str(tiny_config("core.examples")), "--trainer.default_root_dir", str(tmp_path)]
    )
    confusion = cli.model._confusion
    assert confusion is not None and int(confusion.sum()) == 16  # one test batch of 16
    text = (tmp_path / "version_0" / "report.md").read_text()
    assert "## Per digit" in text and "![confusion](confusion.png)" in text
    assert text.count("confusion.png") == 1  # placed in its section, not listed again
    hits = int(confusion.diagonal().sum())
    accuracy = json.loads((tmp_path / "version_0" / "metrics.json").read_text())["test"]["test/acc"]
    assert accuracy == pytest.approx(hits / 16)
