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
from .checkpointing import AtomicCheckpointIO, LastStepCheckpoint
from .cli import FineTuneCLI, adapter_methods_help, run_cli, tiny_config
from .errors import UsageError
from .module import FineTuneModule, coerce_adapter_config, default_loss
from .penalties import compute_penalties, end_stage, penalty_names, start_stage
from .regularizer_protocol import Regularizer
from .report import ReportWriter, TestReport, metrics_table
from .resume import ResumeRngState

__all__ = [
    "AdapterExport",
    "AtomicCheckpointIO",
    "FineTuneCLI",
    "FineTuneModule",
    "LastStepCheckpoint",
    "MetricsJson",
    "PredictionsWriter",
    "Regularizer",
    "ReportWriter",
    "ResumeRngState",
    "TestReport",
    "UsageError",
    "adapter_methods_help",
    "append_manifest",
    "atomic_write",
    "atomic_write_text",
    "coerce_adapter_config",
    "compute_penalties",
    "default_loss",
    "end_stage",
    "metrics_table",
    "penalty_names",
    "read_manifest",
    "run_cli",
    "start_stage",
    "tiny_config",
]
