"""docs/new_domain_app.md: its code blocks, written out as a package, make a working app."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "new_domain_app.md"
BLOCK = re.compile(r"```(?:python|yaml)\n# file: (?P<path>\S+)\n(?P<body>.*?)```", re.DOTALL)


def guide_files() -> dict[str, str]:
    """``{relative path: content}`` of every fenced block that starts with ``# file:``."""
    return {m["path"]: m["body"] for m in BLOCK.finditer(GUIDE.read_text())}


def test_guide_names_the_four_pieces() -> None:
    assert set(guide_files()) == {
        "wine_app/data.py",
        "wine_app/module.py",
        "wine_app/train.py",
        "wine_app/configs/default.yaml",
    }
    code_lines = [
        line
        for body in guide_files().values()
        for line in body.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(code_lines) <= 60  # "about 50 lines" of app code


@pytest.mark.slow
def test_guide_app_runs_with_no_arguments(tmp_path: Path) -> None:
    for rel, body in guide_files().items():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    (tmp_path / "wine_app" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-m", "wine_app.train"],  # no arguments: fit, then test
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "wine_app" / "version_0"
    for name in ["adapter/adapter_model.safetensors", "checkpoints/last.ckpt", "metrics.csv"]:
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fit"]["epoch"] == 20
    assert metrics["test"]["test/acc"] > 0.8  # wines are easy; chance is about 0.4
