"""Weight-space merging: pure functions over state dicts, adapter merging, an out-of-core CLI.

>>> from core.merging import ties, task_vector, METHODS
>>> merged = ties(base_sd, [sd_a, sd_b], density=0.2)  # doctest: +SKIP
>>> sorted(METHODS)  # every method, by name  # doctest: +SKIP

Every method is registered by name in :data:`METHODS` and runs through
:func:`merge_state_dicts` (``merge_state_dicts("ties", models, base, density=0.2)``), one
tensor at a time and, inside a tensor, chunk by chunk; ``python -m core.merging
CONFIG.yaml`` runs the same code over files on disk. See docs/merging.md.
"""

from .breadcrumbs import breadcrumbs
from .compress import (
    CompressedTaskVector,
    CompressedTensor,
    compress,
    compressed_merge,
    load_compressed,
)
from .dare import RescaleSearch, dare, tune_rescale
from .engine import TensorJob, merge_state_dicts, parse_dtype, run_merge
from .fisher import fisher_for_merging, fisher_merge
from .lines import layer_scales, lines
from .lora_merge import (
    LoraAdapter,
    LoraFactors,
    merge_adapter_into_base,
    merge_lora_adapters,
    read_lora_adapter,
    save_lora_adapter,
)
from .pcb import pcb
from .registry import METHODS, REQUIRED, MergeMethod, get_method, register_method
from .soups import GreedySoup, greedy_soup, greedy_soup_search, uniform_soup, wise_ft
from .sources import DictSource, MemoryReader, Source, TensorReader
from .task_arithmetic import apply_task_vector, task_arithmetic, task_vector
from .ties import ties

__all__ = [
    "METHODS",
    "REQUIRED",
    "CompressedTaskVector",
    "CompressedTensor",
    "DictSource",
    "GreedySoup",
    "LoraAdapter",
    "LoraFactors",
    "MemoryReader",
    "MergeMethod",
    "RescaleSearch",
    "Source",
    "TensorJob",
    "TensorReader",
    "apply_task_vector",
    "breadcrumbs",
    "compress",
    "compressed_merge",
    "dare",
    "fisher_for_merging",
    "fisher_merge",
    "get_method",
    "greedy_soup",
    "greedy_soup_search",
    "layer_scales",
    "lines",
    "load_compressed",
    "merge_adapter_into_base",
    "merge_lora_adapters",
    "merge_state_dicts",
    "parse_dtype",
    "pcb",
    "read_lora_adapter",
    "register_method",
    "run_merge",
    "save_lora_adapter",
    "task_arithmetic",
    "task_vector",
    "ties",
    "tune_rescale",
    "uniform_soup",
    "wise_ft",
]
