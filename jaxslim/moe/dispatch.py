"""Dispatch: running routed tokens through stacked expert FFNs and combining their outputs.

Two regimes over the same :class:`~jaxslim.moe.routing.Routing`:

- :func:`capacity_moe`: each expert has a buffer of ``capacity`` slots per routing group; tokens
  take slots in priority order (all top-1 choices before any top-2 choice, in token order or in a
  batch-prioritized order) and overflowing tokens are dropped (their expert output is zero, so
  they pass through the residual). Dispatch and combine are one-hot einsums (flaxformer's masked
  router); with the expert buffer sharded on the ``expert`` mesh axis and the groups on the data
  axes, GSPMD turns the two einsums into the expert-parallel all-to-alls.
- :func:`dropless_moe`: token copies are sorted by expert and run through grouped matmuls
  (``jax.lax.ragged_dot``); nothing drops and no compute is spent on padding slots.

The expert FFN itself (:func:`expert_ffn`) is a batched FFN over a leading expert axis, shared by
the capacity path, THOR's one-expert-per-batch path and the all-expert mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxslim.moe.routing import Routing
from jaxslim.sharding import constrain


class ExpertWeights(NamedTuple):
    """Stacked expert FFN weights (already in the compute dtype), experts on axis 0.

    ``wi``/``wu``: ``[E, d, f]`` (``wu`` only for gated FFNs), ``wo``: ``[E, f, d]``; optional biases
    ``bi``/``bu``: ``[E, f]``, ``bo``: ``[E, d]``.
    """

    wi: jax.Array
    wo: jax.Array
    wu: jax.Array | None = None
    bi: jax.Array | None = None
    bu: jax.Array | None = None
    bo: jax.Array | None = None

    def take(self, idx: jax.Array) -> ExpertWeights:
        """The weights of experts ``idx`` (any integer array; its shape replaces the expert axis)."""
        return ExpertWeights._make(None if w is None else jnp.take(w, idx, axis=0) for w in self)


Hidden = Callable[[jax.Array], jax.Array]  # applied to the expert hidden units (activation, dropout)


def _bias(b: jax.Array | None, ndim: int) -> jax.Array | int:
    # [E, n] -> [E, 1, ..., 1, n] so it broadcasts over the token axes without rank promotion
    if b is None:
        return 0
    return jnp.reshape(b, (b.shape[0],) + (1,) * (ndim - 2) + (b.shape[-1],))


def expert_ffn(x: jax.Array, w: ExpertWeights, hidden: Hidden) -> jax.Array:
    """``x: [E, ..., d]`` through expert ``e``'s FFN for each slice ``x[e]``; returns ``[E, ..., d]``."""
    h = jnp.einsum("e...d,edf->e...f", x, w.wi) + _bias(w.bi, x.ndim)
    up = None
    if w.wu is not None:
        up = jnp.einsum("e...d,edf->e...f", x, w.wu) + _bias(w.bu, x.ndim)
    h = _gated(hidden, h, up)
    return jnp.einsum("e...f,efd->e...d", h, w.wo) + _bias(w.bo, x.ndim)


def _gated(hidden: Hidden, h: jax.Array, up: jax.Array | None) -> jax.Array:
    return hidden(h) if up is None else hidden(h) * up


def expert_capacity(group_size: int, num_experts: int, capacity_factor: float, min_capacity: int) -> int:
    """Slots per expert per group: ``round(capacity_factor * group_size / num_experts)``, at least
    ``min_capacity`` and at most ``group_size`` (a token visits an expert at most once)."""
    c = int(round(capacity_factor * group_size / num_experts))
    return min(max(c, min_capacity), group_size)


