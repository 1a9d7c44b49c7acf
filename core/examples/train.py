"""``python -m core.examples.train [fit|validate|test|predict] [options]``.

With no arguments: fit on ``configs/default.yaml``, then test; outputs go to
``runs/examples/version_<n>``. ``--help`` lists every option.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, run_cli

from .data import DigitsDataModule
from .module import DigitsClassifier

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def main(args: Sequence[str] | None = None) -> FineTuneCLI:
    """Run the example's command line (``args=None`` reads ``sys.argv``)."""
    return run_cli(DigitsClassifier, DigitsDataModule, DEFAULT_CONFIG, args=args)


if __name__ == "__main__":
    main()
