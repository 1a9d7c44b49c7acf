"""docs/new_domain_app.md: its code blocks, written out as a package, make a working app."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.runs import REPO, assert_files, run_python

GUIDE = REPO / "docs" / "new_domain_app.md"
BLOCK = re.compile(r"```(?:python|yaml)\n# file: (?P<path>\S+)\n(?P<body>.*?)```", re.DOTALL)


def guide_files() -> dict[str, str]:
    """``{relative path: content}`` of every fenced block that starts with ``# file:``."""
    return {m["path"]: m["body"] for m in BLOCK.finditer(GUIDE.read_text())}


def write_app(root: Path) -> dict[str, str]:
    """Write the guide's files as the package ``wine_app`` under ``root``; its environment."""
    for rel, body in guide_files().items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    (root / "wine_app" / "__init__.py").write_text("")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}


def test_guide_names_the_pieces() -> None:
    assert set(guide_files()) == {
        "wine_app/data.py",
        "wine_app/module.py",
        "wine_app/train.py",
        "wine_app/configs/default.yaml",
        "wine_app/configs/tiny.yaml",
    }
    code_lines = [
        line
        for body in guide_files().values()
        for line in body.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(code_lines) <= 70  # "about 60 lines" of app code


@pytest.mark.slow
def test_guide_app_runs_with_no_arguments(tmp_path: Path) -> None:
    env = write_app(tmp_path)
    run_python(["-m", "wine_app.train"], cwd=tmp_path, env=env)  # no arguments: fit, then test
    run_dir = tmp_path / "runs" / "wine_app" / "version_0"
    assert_files(run_dir, "checkpoints/last.ckpt", "metrics.csv", "report.md")
    assert_files(run_dir, "adapter/adapter_model.safetensors")  # the guide's config sets LoRA
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fit"]["epoch"] == 20
    assert metrics["test"]["test/acc"] > 0.8  # wines are easy; chance is about 0.4
    assert "| test/acc |" in (run_dir / "report.md").read_text()


def test_guide_app_keeps_the_contract(tmp_path: Path) -> None:
    """The contract test's three checks (docs/new_domain_app.md, The app contract)."""
    env = write_app(tmp_path)
    script = """
import sys
from wine_app.train import main
main(["--config", "wine_app/configs/tiny.yaml", "--trainer.default_root_dir", "D"])
for recipe in ("wine_app/configs/default.yaml", "wine_app/configs/tiny.yaml"):
    cli = main(["--config", recipe], run=False)
    assert type(cli.model).__name__ == "WineClassifier", recipe
try:
    main(["fit", "--help"])
except SystemExit as exit:
    assert exit.code == 0
"""
    proc = run_python(["-c", script], cwd=tmp_path, env=env)
    assert "LoraConfig" in proc.stdout and "--model.monitor" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["version_0"]
    run_dir = tmp_path / "D" / "version_0"
    assert_files(run_dir, "config.yaml", "checkpoints/last.ckpt", "report.md")
    assert_files(run_dir, "adapter/adapter_config.json")  # the guide's config sets LoRA
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"fit", "test"} and metrics["fit"]["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "D",
        "wine_app",
    ]  # run=False wrote nothing
