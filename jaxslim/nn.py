"""Small building blocks: annotated parameters, embeddings, norms, activations and RoPE.

Every weight is an ``nnx.Param`` whose ``out_sharding`` metadata holds its logical axis names. Eager
sharding is switched off per variable, so a model builds on a laptop with no mesh; placing it on
a mesh is :func:`jaxslim.sharding.create_sharded` / :func:`jaxslim.sharding.shard_model`'s job.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from jaxslim.config import ModelConfig, RopeScaling
from jaxslim.sharding import constrain, context_spec, shard_gradient

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
        if rngs is None:
            raise ValueError(
                f"param: init='normal' draws random values and needs rngs, got None for {tuple(axes)}"
            )
        value = INIT_STD * jax.random.normal(rngs.params(), tuple(shape), dtype)
    elif init == "zeros":
        value = jnp.zeros(tuple(shape), dtype)
    elif init == "ones":
        value = jnp.ones(tuple(shape), dtype)
    else:
        raise ValueError(f"param init must be 'normal', 'zeros' or 'ones', got {init!r}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def read(var: nnx.Variable, dtype) -> jax.Array:
    """A weight's value in ``dtype`` whose gradient is reduce-scattered to the weight's sharding
    (:func:`~jaxslim.sharding.shard_gradient`); a scanned stack's ``layers`` axis is skipped."""
    value = var[...].astype(dtype)
    axes = var.get_metadata().get("out_sharding")
    if not axes or len(axes) < value.ndim:
        return value
    return shard_gradient(value, tuple(axes)[len(axes) - value.ndim :])


