"""``python -m apps.vision.train [fit|validate|test|predict] [options]``.

With no arguments: build the zero-shot model (LiT-aligned embedded towers, cached after the
first run), fine-tune it end to end on the embedded benchmark's ID training set, then test:
zero-shot vs fine-tuned vs WiSE-FT over alpha = 0, 0.1, ..., 1 on ID and every shift, the
ID / OOD table printed and written to ``report.md``. Outputs go to
``runs/vision/version_<n>`` (checkpoints, metrics.json, report.md, frontier.png,
reliability.png, results.jsonl, wiseft.json, wiseft/, adapter/ for adapter recipes).
Other methods: ``--config apps/vision/configs/<method>.yaml``; a run of seconds:
``--config apps/vision/configs/tiny.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, run_cli

from .data import VisionDataModule
from .module import VisionModule

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
CONFIG_DIR = DEFAULT_CONFIG.parent

#: Options model and data share: the user sets the data's, the model's follows.
LINKS = {
    "data.class_names": "model.class_names",  # label order of data and head
    "data.split": "model.split",  # where the cached trunk features end and the model starts
    "data.cache_dir": "model.cache_dir",  # one cache folder for features and LiT heads
}


def main(args: Sequence[str] | None = None, run: bool = True) -> FineTuneCLI:
    """Run the vision app's command line (``args=None`` reads ``sys.argv``).

    ``run=False`` only instantiates model, data and trainer from the config (a recipe check).
    """
    return run_cli(VisionModule, VisionDataModule, DEFAULT_CONFIG, args=args, run=run, links=LINKS)


if __name__ == "__main__":
    main()
