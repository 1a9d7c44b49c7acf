"""Training: the ``FineTuneModule`` base class, the shared command line and run callbacks.

>>> from core.training import FineTuneModule, run_cli  # doctest: +SKIP
>>> run_cli(MyModule, MyDataModule, "apps/my_app/configs/default.yaml")  # doctest: +SKIP
"""

from .callbacks import (
    AdapterExport,
    MetricsJson,
    PredictionsWriter,
    append_manifest,
    atomic_write,
    atomic_write_text,
    read_manifest,
)
from .cli import FineTuneCLI, adapter_methods_help, run_cli
from .module import FineTuneModule, Regularizer, coerce_adapter_config, default_loss

__all__ = [
    "AdapterExport",
    "FineTuneCLI",
    "FineTuneModule",
    "MetricsJson",
    "PredictionsWriter",
    "Regularizer",
    "adapter_methods_help",
    "append_manifest",
    "atomic_write",
    "atomic_write_text",
    "coerce_adapter_config",
    "default_loss",
    "read_manifest",
    "run_cli",
]
