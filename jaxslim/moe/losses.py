"""Router losses, routing metrics and THOR's consistency loss.

The balance and z losses are returned unweighted by each MoE layer (as metrics, one entry per
layer); :func:`moe_loss_term` weights and sums them for the training step. Metrics are float32 and
cheap: computed from the routing tensors the layer already has.

Example:
    >>> import jax.numpy as jnp
    >>> from jaxslim.moe.routing import Routing
    >>> probs = jnp.full((1, 4, 2), 0.5)
    >>> r = Routing(jnp.array([[[0], [1], [0], [1]]]), jnp.full((1, 4, 1), 0.5), jnp.zeros((1, 4, 2)), probs)
    >>> float(load_balance_loss(r, 2))  # perfectly balanced: 1.0
    1.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslim.moe.routing import Routing


def load_balance_loss(routing: Routing, num_experts: int) -> jax.Array:
    """Switch's balance loss ``E * sum_e f_e * P_e``, averaged over routing groups.

    ``f_e`` is the fraction of the group's tokens that chose expert ``e`` (among their top-k; a
    token counts once per chosen expert) and ``P_e`` the mean router probability of ``e``. Equals
    1 when both are uniform.
    """
    if routing.probs is None:
        raise ValueError("load_balance_loss needs a learned router's probs; random routing has none")
    chosen = jnp.max(jax.nn.one_hot(routing.experts, num_experts, dtype=jnp.float32), axis=-2)  # [G, S, E]
    f = jnp.mean(chosen, axis=1)
    p = jnp.mean(routing.probs, axis=1)
    return jnp.mean(f * p) * num_experts**2


def router_z_loss(logits: jax.Array) -> jax.Array:
    """ST-MoE's router z-loss: the mean over tokens of ``logsumexp(router logits)^2``."""
    z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(z * z)


def routing_metrics(routing: Routing, kept: jax.Array, num_experts: int) -> dict[str, jax.Array]:
    """Per-layer routing metrics.

    ``load``: ``[E]`` fraction of expert choices that went to each expert (before dropping; all
    ``1/E`` when balanced); ``dropped``: fraction of choices over capacity. Learned routers add
    ``aux_loss``, ``z_loss``, ``router_entropy`` (mean entropy of the router distribution, nats)
    and ``router_confidence`` (mean top-1 probability).
    """
    load = jnp.mean(jax.nn.one_hot(routing.experts, num_experts, dtype=jnp.float32), axis=(0, 1, 2))
    out = {"load": load, "dropped": 1.0 - jnp.mean(kept.astype(jnp.float32))}
    if routing.probs is not None and routing.logits is not None:  # a learned router
        p = routing.probs
        out.update(
            aux_loss=load_balance_loss(routing, num_experts),
            z_loss=router_z_loss(routing.logits),
            router_entropy=-jnp.mean(jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1)),
            router_confidence=jnp.mean(jnp.max(p, axis=-1)),
        )
    return out


def moe_loss_term(aux_loss_coef: float, z_loss_coef: float):
    """A training loss term ``(model output, batch) -> (loss, metrics)`` for MoE models.

    The loss is ``aux_loss_coef * sum_layers aux_loss + z_loss_coef * sum_layers z_loss``; the
    metrics are per-layer summaries ``moe/<name>/<layer>`` (``load_max``: the busiest expert's load
    times E, 1 when balanced; ``load_min`` likewise; ``dropped``; router entropy and confidence; the
    two losses), every expert's share of the choices ``moe/load/<layer>/<expert>``, and the totals
    over layers ``moe/aux_loss`` and ``moe/z_loss``.
    """

    def term(out, batch):
        del batch
        metrics = out.moe
        if metrics is None:
            return jnp.zeros((), jnp.float32), {}
        logged = moe_summary(metrics)
        loss = jnp.zeros((), jnp.float32)
        if "aux_loss" in metrics:
            aux, z = jnp.sum(metrics["aux_loss"]), jnp.sum(metrics["z_loss"])
            loss = aux_loss_coef * aux + z_loss_coef * z
            logged.update({"moe/aux_loss": aux, "moe/z_loss": z})
        return loss, logged

    return term


def moe_summary(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Flat scalar metrics ``moe/<name>/<layer>`` and ``moe/load/<layer>/<expert>`` from a model
    output's stacked per-layer metrics."""
    load = metrics["load"]  # [layers, E]
    num_experts = load.shape[-1]
    per_layer = {"load_max": jnp.max(load, -1) * num_experts, "load_min": jnp.min(load, -1) * num_experts}
    per_layer.update({k: v for k, v in metrics.items() if k != "load"})
    out = {f"moe/{name}/{i}": v[i] for name, v in per_layer.items() for i in range(v.shape[0])}
    out.update({f"moe/load/{i}/{e}": load[i, e] for i in range(load.shape[0]) for e in range(num_experts)})
    return out


def symmetric_kl(logits_p: jax.Array, logits_q: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """``0.5 * [KL(p || q) + KL(q || p)] = 0.5 * sum (p - q)(log p - log q)`` per position, in float32,
    averaged over positions (weighted by ``weights`` when given)."""
    lp = jax.nn.log_softmax(logits_p.astype(jnp.float32), axis=-1)
    lq = jax.nn.log_softmax(logits_q.astype(jnp.float32), axis=-1)
    kl = 0.5 * jnp.sum((jnp.exp(lp) - jnp.exp(lq)) * (lp - lq), axis=-1)
    if weights is None:
        return jnp.mean(kl)
    w = weights.astype(jnp.float32)
    return jnp.sum(kl * w) / jnp.maximum(jnp.sum(w), 1.0)
