"""Attention kernels by backend: XLA, cuDNN flash attention (GPU) and splash attention (TPU Pallas).

Causality is a flag, never a ``[batch, heads, q, kv]`` mask: the XLA path lets XLA build it from
iotas inside the fused computation, cuDNN and splash skip the masked blocks. A padding mask
(``[batch, 1, 1, kv]``) becomes key segment ids for splash. ``"auto"`` picks splash on a TPU mesh,
cuDNN on a GPU one and XLA elsewhere; paths a kernel cannot take (a sliding-window band, cuDNN
with a mask or float32) fall back to XLA, which gives the same numbers.

Example:
    >>> import jax.numpy as jnp
    >>> q = k = v = jnp.ones((1, 8, 2, 4))
    >>> dot_product_attention(q, k, v, mask=None, causal=True, backend="xla").shape
    (1, 8, 2, 4)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec

BACKENDS = ("auto", "xla", "cudnn", "splash")


def resolve_backend(choice: str) -> str:
    """The backend ``choice`` means here: ``"auto"`` follows the platform of the mesh in context
    (the one a step is compiled for, also ahead of time), else the default backend's."""
    if choice not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {choice!r}")
    if choice != "auto":
        return choice
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    platform = device.platform if device is not None else jax.default_backend()
    return {"tpu": "splash", "gpu": "cudnn"}.get(platform, "xla")


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    causal: bool,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    interpret: bool = False,
) -> jax.Array:
    """Attention of ``q: [b, t, heads, d]`` over ``k, v: [b, s, kv_heads, d]``.

    Args:
        mask: boolean, broadcastable to ``[b, heads, t, s]`` (True = attend), or None.
        causal: queries attend only to keys at or before their position.
        scale: score scale (default ``d ** -0.5``).
        softcap: scores become ``softcap * tanh(score / softcap)`` (Gemma 2).
        backend: one of ``BACKENDS``.
        interpret: run the splash kernel in Pallas interpret mode (CPU tests).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    backend = resolve_backend(backend)
    padding = mask is not None and mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1
    if backend == "splash" and (mask is None or padding):
        return _splash(q, k, v, mask, causal=causal, scale=scale, softcap=softcap, interpret=interpret)
    low_precision = q.dtype in (jnp.bfloat16, jnp.float16)
    if backend == "cudnn" and mask is None and softcap is None and low_precision:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, implementation="cudnn")
    if softcap is not None:
        return _softcapped(q, k, v, mask, causal, scale, softcap)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, is_causal=causal, implementation="xla"
    )


def _softcapped(q, k, v, mask, causal: bool, scale: float, cap: float) -> jax.Array:
    """Softcapped attention (``jax.nn.dot_product_attention`` has no softcap); softmax in float32."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    scores = cap * jnp.tanh(scores / cap)
    if causal:
        t, s = q.shape[1], k.shape[1]
        keep = jnp.arange(t)[:, None] >= jnp.arange(s)[None, :]
        mask = keep[None, None] if mask is None else mask & keep[None, None]
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _splash(q, k, v, mask, *, causal: bool, scale: float, softcap, interpret: bool) -> jax.Array:
    """Splash attention, one kernel per device's batch, heads and query chunk (``shard_map`` under a
    mesh).

    Under context parallelism (the ``length`` axis of the rules split over mesh axes) each device
    keeps its chunk of the queries and gathers the whole keys and values; its causal mask is offset
    by the chunk's start.
    """
    b, t = q.shape[:2]
    s = k.shape[1]
    # [b, t, h, d] -> [b, h, t, d]; the scale folds into q, as the kernel does not scale
    qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    kv_ids = jnp.ones((b, s), jnp.int32) if mask is None else mask[:, 0, 0, :].astype(jnp.int32)
    kernel = functools.partial(_splash_local, causal=causal, softcap=softcap, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    rules = flax_spmd.get_logical_axis_rules()
    if mesh.empty or not rules:
        return jnp.swapaxes(kernel(qh, kh, vh, kv_ids), 1, 2)
    from jaxslim.sharding import logical_to_spec, spec_axes, spec_shards

    q_spec = tuple(logical_to_spec(("batch", "act_heads", "length", None), rules, mesh, qh.shape))
    q_spec += (None,) * (4 - len(q_spec))
    kv_spec = tuple(logical_to_spec(("batch", "act_kv_heads", None, None), rules, mesh, kh.shape))
    if q_spec[1:2] != kv_spec[1:2]:  # heads split differently: keep them whole
        q_spec = (q_spec[0], None, q_spec[2], None)
        kv_spec = q_spec[:1]
    context = q_spec[2]
    if context is not None and causal:  # each device's queries are one chunk: offset its mask
        chunks = spec_shards(mesh, context)
        kernel = functools.partial(_splash_chunk, kernel=kernel, chunks=chunks, axes=spec_axes(context))
    out = jax.shard_map(
        kernel,
        mesh=mesh,
        in_specs=(
            PartitionSpec(*q_spec),
            PartitionSpec(*kv_spec),
            PartitionSpec(*kv_spec),
            PartitionSpec(q_spec[0]),
        ),
        out_specs=PartitionSpec(*q_spec),
        check_vma=False,
    )(qh, kh, vh, kv_ids)
    return jnp.swapaxes(out, 1, 2)


def _splash_chunk(q, k, v, kv_ids, *, kernel, chunks: int, axes: tuple[str, ...]):
    """The kernel on this device's chunk of the queries: the causal mask's offset is static, so
    one kernel per chunk, the device's picked by its index along the context axes."""
    t = q.shape[2]
    branches = [functools.partial(kernel, q_offset=i * t) for i in range(chunks)]
    return jax.lax.switch(jax.lax.axis_index(axes), branches, q, k, v, kv_ids)


def _splash_local(q, k, v, kv_ids, *, causal: bool, softcap, interpret: bool, q_offset: int = 0):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    heads, t, s = q.shape[1], q.shape[2], k.shape[2]
    one = sm.CausalMask((t, s), offset=q_offset) if causal else sm.FullMask((t, s))
    bq, bkv = min(512, t), min(512, s)
    blocks = sk.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([one] * heads),
        block_sizes=blocks,
        head_shards=1,
        q_seq_shards=1,
        attn_logits_soft_cap=softcap,
        interpret=interpret,
    )
    q_ids = jnp.ones((q.shape[0], t), jnp.int32)
    return jax.vmap(lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=sk.SegmentIds(q=qi, kv=ki)))(
        q, k, v, q_ids, kv_ids
    )
