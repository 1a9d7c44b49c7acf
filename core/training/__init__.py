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
from .cli import FineTuneCLI, adapter_methods_help, run_cli
from .errors import UsageError
from .losses import anchored_sft_loss, dft_loss, token_kl
from .module import FineTuneModule, Regularizer, coerce_adapter_config, default_loss
from .penalties import compute_penalties, end_stage, penalty_names, start_stage
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
    "ResumeRngState",
    "UsageError",
    "adapter_methods_help",
    "anchored_sft_loss",
    "append_manifest",
    "atomic_write",
    "atomic_write_text",
    "coerce_adapter_config",
    "compute_penalties",
    "default_loss",
    "dft_loss",
    "end_stage",
    "penalty_names",
    "read_manifest",
    "run_cli",
    "start_stage",
    "token_kl",
]
