"""Feed-forward block: GELU MLP (BERT, GPT-2) or SwiGLU (Llama), with a per-neuron mask."""

from __future__ import annotations

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxslim.config import ModelConfig
from jaxslim.nn import activation, dtypes, expand_to, param, project
from jaxslim.sharding import constrain

ACT = ("batch", "length", "act_embed")
HIDDEN = ("batch", "length", "act_mlp")


class Mlp(nnx.Module):
    """``wo(act(x wi + bi) [* x wu]) + bo`` with ``d_ff`` hidden units."""

    def __init__(self, cfg: ModelConfig, d_ff: int, *, rngs: nnx.Rngs):
        _, pdt = dtypes(cfg)
        d = cfg.d_model
        self.act = cfg.activation
        self.wi = param(rngs, (d, d_ff), ("embed", "mlp"), pdt)
        self.wu: nnx.Param | None = param(rngs, (d, d_ff), ("embed", "mlp"), pdt) if cfg.gated_mlp else None
        self.wo = param(rngs, (d_ff, d), ("mlp", "embed"), pdt)
        if cfg.mlp_bias:
            self.bi: nnx.Param | None = param(None, (d_ff,), ("mlp",), pdt, "zeros")
            self.bu: nnx.Param | None = (
                param(None, (d_ff,), ("mlp",), pdt, "zeros") if cfg.gated_mlp else None
            )
            self.bo: nnx.Param | None = param(None, (d,), ("embed",), pdt, "zeros")
        else:
            self.bi = self.bu = self.bo = None

    def __call__(self, x: jax.Array, *, neuron_mask: jax.Array | None = None) -> jax.Array:
        """Applies the FFN; ``neuron_mask: [d_ff]`` multiplies each hidden unit."""
        dt = x.dtype
        h = self.hidden(x)
        if neuron_mask is not None:
            h = h * expand_to(neuron_mask.astype(dt), h.ndim)
        h = constrain(h, ("batch", "length", "act_mlp"))
        y = project("...f,fd->...d", h, self.wo, HIDDEN, ACT)
        if self.bo is not None:
            y = y + expand_to(self.bo[...].astype(dt), y.ndim)
        return checkpoint_name(constrain(y, ("batch", "length", "act_embed")), "mlpwo")

    def hidden(self, x: jax.Array) -> jax.Array:
        """The hidden units ``act(x wi + bi) [* (x wu + bu)]``, ``[batch, length, d_ff]``: the output is
        ``hidden @ wo + bo``."""
        dt = x.dtype
        h = project("...d,df->...f", x, self.wi, ACT, HIDDEN)
        if self.bi is not None:
            h = h + expand_to(self.bi[...].astype(dt), h.ndim)
        h = activation(self.act)(h)
        if self.wu is not None:
            up = project("...d,df->...f", x, self.wu, ACT, HIDDEN)
            if self.bu is not None:
                up = up + expand_to(self.bu[...].astype(dt), up.ndim)
            h = h * up
        return h
