"""Anti-forgetting regularizers: standalone objects with ``penalty(model)`` and ``update(...)``.

>>> from core.regularizers import build, RegularizerCallback  # doctest: +SKIP
>>> ewc = build("ewc", lambda_=100.0, labels="true")  # doctest: +SKIP
>>> trainer = pl.Trainer(callbacks=[RegularizerCallback([ewc])])  # doctest: +SKIP

Methods (registry names): ``ewc``, ``online_ewc``, ``l2sp``, ``lwf``, ``replay``, ``hft``,
``drtune``. The anchored SFT loss lives with the other losses in ``core.training.losses``.
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
from .ewc import EWC, LABEL_CHOICES, OnlineEWC, estimate_fisher
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
    "estimate_fisher",
    "parameter_groups",
    "register",
    "select_parameters",
    "semantic_calibration",
]
