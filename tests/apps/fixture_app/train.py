"""``python -m tests.apps.fixture_app.train [fit|validate|test|predict] [options]``.

Without a subcommand: fit on ``configs/default.yaml`` (and any ``--config`` and options
given), then test, in one run directory (default ``runs/fixture_app/version_<n>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, run_cli

from .data import DigitsDataModule
from .module import LinearDigits

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def main(args: Sequence[str] | None = None, run: bool = True) -> FineTuneCLI:
    """Run the fixture app's command line (``args=None`` reads ``sys.argv``).

    ``run=False`` only instantiates model, data and trainer from the config (a recipe check).
    """
    return run_cli(LinearDigits, DigitsDataModule, DEFAULT_CONFIG, args=args, run=run)


if __name__ == "__main__":
    main()
