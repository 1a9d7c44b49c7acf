"""``python -m apps.medical_cxr.train [fit|validate|test|predict] [options]``.

With no arguments: fit the report generator on ``configs/default.yaml`` (real IU X-ray
reports, synthetic radiographs), then test it with beam search; prints the metrics table and
the path of ``report.md``. Other recipes: ``fit --config apps/medical_cxr/configs/<recipe>.yaml``
(``classification.yaml``, ``preference.yaml``, ``segmentation.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, FineTuneModule, run_cli

from . import module as _modules  # noqa: F401  (registers the recipes' module classes)
from . import segmentation as _segmentation  # noqa: F401  (registers SegmentationModule)
from .data import CxrDataModule

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def main(args: Sequence[str] | None = None) -> FineTuneCLI:
    """Run the app's command line (``args=None`` reads ``sys.argv``).

    The module class comes from the config (``model.class_path``), so the classification
    and preference recipes run through the same entry point.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(
        FineTuneModule,
        CxrDataModule,
        DEFAULT_CONFIG,
        args=args,
        app_name="medical_cxr",
        subclass_mode=True,
    )


if __name__ == "__main__":
    main()
