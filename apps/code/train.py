"""``python -m apps.code.train [fit|validate|test|predict] [options]``.

With no arguments: pre-train the embedded base if it is not cached yet, fit LoRA adapters on
the five embedded tasks with the task-balanced loss (``configs/default.yaml``), then test:
per-task loss before/after, forgetting perplexity, FIM exact match and HumanEval pass@k, in
``runs/code/version_<n>/`` (``report.md``, ``eval.json``, ``metrics.json``, ``adapter/``).
``--help`` lists every option.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, run_cli

from .data import CodeDataModule
from .module import CodeModule

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def main(args: Sequence[str] | None = None) -> FineTuneCLI:
    """Run the code app's command line (``args=None`` reads ``sys.argv``)."""
    return run_cli(CodeModule, CodeDataModule, DEFAULT_CONFIG, args=args)


if __name__ == "__main__":
    main()
