"""jaxslim: cheaper transformers in JAX — pruning, MoE, growth, large-batch optimizers, checkpoints."""

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
