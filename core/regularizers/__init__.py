"""Anti-forgetting regularizers: standalone objects with ``penalty(model)`` and ``update(...)``.

>>> from core.regularizers import build, RegularizerCallback  # doctest: +SKIP
>>> ewc = build("ewc", lambda_=100.0, labels="true")  # doctest: +SKIP
>>> trainer = pl.Trainer(callbacks=[RegularizerCallback([ewc])])  # doctest: +SKIP

Methods (registry names): ``ewc``, ``online_ewc``, ``l2sp``, ``lwf``, ``replay``, ``hft``,
``drtune``. :func:`per_sample_fisher` is EWC's diagonal Fisher from exact per-sample
gradients (Fisher merging has its own estimator, :func:`core.merging.fisher_for_merging`).
"""

from .base import (
    REGISTRY,
    ContinualRegularizer,
    NotReadyError,
    Regularizer,
    TensorStore,
    available,
    build,
    default_inputs,
    default_logits,
    default_targets,
    register,
    select_parameters,
)
from .callback import RegularizerCallback
from .drtune import DRTune, semantic_calibration
from .ewc import EWC, LABEL_CHOICES, OnlineEWC, per_sample_fisher
from .hft import GRANULARITIES, HalfFineTuning, parameter_groups
from .l2sp import L2SP
from .lwf import LwF, distillation_kl
from .replay import Replay, ReplayBuffer, ReservoirBuffer, TaskBalancedBuffer, dmt_stages

__all__ = [
    "EWC",
    "GRANULARITIES",
    "L2SP",
    "LABEL_CHOICES",
    "REGISTRY",
    "ContinualRegularizer",
    "DRTune",
    "HalfFineTuning",
    "LwF",
    "NotReadyError",
    "OnlineEWC",
    "Regularizer",
    "RegularizerCallback",
    "Replay",
    "ReplayBuffer",
    "ReservoirBuffer",
    "TaskBalancedBuffer",
    "TensorStore",
    "available",
    "build",
    "default_inputs",
    "default_logits",
    "default_targets",
    "distillation_kl",
    "dmt_stages",
    "parameter_groups",
    "per_sample_fisher",
    "register",
    "select_parameters",
    "semantic_calibration",
]
