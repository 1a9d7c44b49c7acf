"""``python -m apps.vision.train [fit|validate|test|predict] [options]``.

With no arguments: build the zero-shot model (LiT-aligned embedded towers, cached after the
first run), fine-tune it end to end on the embedded benchmark's ID training set, then
WiSE-FT over alpha = 0, 0.1, ..., 1; print the ID / OOD table and test. Outputs go to
``runs/vision/version_<n>`` (checkpoints, adapter/, metrics.json, results.jsonl, wiseft/,
frontier.png, reliability.png). Other methods: ``fit --config apps/vision/configs/<m>.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, run_cli

from .data import VisionDataModule
from .module import VisionModule

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
CONFIG_DIR = DEFAULT_CONFIG.parent


def main(args: Sequence[str] | None = None) -> FineTuneCLI:
    """Run the vision app's command line (``args=None`` reads ``sys.argv``)."""
    return run_cli(VisionModule, VisionDataModule, DEFAULT_CONFIG, args=args)


if __name__ == "__main__":
    main()
