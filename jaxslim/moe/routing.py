"""Routers: which experts each token goes to and with what gate weight.

Every router returns a :class:`Routing` over routing groups ``[groups, group_size]`` of tokens, so
the dispatchers in :mod:`jaxslim.moe.dispatch` consume top-k learned routing and THOR's random
assignment alike. Learned routing is computed in float32 whatever the model's dtype (Switch's
selective precision).

Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    >>> w = jax.random.normal(jax.random.key(1), (8, 4))
    >>> r = top_k_routing(x, w, k=2)
    >>> r.experts.shape, r.gates.shape, r.probs.shape
    ((2, 6, 2), (2, 6, 2), (2, 6, 4))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Routing(NamedTuple):
    """Routing decisions for ``[groups, group_size]`` tokens.

    Attributes:
        experts: ``[G, S, k]`` int32 chosen experts, the best first.
        gates: ``[G, S, k]`` float32 weights of the chosen experts' outputs.
        logits / probs: ``[G, S, E]`` float32 router logits and softmax (None for random routing).
    """

    experts: jax.Array
    gates: jax.Array
    logits: jax.Array | None = None
    probs: jax.Array | None = None


def top_k_routing(
    x: jax.Array,
    router_w: jax.Array,
    *,
    k: int,
    renormalize: bool = False,
    jitter: float = 0.0,
    rng: jax.Array | None = None,
) -> Routing:
    """Token-choice top-k routing of ``x: [G, S, d]`` through the router kernel ``[d, E]``.

    Args:
        k: experts per token.
        renormalize: divide the k gates by their sum (Mixtral); else they are the probabilities.
        jitter: multiply the router input by ``U(1 - jitter, 1 + jitter)`` (needs ``rng``).
        rng: PRNG key for the jitter.
    """
    h = x.astype(jnp.float32)
    if jitter:
        if rng is None:
            raise ValueError("router jitter needs an rng key")
        h = h * jax.random.uniform(rng, h.shape, jnp.float32, 1.0 - jitter, 1.0 + jitter)
    logits = h @ router_w.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    gates, experts = jax.lax.top_k(probs, k)
    if renormalize:
        gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    return Routing(experts.astype(jnp.int32), gates, logits, probs)


def random_routing(rng: jax.Array, shape: tuple[int, int], num_experts: int, *, per: str) -> Routing:
    """THOR's random assignment of ``shape = (batch, length)`` tokens to one expert each.

    ``per="token"`` draws every token's expert, ``"sequence"`` one expert per sequence and
    ``"batch"`` one for all. The result is one group per sequence with gate 1.
    """
    b, t = shape
    if per == "token":
        e = jax.random.randint(rng, (b, t), 0, num_experts)
    elif per == "sequence":
        e = jnp.broadcast_to(jax.random.randint(rng, (b, 1), 0, num_experts), (b, t))
    elif per == "batch":
        e = jnp.broadcast_to(jax.random.randint(rng, (), 0, num_experts), (b, t))
    else:
        raise ValueError(f"random routing per must be 'token', 'sequence' or 'batch', got {per!r}")
    e = e.astype(jnp.int32)[..., None]
    return Routing(e, jnp.ones(e.shape, jnp.float32))


def priority_order(routing: Routing) -> jax.Array:
    """Batch-prioritized routing's token order within each group: by descending top-1 gate.

    Returns ``[G, S]`` indices (a permutation per group).
    """
    return jnp.argsort(-routing.gates[..., 0], axis=-1, stable=True)
