"""Frozen dataclass configs: model, mixture of experts, device mesh, optimizer, checkpoints, data,
pruning and a whole training run, one module each.

This package is the bottom layer: it imports nothing else from jaxslim. Every config validates
itself on construction (:mod:`jaxslim.config.validate` reads each field's annotation and declared
range; cross-field rules sit in each class's ``_check``) and raises a ``ValueError`` that names the
field, the value it got and the values it accepts. Configs are hashable, so they can be static
arguments of ``jax.jit``.

Example:
    >>> cfg = ModelConfig.llama(vocab_size=128, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    >>> cfg.replace(n_kv_heads=2).kv_heads
    2
"""

from jaxslim.config.checkpoint import CheckpointConfig, CodecConfig
from jaxslim.config.data import MAX_BPE_VOCAB, MIN_BPE_VOCAB, DataConfig
from jaxslim.config.mesh import DEFAULT_RULES, MESH_AXES, MeshConfig
from jaxslim.config.model import (
    ATTENTION_BACKENDS,
    DTYPES,
    REMAT_POLICIES,
    Activation,
    AttentionBackend,
    Dtype,
    ModelConfig,
    RematPolicy,
    RopeScaling,
)
from jaxslim.config.moe import MoeConfig
from jaxslim.config.optim import OptimConfig
from jaxslim.config.prune import PruneConfig
from jaxslim.config.train import StageConfig, TrainConfig
from jaxslim.config.validate import Config, at_least, between, bounded, nonempty, positive, validate

__all__ = [
    "ATTENTION_BACKENDS",
    "REMAT_POLICIES",
    "AttentionBackend",
    "RematPolicy",
    "DEFAULT_RULES",
    "DTYPES",
    "MAX_BPE_VOCAB",
    "MESH_AXES",
    "MIN_BPE_VOCAB",
    "Activation",
    "CheckpointConfig",
    "CodecConfig",
    "Config",
    "DataConfig",
    "Dtype",
    "MeshConfig",
    "ModelConfig",
    "MoeConfig",
    "OptimConfig",
    "PruneConfig",
    "RopeScaling",
    "StageConfig",
    "TrainConfig",
    "at_least",
    "between",
    "bounded",
    "nonempty",
    "positive",
    "validate",
]
