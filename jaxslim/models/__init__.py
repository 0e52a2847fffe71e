"""Flax NNX transformer family (BERT, GPT-2 and Llama recipes, with the ``ModelConfig`` flags that
make them RoBERTa, GPT-NeoX, Mistral, Qwen, Phi-3, Gemma or OLMo 2); knows nothing of pruning, MoE
or growth."""

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
