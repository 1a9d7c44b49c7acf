"""End-to-end helpers: run ``python`` as a user does, and check the run directory it leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python *args`` in ``cwd`` with its output captured; fails the test, showing the end of
    the output, unless it exits 0.

    ``env`` defaults to this process's environment with the repository on ``PYTHONPATH`` and
    one OpenMP thread.
    """
    if env is None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_files(folder: Path, *names: str) -> None:
    """Each of ``names`` (paths relative to ``folder``) is a file; fails naming the first
    that is not."""
    for name in names:
        assert (folder / name).is_file(), name
