"""One transformer block: attention and an FFN (dense or mixture of experts), pre- or post-norm,
optionally with normalised sublayer outputs (Gemma 2 / 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models.attention import Attention
from jaxslim.models.mlp import Mlp
from jaxslim.moe.layer import MoeLayer
from jaxslim.nn import Norm, dtypes, param


class Block(nnx.Module):
    """Pre-norm (GPT-2, Llama) or post-norm (BERT) residual block of layer ``layer``.

    ``layer`` decides the block's widths in slimmed configs (each layer has its own) and whether
    its FFN is a mixture of experts (``cfg.is_moe_layer(layer)``: ``self.moe`` instead of
    ``self.mlp``).
    """

    def __init__(self, cfg: ModelConfig, layer: int = 0, *, rngs: nnx.Rngs):
        self.pre_norm = cfg.pre_norm
        self.layer = layer
        self.first_attn_norm = cfg.first_attn_norm
        self.parallel = cfg.parallel_residual
        self.attn = Attention(
            cfg, cfg.heads_in(layer), cfg.kv_heads_in(layer), rngs=rngs, window=cfg.window_of(layer)
        )
        if cfg.is_moe_layer(layer):
            self.mlp: Mlp | None = None
            self.moe: MoeLayer | None = MoeLayer(cfg, rngs=rngs)
        else:
            self.mlp, self.moe = Mlp(cfg, cfg.ffn_in(layer), rngs=rngs), None
        # Qwen2-MoE: a dense shared expert beside the routed ones, behind a sigmoid gate
        shared_ffn = cfg.shared_expert_ffn if self.moe is not None else None
        self.shared = Mlp(cfg, shared_ffn, rngs=rngs) if shared_ffn is not None else None
        shared = self.shared is not None
        gated = shared and cfg.shared_expert_gate
        self.shared_gate = param(rngs, (cfg.d_model, 1), ("embed", None), dtypes(cfg)[1]) if gated else None
        # OLMo 2 has no input norms: its sublayers read the residual stream as it is
        self.attn_norm = Norm(cfg) if cfg.input_norms else None
        self.mlp_norm = Norm(cfg) if cfg.input_norms else None
        # Gemma 2 / 3 also normalise each sublayer's output before the residual sum
        self.post_attn_norm = Norm(cfg) if cfg.post_norms else None
        self.post_mlp_norm = Norm(cfg) if cfg.post_norms else None

    def __call__(
        self, x, *, mask, rope=None, head_mask=None, neuron_mask=None, rng=None, window=None, layer=None
    ):
        """Returns ``(x, moe_metrics)``; the metrics are None for a dense FFN. ``window`` and ``layer``
        (the block's depth, possibly traced) override the block's own (a scanned stack passes each
        layer's)."""
        if self.parallel:  # GPT-NeoX: both sublayers read the block input
            a = self.attn(self.attn_norm(x), mask=mask, rope=rope, head_mask=head_mask, window=window)
            y, aux = self._ffn(self.mlp_norm(x), neuron_mask, rng)
            return x + a + y, aux
        if self.pre_norm:
            a = self.attn(self.attn_input(x, layer), mask=mask, rope=rope, head_mask=head_mask, window=window)
            x = x + (a if self.post_attn_norm is None else self.post_attn_norm(a))
            y, aux = self._ffn(_norm(self.mlp_norm, x), neuron_mask, rng)
            return x + (y if self.post_mlp_norm is None else self.post_mlp_norm(y)), aux
        x = self.attn_norm(x + self.attn(x, mask=mask, rope=rope, head_mask=head_mask, window=window))
        y, aux = self._ffn(x, neuron_mask, rng)
        return self.mlp_norm(x + y), aux

    def attn_input(self, x, layer=None):
        """The attention's input: the normalised stream, or the stream as it is in layer 0 without
        ``first_attn_norm`` (ModernBERT)."""
        normed = _norm(self.attn_norm, x)
        if self.first_attn_norm:
            return normed
        layer = self.layer if layer is None else layer
        if isinstance(layer, int):
            return x if layer == 0 else normed
        return jnp.where(layer == 0, x, normed)

    def _ffn(self, x, neuron_mask, rng) -> tuple[jax.Array, dict | None]:
        if self.moe is not None:
            y, aux = self.moe(x, rng=rng)
            if self.shared is not None:
                s = self.shared(x)
                if self.shared_gate is not None:
                    s = s * jax.nn.sigmoid(x @ self.shared_gate[...].astype(x.dtype))
                y = y + s
            return y, aux
        assert self.mlp is not None  # a dense block: a block has an Mlp or a MoeLayer
        return self.mlp(x, neuron_mask=neuron_mask), None


def _norm(norm: Norm | None, x: jax.Array) -> jax.Array:
    return x if norm is None else norm(x)