def project(spec: str, x: jax.Array, var: nnx.Variable, x_axes: tuple, y_axes: tuple) -> jax.Array:
    """``einsum(spec, x, weight)`` in ``x``'s dtype, the weight's gradient constrained to its
    sharding (:func:`read`); ``x_axes`` / ``y_axes`` name the logical axes of ``x`` and the result."""
    del x_axes, y_axes  # kept at the call sites: they document the layouts the einsum maps
    return jnp.einsum(spec, x, read(var, x.dtype))


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
    """LayerNorm (scale and, unless ``cfg.norm_bias`` is off, bias) or RMSNorm (scale only) over the
    last axis, computed in float32.

    ``width`` defaults to ``d_model``; q/k norms use ``head_dim`` with logical axis ``head_dim``.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs | None = None,
        width: int | tuple[int, ...] | None = None,
        axis: str | tuple[str, ...] = "norm",
    ):
        _, pdt = dtypes(cfg)
        width = cfg.d_model if width is None else width
        # a shape of several axes normalises over all of them (OLMo 2's q/k norm over every head)
        width = width if isinstance(width, tuple) else (width,)
        axes = axis if isinstance(axis, tuple) else (axis,)
        self.axes = tuple(range(-len(width), 0))
        self.rms = cfg.rms_norm
        self.eps = cfg.norm_eps
        self.offset = float(cfg.norm_offset)  # Gemma multiplies by 1 + scale
        self.scale = param(None, width, axes, pdt, "zeros" if self.offset == 1.0 else "ones")
        self.bias = None if self.rms or not cfg.norm_bias else param(None, width, axes, pdt, "zeros")

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        if self.rms:
            h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=self.axes, keepdims=True) + self.eps)
            scale = self.scale[...].astype(jnp.float32)
            if self.offset:
                scale = self.offset + scale
            return (h * expand_to(scale, h.ndim)).astype(x.dtype)
        mean = jnp.mean(h, axis=self.axes, keepdims=True)
        h = h - mean
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=self.axes, keepdims=True) + self.eps)
        h = h * expand_to(self.scale[...].astype(jnp.float32), h.ndim)
        if self.bias is not None:  # ModernBERT's LayerNorms have none
            h = h + expand_to(self.bias[...].astype(jnp.float32), h.ndim)
        return h.astype(x.dtype)


def _lookup(table: jax.Array, ids: jax.Array, row_axis: str | None = None) -> jax.Array:
    """Rows ``ids`` of ``table`` (logical axes ``(row_axis, "embed")``).

    The forward pass gathers the table's embed dimension first: without that constraint the
    partitioner cannot map the gather onto a batch sharded over the same mesh axis and replicates
    everything. The gradient is a scatter-add into the table's own sharding, each device adding
    only its own columns: the token gradients move from the batch's sharding to the table's columns
    first (one all-to-all of ``[tokens, embed]`` over the FSDP axes), so no chip holds a whole
    ``[rows, embed]`` gradient and what is summed across chips is a column shard (over the
    data-parallel axes). Scattering whole rows instead makes the partitioner all-reduce the whole
    table's gradient on every chip.
    """
    return _sharded_take(table, ids, row_axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _sharded_take(table: jax.Array, ids: jax.Array, row_axis: str | None) -> jax.Array:
    return jnp.take(constrain(table, (row_axis, None)), ids, axis=0)


def _sharded_take_fwd(table, ids, row_axis):
    return _sharded_take(table, ids, row_axis), (table, ids)


def _sharded_take_bwd(row_axis, res, g):
    table, ids = res
    ids, g = ids.reshape(-1), g.reshape(-1, g.shape[-1])
    # the columns take their mesh axes first; the tokens keep the batch axes that are left
    spec = context_spec(("embed", "batch"), g.shape[::-1])
    if spec is not None:
        g = jax.lax.with_sharding_constraint(g, PartitionSpec(spec[1], spec[0]))
        ids = jax.lax.with_sharding_constraint(ids, PartitionSpec(spec[1]))
    grad = constrain(jnp.zeros(table.shape, g.dtype), (row_axis, "embed"))
    grad = grad.at[ids].add(g, mode="drop")
    return constrain(grad.astype(table.dtype), (row_axis, "embed")), None


_sharded_take.defvjp(_sharded_take_fwd, _sharded_take_bwd)


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
        if self.cfg.embed_scale:  # Gemma: sqrt(d_model), rounded to the activations' dtype first
            x = x * jnp.asarray(self.cfg.d_model**0.5, x.dtype)
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
        return project(
            "btd,vd->btv", x, self.tokens, ("batch", "length", "act_embed"), ("batch", "length", "act_vocab")
        )


def rope_frequencies(
    head_dim: int, theta: float, scaling: RopeScaling | None = None, *, max_len: int = 0
) -> tuple[jax.Array, float]:
    """RoPE inverse frequencies ``[head_dim // 2]`` and the cos/sin scale of a static scaling.

    Plain RoPE is ``theta ** (-2j / head_dim)``; ``linear``, ``yarn`` and ``llama3`` rescale it
    (formulas on :class:`~jaxslim.config.RopeScaling`); ``dynamic`` depends on the positions and is
    applied in :func:`rope_tables`. ``max_len`` stands in for an absent ``original_max_len``.
    """
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None or scaling.kind == "dynamic":
        return inv_freq, 1.0
    factor = float(scaling.factor)
    if scaling.kind == "linear":
        return inv_freq / factor, 1.0
    original = scaling.original_max_len or max_len
    if scaling.kind == "llama3":
        low_wavelen = original / scaling.low_freq_factor
        high_wavelen = original / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(medium, blended, scaled), 1.0

    # yarn
    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    ramp = jnp.clip((jnp.arange(head_dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1 where the plain (extrapolated) frequency is kept
    pos_freqs = theta**exponents
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        if scaling.mscale and scaling.mscale_all_dim:
            attention_factor = _yarn_mscale(factor, scaling.mscale) / _yarn_mscale(
                factor, scaling.mscale_all_dim
            )
        else:
            attention_factor = _yarn_mscale(factor, 1.0)
    return inv_freq, float(attention_factor)


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_tables(
    positions: jax.Array,
    head_dim: int,
    theta: float,
    scaling: RopeScaling | None = None,
    *,
    max_len: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """cos and sin of shape ``[batch, length, 1, head_dim]`` for rotate-half RoPE (HF Llama layout).

    ``scaling`` rescales the frequencies (:class:`~jaxslim.config.RopeScaling`); ``max_len`` is the
    model's context (``dynamic`` scaling starts beyond it; the default ``original_max_len``).
    ``dynamic`` uses the largest position of the whole batch, as Hugging Face does.
    """
    inv_freq, attention_factor = rope_frequencies(head_dim, theta, scaling, max_len=max_len)
    if scaling is not None and scaling.kind == "dynamic":
        factor = float(scaling.factor)
        longest = jnp.maximum(jnp.max(positions).astype(jnp.float32) + 1, float(max_len))
        base = theta * ((factor * longest / max_len) - (factor - 1)) ** (head_dim / (head_dim - 2))
        inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x`` of shape ``[batch, length, heads, head_dim]`` by the RoPE tables.

    Tables narrower than ``head_dim`` (partial rotary embeddings) rotate the leading dimensions
    and pass the rest through unchanged.
    """
    rot = cos.shape[-1]
    x32 = x.astype(jnp.float32)
    head, tail = x32[..., :rot], x32[..., rot:]
    half = rot // 2
    rotated = jnp.concatenate([-head[..., half:], head[..., :half]], axis=-1)
    out = head * cos + rotated * sin
    if rot < x.shape[-1]:
        out = jnp.concatenate([out, tail], axis=-1)
    return out.astype(x.dtype)
