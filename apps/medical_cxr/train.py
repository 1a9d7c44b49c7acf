"""``python -m apps.medical_cxr.train [fit|validate|test|predict] [options]``.

With no arguments: fit the report generator on ``configs/default.yaml`` (real IU X-ray
reports, synthetic radiographs), then test it with beam search; the run directory
``runs/medical_cxr/version_<n>`` gets the metrics, ``report.md`` and its plots. Options
without a subcommand (``--config apps/medical_cxr/configs/tiny.yaml``) are laid over the
default and also fit, then test. Other recipes: ``--config
apps/medical_cxr/configs/<recipe>.yaml`` (``classification.yaml``, ``preference.yaml``,
``segmentation.yaml``); each names its module class under ``model.class_path``.

The image size and the label policy for uncertain findings are options of both the data and
the model; they are set once, on the data (``--data.image_size``, ``--data.uncertain_as``),
and the model follows (:data:`LINKS`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from core.training import FineTuneCLI, FineTuneModule, run_cli

# The recipes' module classes, importable by their class_path.
from .classification_module import ClassifierModule  # noqa: F401
from .data import CxrDataModule
from .preference_module import PreferenceModule  # noqa: F401
from .report_module import ReportGenModule  # noqa: F401
from .segmentation import SegmentationModule  # noqa: F401

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
#: Options model and data share: the data's value is the model's (where the model has it).
LINKS = {"data.image_size": "model.image_size", "data.uncertain_as": "model.uncertain_as"}


def main(args: Sequence[str] | None = None, run: bool = True) -> FineTuneCLI:
    """Run the app's command line (``args=None`` reads ``sys.argv``).

    The module class comes from the config (``model.class_path``), so the classification,
    preference and segmentation recipes run through the same entry point. ``run=False``
    only instantiates model, data and trainer from the config (a recipe check).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(
        FineTuneModule,
        CxrDataModule,
        DEFAULT_CONFIG,
        args=args,
        app_name="medical_cxr",
        subclass_mode=True,
        links=LINKS,
        run=run,
    )


if __name__ == "__main__":
    main()
