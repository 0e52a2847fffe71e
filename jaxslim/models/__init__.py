"""Flax NNX transformer family (BERT, GPT-2, Llama); knows nothing of pruning, MoE or growth."""

from jaxslim.models.attention import Attention
from jaxslim.models.block import Block
from jaxslim.models.layers import Embeddings, Norm
from jaxslim.models.mlp import Mlp
from jaxslim.models.stack import Stack, stack_layers, unstack_layers
from jaxslim.models.transformer import ModelOutput, Transformer

__all__ = [
    "Attention",
    "Block",
    "Embeddings",
    "Mlp",
    "ModelOutput",
    "Norm",
    "Stack",
    "Transformer",
    "stack_layers",
    "unstack_layers",
]
