"""``python -m core.examples.train [fit|validate|test|predict] [options]``.

Without a subcommand: fit on ``configs/default.yaml`` (with any ``--config`` and options
given layered over it), then test, in one run directory ``runs/examples/version_<n>``.
``--config core/examples/configs/tiny.yaml`` makes that a one-step run of a second.
``--help`` lists the subcommands, ``fit --help`` every option.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, run_cli

from .data import DigitsDataModule
from .module import DigitsClassifier

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def main(args: Sequence[str] | None = None, run: bool = True) -> FineTuneCLI:
    """Run the example's command line (``args=None`` reads ``sys.argv``).

    ``run=False`` only instantiates model, data and trainer from the config (a recipe check).
    """
    return run_cli(DigitsClassifier, DigitsDataModule, DEFAULT_CONFIG, args=args, run=run)


if __name__ == "__main__":
    main()