def buffer_positions(experts: jax.Array, num_experts: int, order: jax.Array | None = None) -> jax.Array:
    """Each choice's slot in its expert's buffer, ``[G, S, k]``.

    Choices are ranked per group with every token's first choice ahead of any second choice, then
    by token position, or by ``order`` (``[G, S]``, e.g. batch-prioritized) when given. A slot
    ``>= capacity`` means the choice is dropped.
    """
    if order is not None:
        experts = jnp.take_along_axis(experts, order[..., None], axis=1)
    g, s, k = experts.shape
    flat = jnp.swapaxes(experts, 1, 2).reshape(g, k * s)
    onehot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32)
    pos = jnp.sum((jnp.cumsum(onehot, axis=1) - 1) * onehot, axis=-1)
    pos = jnp.swapaxes(pos.reshape(g, k, s), 1, 2)
    if order is not None:
        pos = jnp.take_along_axis(pos, jnp.argsort(order, axis=1)[..., None], axis=1)
    return pos


def capacity_moe(
    x: jax.Array,
    routing: Routing,
    w: ExpertWeights,
    hidden: Hidden,
    capacity: int,
    *,
    order: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Capacity-limited MoE of ``x: [G, S, d]``; returns ``(output [G, S, d], kept [G, S, k])``."""
    num_experts = w.wi.shape[0]
    dt = x.dtype
    pos = buffer_positions(routing.experts, num_experts, order)
    to_expert = jax.nn.one_hot(routing.experts, num_experts, dtype=dt)  # [G, S, k, E]
    to_slot = jax.nn.one_hot(pos, capacity, dtype=dt)  # [G, S, k, C]; all zero when dropped
    dispatch = jnp.einsum("gske,gskc->gsec", to_expert, to_slot)
    combine = jnp.einsum("gske,gskc->gsec", to_expert * routing.gates[..., None].astype(dt), to_slot)
    # dispatch where the tokens are (groups sharded on the batch axes), then move the expert axis
    # onto the expert mesh axis: the reshard between the two constraints is the all-to-all
    xin = constrain(jnp.einsum("gsec,gsd->gecd", dispatch, x), ("batch", None, None, "act_embed"))
    xin = constrain(jnp.swapaxes(xin, 0, 1), ("act_exp", "batch", None, "act_embed"))
    y = constrain(expert_ffn(xin, w, hidden), ("act_exp", "batch", None, "act_embed"))
    y = constrain(jnp.swapaxes(y, 0, 1), ("batch", None, None, "act_embed"))
    out = jnp.einsum("gsec,gecd->gsd", combine, y)
    return out, pos < capacity


def _ragged_bias(b: jax.Array | None, sorted_experts: jax.Array) -> jax.Array | int:
    return 0 if b is None else jnp.take(b, sorted_experts, axis=0)


def grouped_ffn(
    xs: jax.Array, w: ExpertWeights, group_sizes: jax.Array, sorted_experts: jax.Array, hidden: Hidden
):
    """Expert FFN of rows ``xs: [M, d]`` sorted by expert, ``group_sizes[e]`` rows for expert ``e``."""
    h = jax.lax.ragged_dot(xs, w.wi, group_sizes) + _ragged_bias(w.bi, sorted_experts)
    up = None
    if w.wu is not None:
        up = jax.lax.ragged_dot(xs, w.wu, group_sizes) + _ragged_bias(w.bu, sorted_experts)
    h = _gated(hidden, h, up)
    return jax.lax.ragged_dot(h, w.wo, group_sizes) + _ragged_bias(w.bo, sorted_experts)


def dropless_moe(x: jax.Array, routing: Routing, w: ExpertWeights, hidden: Hidden) -> jax.Array:
    """Dropless MoE of ``x: [..., d]`` (any token axes matching ``routing.experts[..., k]``)."""
    num_experts = w.wi.shape[0]
    shape, d = x.shape, x.shape[-1]
    k = routing.experts.shape[-1]
    tokens = x.reshape(-1, d)
    flat = routing.experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    sorted_experts = jnp.take(flat, order)
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    ys = grouped_ffn(jnp.take(tokens, order // k, axis=0), w, sizes, sorted_experts, hidden)
    y = jnp.take(ys, jnp.argsort(order), axis=0).reshape(-1, k, d)
    out = jnp.einsum("nkd,nk->nd", y, routing.gates.reshape(-1, k).astype(x.dtype))
    return out.reshape(shape)
