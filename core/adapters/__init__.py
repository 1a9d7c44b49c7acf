"""Parameter-efficient adapters: inject, merge, save/load (PEFT layout), route per sample.

>>> from core.adapters import LoraConfig, inject, save_adapter
>>> inject(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))  # doctest: +SKIP
>>> save_adapter(model, "runs/my_adapter")  # doctest: +SKIP
"""

from .api import (
    METHODS,
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
from .config import (
    ADAPTER_REGISTRY,
    AdapterConfig,
    BottleneckConfig,
    CompacterConfig,
    LolduConfig,
    LoraConfig,
    SsfConfig,
    config_from_dict,
    get_config_class,
    register_adapter,
)
from .corda import collect_input_covariances
from .io import adapter_state_dict, load_adapter, read_adapter, save_adapter
from .layer import AdapterLayer, AdapterUnit, NotMergeableError
from .routing import routed_forward
from .targeting import resolve_modules_to_save

__all__ = [
    "ADAPTER_REGISTRY",
    "METHODS",
    "AdapterBank",
    "AdapterConfig",
    "AdapterLayer",
    "AdapterUnit",
    "BottleneckConfig",
    "CompacterConfig",
    "LolduConfig",
    "LoraConfig",
    "NotMergeableError",
    "SsfConfig",
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
    "inject",
    "load_adapter",
    "logical_modules",
    "merge",
    "read_adapter",
    "register_adapter",
    "resolve_modules_to_save",
    "routed_forward",
    "save_adapter",
    "set_active",
    "trainable_parameters",
    "unmerge",
]
