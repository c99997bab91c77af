"""jaxmerge: recycling LoRA adapters by adaptive merging, in JAX.

Core API::

    base = jaxmerge.load_base("path/or/hub-id", dtype="float32")
    logits = jaxmerge.forward(base.params, tokens, base.config)           # [B, T, V]
    out = jaxmerge.generate(base.params, prompts, base.config, max_new_tokens=20)
"""

import os

# LAPACK (QR/SVD, e.g. in TSV) runs through scipy's OpenBLAS, whose own thread pool spins against
# XLA's: on 2 cores a batched 4096×64 QR took 2.6 s with OpenBLAS threads and 8 ms without
# (BUILD_NOTES). OpenBLAS reads this when it loads; an explicit user setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# transformers prints "PyTorch was not found. Models won't be available …" on import without torch. jaxmerge
# never uses transformers' models at run time (torch is a test oracle), so that advice is noise here.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from .config import ConfigError, LlamaConfig, ModelConfig, RopeConfig  # noqa: E402
from .generate import generate
from .lora import Dense, Factored
from .model import forward, hidden_states, lm_head
from .params import Base, CheckpointError, abstract_params, load_base
from .sharding import ShardingRules, make_mesh
from .stacks import ModuleStack, Pool

__version__ = "0.1.0"

__all__ = ["Base", "CheckpointError", "ConfigError", "Dense", "Factored", "LlamaConfig", "ModelConfig", "ModuleStack", "Pool",
           "RopeConfig", "ShardingRules", "abstract_params", "forward", "generate", "hidden_states", "lm_head",
           "load_base", "make_mesh"]


def __getattr__(name):  # heavier subsystems load on first use
    import importlib
    lazy = {"load_pool": ("jaxmerge.pool", "load_pool"), "merge": ("jaxmerge.merge", None),
            "adaptive": ("jaxmerge.adaptive", None)}
    if name in lazy:
        mod, attr = lazy[name]
        m = importlib.import_module(mod)
        return getattr(m, attr) if attr else m
    raise AttributeError(f"module 'jaxmerge' has no attribute {name!r}")
