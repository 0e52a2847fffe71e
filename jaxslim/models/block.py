"""One transformer block: attention and FFN with pre- or post-normalisation."""

from __future__ import annotations

import jax
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models.attention import Attention
from jaxslim.models.layers import Norm
from jaxslim.models.mlp import Mlp


class Block(nnx.Module):
    """Pre-norm (GPT-2, Llama) or post-norm (BERT) residual block of layer ``layer``.

    ``layer`` only matters for slimmed configs, where each layer has its own widths.
    """

    def __init__(self, cfg: ModelConfig, layer: int = 0, *, rngs: nnx.Rngs):
        self.pre_norm = cfg.pre_norm
        self.attn = Attention(cfg, cfg.heads_in(layer), cfg.kv_heads_in(layer), rngs=rngs)
        self.mlp = Mlp(cfg, cfg.ffn_in(layer), rngs=rngs)
        self.attn_norm = Norm(cfg)
        self.mlp_norm = Norm(cfg)

    def __call__(self, x, *, mask, rope=None, head_mask=None, neuron_mask=None) -> jax.Array:
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), mask=mask, rope=rope, head_mask=head_mask)
            return x + self.mlp(self.mlp_norm(x), neuron_mask=neuron_mask)
        x = self.attn_norm(x + self.attn(x, mask=mask, rope=rope, head_mask=head_mask))
        return self.mlp_norm(x + self.mlp(x, neuron_mask=neuron_mask))
