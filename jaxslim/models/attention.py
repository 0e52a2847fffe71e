"""Multi-head attention with grouped-query heads, RoPE, padding masks and a per-head output mask;
optionally q/k RMSNorm and a sliding window. The kernel is chosen by ``cfg.attention``
(:mod:`jaxslim.models.attention_kernels`: splash on TPU, cuDNN on GPU, XLA elsewhere).

Weights keep an explicit heads axis (``wq: [embed, heads, head_dim]``, ``wo: [heads, head_dim,
embed]``), so pruning, slimming and tensor parallelism address heads directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxslim.config import ModelConfig
from jaxslim.models.attention_kernels import dot_product_attention
from jaxslim.nn import Norm, apply_rope, dtypes, expand_to, param, project
from jaxslim.sharding import constrain


class Attention(nnx.Module):
    """Self-attention with ``n_heads`` query heads and ``n_kv_heads`` key/value heads."""

    def __init__(self, cfg: ModelConfig, n_heads: int, n_kv_heads: int, *, rngs: nnx.Rngs, window: int = 0):
        _, pdt = dtypes(cfg)
        d, hd = cfg.d_model, cfg.head_dim_
        self.cfg = cfg
        self.window = window  # this layer's sliding window (0: none); a scanned stack passes its own
        self.wq = param(rngs, (d, n_heads, hd), ("embed", "heads", "head_dim"), pdt)
        self.wk = param(rngs, (d, n_kv_heads, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.wv = param(rngs, (d, n_kv_heads, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.wo = param(rngs, (n_heads, hd, d), ("heads", "head_dim", "embed"), pdt)
        if cfg.attn_bias:
            self.bq: nnx.Param | None = param(None, (n_heads, hd), ("heads", "head_dim"), pdt, "zeros")
            self.bk: nnx.Param | None = param(None, (n_kv_heads, hd), ("kv_heads", "head_dim"), pdt, "zeros")
            self.bv: nnx.Param | None = param(None, (n_kv_heads, hd), ("kv_heads", "head_dim"), pdt, "zeros")
        else:
            self.bq = self.bk = self.bv = None
        self.bo = param(None, (d,), ("embed",), pdt, "zeros") if cfg.out_bias else None
        if cfg.qk_norm and cfg.qk_norm_scope == "layer":
            self.q_norm: Norm | None = Norm(cfg, width=(n_heads, hd), axis=("heads", "head_dim"))
            self.k_norm: Norm | None = Norm(cfg, width=(n_kv_heads, hd), axis=("kv_heads", "head_dim"))
        elif cfg.qk_norm:
            self.q_norm = Norm(cfg, width=hd, axis="head_dim")
            self.k_norm = Norm(cfg, width=hd, axis="head_dim")
        else:
            self.q_norm = self.k_norm = None

    def _project(self, x, w, b, axes, name: str):
        y = project("btd,dhk->bthk", x, w, ("batch", "length", "act_embed"), axes)
        if b is not None:
            y = y + expand_to(b[...].astype(x.dtype), y.ndim)
        return checkpoint_name(constrain(y, axes), name)  # the remat policies' names

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None,
        rope: tuple[jax.Array, jax.Array] | None = None,
        head_mask: jax.Array | None = None,
        window: jax.Array | int | None = None,
    ) -> jax.Array:
        """Attends ``x: [batch, length, embed]``.

        Args:
            mask: boolean, broadcastable to ``[batch, heads, q_len, kv_len]``; True = attend. A
                causal model's causality is applied by the kernel (``cfg.causal``), not the mask.
            rope: cos/sin tables from :func:`~jaxslim.nn.rope_tables`.
            head_mask: ``[heads]`` multipliers of each head's output (the Fisher-pruning seam).
            window: sliding window (0: none); default this layer's own (``cfg.window_of``).
        """
        n_heads = self.wq.shape[1]
        if n_heads == 0:  # a slimmed layer whose heads were all pruned
            return (
                jnp.zeros_like(x)
                if self.bo is None
                else jnp.broadcast_to(self.bo[...].astype(x.dtype), x.shape)
            )
        out = self.contexts(x, mask=mask, rope=rope, window=window)
        if head_mask is not None:
            out = out * expand_to(head_mask.astype(out.dtype)[:, None], out.ndim)
        heads = ("batch", "length", "act_heads", "head_dim")
        y = project("bthk,hkd->btd", out, self.wo, heads, ("batch", "length", "act_embed"))
        if self.bo is not None:
            y = y + expand_to(self.bo[...].astype(x.dtype), y.ndim)
        return checkpoint_name(constrain(y, ("batch", "length", "act_embed")), "out_proj")

    def contexts(self, x: jax.Array, *, mask: jax.Array | None, rope=None, window=None) -> jax.Array:
        """Each head's attention output before the output projection: ``[batch, length, heads, head_dim]``."""
        q = self._project(x, self.wq, self.bq, ("batch", "length", "act_heads", "head_dim"), "query_proj")
        k = self._project(x, self.wk, self.bk, ("batch", "length", "act_kv_heads", "head_dim"), "key_proj")
        v = self._project(x, self.wv, self.bv, ("batch", "length", "act_kv_heads", "head_dim"), "value_proj")
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        window = self.window if window is None else window
        if rope is not None and len(rope) == 4:  # (global cos, sin, local cos, sin): Gemma 3
            local = window > 0
            rope = (jnp.where(local, rope[2], rope[0]), jnp.where(local, rope[3], rope[1]))
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        mask = _windowed(mask, x.shape[1], window)
        cfg = self.cfg
        scale = None if cfg.attn_scale_dim is None else float(cfg.attn_scale_dim) ** -0.5
        softcap = None if cfg.attn_softcap is None else float(cfg.attn_softcap)
        return dot_product_attention(
            q, k, v, mask=mask, causal=cfg.causal, scale=scale, softcap=softcap, backend=cfg.attention
        )

    def head_outputs(self, x: jax.Array, *, mask: jax.Array | None, rope=None, window=None) -> jax.Array:
        """Each head's contribution to the output, ``[batch, length, heads, embed]`` (bias excluded):
        the attention output is their sum plus ``bo``."""
        out = self.contexts(x, mask=mask, rope=rope, window=window)
        return jnp.einsum("bthk,hkd->bthd", out, self.wo[...].astype(x.dtype))


def _windowed(mask: jax.Array | None, length: int, window) -> jax.Array | None:
    """``mask`` restricted to keys fewer than ``window`` positions away from the query (0: no window):
    the last ``window`` positions under a causal mask, ``window - 1`` on either side without one.

    ``window`` may be traced (a scanned stack's per-layer value); a static 0 leaves ``mask`` as is.
    """
    if isinstance(window, int) and window == 0:
        return mask
    q = jnp.arange(length)[:, None]
    k = jnp.arange(length)[None, :]
    band = ((window <= 0) | (jnp.abs(q - k) < window))[None, None]
    return band if mask is None else mask & band
