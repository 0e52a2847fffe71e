"""Flax NNX transformer family (BERT, GPT-2 and Llama recipes, with the ``ModelConfig`` flags that
make them RoBERTa, GPT-NeoX, Mistral, Qwen, Phi-3, Gemma or OLMo 2). An MoE FFN is a block option
(:mod:`jaxslim.moe` sits below); masks enter the forward pass as arguments; pruning and growth are
functions of models that live above them."""

from jaxslim.models.attention import Attention
from jaxslim.models.block import Block
from jaxslim.models.mlp import Mlp
from jaxslim.models.stack import Stack, stack_layers, unstack_layers
from jaxslim.models.transformer import ModelOutput, Transformer
from jaxslim.nn import Embeddings, Norm

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
