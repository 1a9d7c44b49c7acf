"""``run_cli``: the one command line every app shares, built on ``LightningCLI``.

``python -m apps.<domain>.train`` with no arguments fits on the app's default config and
then tests the fitted model. With arguments it is a plain LightningCLI: subcommands
``fit``/``validate``/``test``/``predict``, ``--config`` files layered over the app's
default config, dotted overrides (``--model.adapter.init_args.r 4``, ``--trainer.max_epochs
3``) and ``--help`` (``--model.adapter.help LoraConfig`` lists one adapter's options).

Each run writes one directory, ``<trainer.default_root_dir>/version_<n>`` (the default root
is ``runs/<app>``)::

    config.yaml          the full resolved config (LightningCLI)
    hparams.yaml         the model's hyperparameters
    metrics.csv          every logged value over time (CSVLogger)
    checkpoints/         last.ckpt and best.ckpt (lowest val/loss)
    adapter/             adapter_config.json + adapter_model.safetensors (PEFT layout)
    metrics.json         final scalar metrics of fit / validate / test
    manifest.jsonl       one line per file written by the callbacks above

Resume with ``fit --ckpt_path <run_dir>/checkpoints/last.ckpt``; the resumed run gets its own
new run directory.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from core.adapters import ADAPTER_REGISTRY

from .callbacks import AdapterExport, MetricsJson, PredictionsWriter

SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: Defaults of the ``checkpoint`` argument group (a ModelCheckpoint every run has).
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "checkpoint.monitor": "val/loss",
    "checkpoint.mode": "min",
    "checkpoint.save_last": True,
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": "best",
}


def adapter_methods_help() -> str:
    """One line per registered adapter method with its options and defaults."""
    lines = []
    for method, cls in sorted(ADAPTER_REGISTRY.items()):
        fields = ", ".join(
            f"{f.name}={_default_repr(f)}" for f in dataclasses.fields(cls) if f.init
        )
        lines.append(f"{method}: {cls.__name__}({fields})")
    return "; ".join(lines)


def _default_repr(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "required"


class FineTuneCLI(LightningCLI):
    """LightningCLI with the core's run directory: CSV logs, checkpoints, adapter, metrics.

    Adds a configurable ``checkpoint`` group (a ``ModelCheckpoint``: ``--checkpoint.monitor``
    etc.), always adds :class:`AdapterExport`, :class:`MetricsJson` and
    :class:`PredictionsWriter`, and logs with a ``CSVLogger`` rooted at
    ``trainer.default_root_dir`` unless ``trainer.logger`` names another logger.
    """

    def __init__(self, *args: Any, app_name: str = "app", **kwargs: Any) -> None:
        self.app_name = app_name
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        for action in parser._actions:
            if action.dest == "model.adapter":
                action.help = (
                    f"{action.help or 'Adapter to inject.'} Pick one with --model.adapter "
                    "<Name> and set options with --model.adapter.init_args.<option>. "
                    f"Methods and options: {adapter_methods_help()}."
                )

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if "logger" not in kwargs and trainer_cfg.get("logger") in (None, True):
            root = trainer_cfg.get("default_root_dir") or f"runs/{self.app_name}"
            kwargs["logger"] = CSVLogger(save_dir=root, name="")
        return super().instantiate_trainer(**kwargs)


def app_name_of(module_cls: type) -> str:
    """``apps.medical_cxr.module.CxrModule`` -> ``medical_cxr`` (the package of the module)."""
    parts = module_cls.__module__.split(".")
    return parts[-2] if len(parts) >= 2 else module_cls.__name__.lower()


def with_default_config(argv: Sequence[str], default_config: str | Path) -> list[str]:
    """Insert ``--config <default_config>`` right after the subcommand.

    Later ``--config`` files and dotted options then override the app's defaults. (The
    config is passed as the first ``--config`` rather than through jsonargparse's
    ``default_config_files``, which in jsonargparse 4.53 drops the ``class_path`` of a
    callable such as ``model.optimizer`` when it has ``init_args``.)
    """
    argv = list(argv)
    for i, token in enumerate(argv):
        if token in SUBCOMMANDS:
            return [*argv[: i + 1], "--config", str(default_config), *argv[i + 1 :]]
    return argv


def run_cli(
    module_cls: type[pl.LightningModule],
    datamodule_cls: type[pl.LightningDataModule],
    default_config: str | Path,
    args: Sequence[str] | None = None,
    app_name: str | None = None,
    subclass_mode: bool = False,
) -> FineTuneCLI:
    """Run an app's command line; with no arguments at all, fit then test.

    Args:
        module_cls: The app's ``FineTuneModule`` subclass (``--model.*``).
        datamodule_cls: The app's ``LightningDataModule`` (``--data.*``).
        default_config: The app's LightningCLI YAML (keys ``model``, ``data``, ``trainer``,
            ``seed_everything``, ...), read first by every subcommand; ``--config`` files
            and dotted options override it.
        args: Command-line arguments; ``None`` reads ``sys.argv[1:]``. An empty list (or
            no command-line arguments) means: fit on the default config, then test.
        app_name: Names the default run root ``runs/<app_name>``; defaults to the package
            of ``module_cls``.
        subclass_mode: Let the config pick the module class (``model: {class_path: ...,
            init_args: ...}``, any subclass of ``module_cls``), so one entry point serves
            several recipes (report generation, classification, ...).

    Returns:
        The ``FineTuneCLI`` (``.trainer``, ``.model``, ``.datamodule``, ``.config``).
    """
    default_config = Path(default_config).resolve()
    if not default_config.is_file():
        raise FileNotFoundError(
            f"default config {str(default_config)!r} does not exist; pass the path of the "
            "app's configs/default.yaml to run_cli."
        )
    argv = list(sys.argv[1:] if args is None else args)
    no_args = not argv
    name = app_name or app_name_of(module_cls)
    with warnings.catch_warnings():
        # We always pass the arguments explicitly (to layer the default config under them).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = FineTuneCLI(
            module_cls,
            datamodule_cls,
            app_name=name,
            args=with_default_config(argv or ["fit"], default_config),
            subclass_mode_model=subclass_mode,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={
                sub: {
                    "epilog": f"The app's defaults are read from {default_config} before any "
                    "--config file or option given here (so its values are not shown as "
                    "defaults above)."
                }
                for sub in SUBCOMMANDS
            },
            trainer_defaults={
                "default_root_dir": f"runs/{name}",
                "callbacks": [AdapterExport(), MetricsJson(), PredictionsWriter()],
            },
        )
    if no_args:
        # Test the weights fit() ended with: the ones exported to <run_dir>/adapter.
        cli.trainer.test(cli.model, datamodule=cli.datamodule)
    return cli
