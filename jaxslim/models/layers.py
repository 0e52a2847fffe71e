"""Small building blocks: annotated parameters, embeddings, norms, activations and RoPE.

Every weight is an ``nnx.Param`` whose ``out_sharding`` metadata holds its logical axis names. Eager
sharding is switched off per variable, so a model builds on a laptop with no mesh; placing it on
a mesh is :func:`jaxslim.sharding.create_sharded` / :func:`jaxslim.sharding.shard_model`'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.sharding import constrain

INIT_STD = 0.02  # BERT / GPT-2 / Llama all initialise weights with N(0, 0.02^2)


def param(
    rngs: nnx.Rngs | None,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype,
    init: str = "normal",
) -> nnx.Param:
    """An ``nnx.Param`` of ``shape`` annotated with logical ``axes``.

    ``init`` is ``"normal"`` (std 0.02), ``"zeros"`` or ``"ones"``.
    """
    if len(shape) != len(axes):
        raise ValueError(f"param shape {tuple(shape)} and logical axes {tuple(axes)} differ in rank")
    if init == "normal":
        value = INIT_STD * jax.random.normal(rngs.params(), tuple(shape), dtype)
    elif init == "zeros":
        value = jnp.zeros(tuple(shape), dtype)
    elif init == "ones":
        value = jnp.ones(tuple(shape), dtype)
    else:
        raise ValueError(f"param init must be 'normal', 'zeros' or 'ones', got {init!r}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def expand_to(v: jax.Array, ndim: int) -> jax.Array:
    """Adds leading unit axes so ``v`` broadcasts against a rank-``ndim`` array without implicit
    rank promotion (the suite runs with ``jax_numpy_rank_promotion='raise'``)."""
    return jnp.reshape(v, (1,) * (ndim - v.ndim) + v.shape)


def dtypes(cfg: ModelConfig) -> tuple[jnp.dtype, jnp.dtype]:
    """(compute dtype, parameter dtype) of a config."""
    return jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The FFN activation called ``name`` (exact erf GELU for ``"gelu"``, as BERT uses)."""
    return {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
    }[name]


class Norm(nnx.Module):
    """LayerNorm (scale and bias) or RMSNorm (scale only), computed in float32."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        _, pdt = dtypes(cfg)
        self.rms = cfg.rms_norm
        self.eps = cfg.norm_eps
        self.scale = param(None, (cfg.d_model,), ("norm",), pdt, "ones")
        self.bias = None if self.rms else param(None, (cfg.d_model,), ("norm",), pdt, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        if self.rms:
            h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
            return (h * expand_to(self.scale[...].astype(jnp.float32), h.ndim)).astype(x.dtype)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        h = h - mean
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        h = h * expand_to(self.scale[...].astype(jnp.float32), h.ndim) + expand_to(
            self.bias[...].astype(jnp.float32), h.ndim
        )
        return h.astype(x.dtype)


def _lookup(table: jax.Array, ids: jax.Array, row_axis: str | None = None) -> jax.Array:
    # FSDP gathers a table's embed dimension before use; without this constraint the partitioner
    # cannot map the gather onto a batch sharded over the same mesh axis and replicates everything.
    return jnp.take(constrain(table, (row_axis, None)), ids, axis=0)


class Embeddings(nnx.Module):
    """Token embeddings, plus learned positions and token types where the architecture has them.

    BERT also normalises the sum (its embedding LayerNorm).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        _, pdt = dtypes(cfg)
        self.tokens = param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pdt)
        learned = not cfg.rope
        self.positions = param(rngs, (cfg.max_len, cfg.d_model), (None, "embed"), pdt) if learned else None
        with_types = cfg.arch == "bert" and cfg.type_vocab_size > 0
        self.types = (
            param(rngs, (cfg.type_vocab_size, cfg.d_model), (None, "embed"), pdt) if with_types else None
        )
        self.norm = Norm(cfg) if cfg.arch == "bert" else None

    def __call__(self, tokens: jax.Array, positions: jax.Array, token_types: jax.Array | None):
        dt, _ = dtypes(self.cfg)
        x = _lookup(self.tokens[...], tokens, "vocab")
        if self.positions is not None:
            x = x + _lookup(self.positions[...], positions)
        if self.types is not None:
            types = jnp.zeros_like(tokens) if token_types is None else token_types
            x = x + _lookup(self.types[...], types)
        if self.norm is not None:
            x = self.norm(x)
        return constrain(x.astype(dt), ("batch", "length", "act_embed"))

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the token table (a tied output head)."""
        w = self.tokens[...].astype(x.dtype)
        return jnp.einsum("btd,vd->btv", x, w)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of shape ``[batch, length, 1, head_dim]`` for rotate-half RoPE (HF Llama layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x`` of shape ``[batch, length, heads, head_dim]`` by the RoPE tables."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)
