"""jaxslim: cheaper transformers in JAX — pruning, MoE, growth, large-batch optimizers, checkpoints.

The flat names below are imported eagerly; the subpackages (``jaxslim.prune``, ``jaxslim.optim``,
``jaxslim.moe``, ``jaxslim.checkpoint``, ...) load on first attribute access, so ``import jaxslim;
jaxslim.prune.gradual_pruning`` works without importing every method up front.
"""

import importlib
from typing import Any

from jaxslim.config import DEFAULT_RULES, MeshConfig, ModelConfig
from jaxslim.convert import load_hf, save_hf
from jaxslim.models import ModelOutput, Transformer, stack_layers, unstack_layers
from jaxslim.sharding import (
    constrain,
    create_sharded,
    layer_axis,
    logical_axes,
    logical_to_spec,
    make_mesh,
    map_layers,
    per_layer_reduce,
    shard_batch,
    shard_model,
    split_layers,
    state_shardings,
)

__version__ = "0.1.0"

# subpackages and modules reachable as attributes of ``jaxslim``, imported on first use
SUBMODULES = (
    "checkpoint",
    "cli",
    "config",
    "convert",
    "data",
    "grow",
    "models",
    "moe",
    "optim",
    "prune",
    "sharding",
    "training",
    "tree",
)


def __getattr__(name: str) -> Any:
    if name in SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES))


__all__ = [
    "DEFAULT_RULES",
    "MeshConfig",
    "ModelConfig",
    "ModelOutput",
    "Transformer",
    "constrain",
    "create_sharded",
    "layer_axis",
    "load_hf",
    "logical_axes",
    "logical_to_spec",
    "make_mesh",
    "map_layers",
    "per_layer_reduce",
    "shard_batch",
    "save_hf",
    "shard_model",
    "split_layers",
    "stack_layers",
    "state_shardings",
    "unstack_layers",
]
