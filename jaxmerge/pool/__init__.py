"""Real-world PEFT LoRA pools: load, validate and filter adapters into stacked device arrays
(``load_pool``), derive pools (``derive``), pool statistics (``stats``), export merges (``export``).
"""

from .filters import FilterPolicy
from .load import Report, build_pool, inspect_adapter, inspect_sources, load_pool
from .peft_format import AdapterConfig, AdapterError, parse_key

__all__ = ["AdapterConfig", "AdapterError", "FilterPolicy", "Report", "build_pool", "inspect_adapter",
           "inspect_sources", "load_pool", "parse_key"]
