"""Our kernels package must not shadow a package that a dependency imports by name."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import fused_kernels

REPO = Path(__file__).resolve().parents[2]


def test_kernel_package_name_is_not_taken_by_an_installed_distribution() -> None:
    """No installed distribution ships a top-level module named like ours (Hugging Face's
    ``kernels``, which transformers requires, is why ours is ``fused_kernels``)."""
    owners = importlib.metadata.packages_distributions().get("fused_kernels", [])
    assert set(owners) <= {"specialist-finetuners"}, owners
    assert Path(fused_kernels.__file__).resolve().parent == REPO / "fused_kernels"


@pytest.mark.parametrize("cwd", [REPO, Path("/")])
def test_transformers_model_builds_beside_our_packages(cwd: Path) -> None:
    """Building a Hugging Face model after importing ours works from the checkout (our
    packages first on the path) and from elsewhere (the installed project)."""
    code = (
        "import fused_kernels.lora, core.adapters\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32,"
        " num_hidden_layers=1, num_attention_heads=2, vocab_size=10))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
