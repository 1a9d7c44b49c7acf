"""Parameter-efficient adapters: inject, merge, save/load (PEFT layout), route per sample.

>>> from core.adapters import LoraConfig, inject, save_adapter
>>> inject(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))  # doctest: +SKIP
>>> save_adapter(model, "runs/my_adapter")  # doctest: +SKIP

Each method is one module (``lora.py``, ``ssf.py``, ...) holding its config, its unit and
one :func:`register_method` call; importing this package imports them all, so every
method is in :data:`METHODS` (see docs/adapters.md, "Adding a method").
"""

from .api import (
    active_adapters,
    adapter_layers,
    adapter_names,
    adapter_tensors,
    delete_adapter,
    disable_adapters,
    inject,
    logical_modules,
    merge,
    set_active,
    trainable_parameters,
    unmerge,
)
from .bank import AdapterBank
from .bottleneck import BottleneckConfig
from .compacter import CompacterConfig
from .config import AdapterConfig, config_from_dict
from .corda import collect_input_covariances
from .io import adapter_state_dict, load_adapter, read_adapter, save_adapter
from .layer import AdapterLayer, AdapterUnit, NotMergeableError
from .loldu import LolduConfig
from .lora import LoraConfig
from .registry import (
    ADAPTER_REGISTRY,
    METHODS,
    AdapterMethod,
    BuildContext,
    Stacking,
    get_config_class,
    get_method,
    register_method,
    unregister_method,
)
from .routing import routed_forward
from .ssf import SsfConfig
from .targeting import resolve_modules_to_save

__all__ = [
    "ADAPTER_REGISTRY",
    "METHODS",
    "AdapterBank",
    "AdapterConfig",
    "AdapterLayer",
    "AdapterMethod",
    "AdapterUnit",
    "BottleneckConfig",
    "BuildContext",
    "CompacterConfig",
    "LolduConfig",
    "LoraConfig",
    "NotMergeableError",
    "SsfConfig",
    "Stacking",
    "active_adapters",
    "adapter_layers",
    "adapter_names",
    "adapter_state_dict",
    "adapter_tensors",
    "collect_input_covariances",
    "config_from_dict",
    "delete_adapter",
    "disable_adapters",
    "get_config_class",
    "get_method",
    "inject",
    "load_adapter",
    "logical_modules",
    "merge",
    "read_adapter",
    "register_method",
    "resolve_modules_to_save",
    "routed_forward",
    "save_adapter",
    "set_active",
    "trainable_parameters",
    "unmerge",
    "unregister_method",
]
