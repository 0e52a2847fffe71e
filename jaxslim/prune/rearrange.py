"""Mask rearrangement: per layer, swap which units are pruned using the block-diagonal Fisher.

The diagonal Fisher of the search treats units independently. Within one layer, Kwon et al. use the
layer's block of the empirical Fisher, ``GᵀG`` with ``G [examples, units]`` the per-example mask
gradients: the loss increase of pruning the set ``P`` is ``1_Pᵀ GᵀG 1_P = Σ_n (Σ_{i∈P} g_{n,i})²``,
so units whose gradients cancel are cheaper to remove together. The *number* pruned per layer stays
what the search chose, so the budget still holds.

Greedy pass (as in the reference): start with ``P`` = the lowest-Fisher units; for every other unit
in ascending Fisher order, add it to ``P`` and drop the member of ``P`` whose removal leaves the
smallest objective (possibly the unit just added). With ``K = GᵀG``, ``v = K 1_P`` and
``q = 1_Pᵀ K 1_P`` kept up to date, each step is O(units) instead of the reference's O(|P|·examples),
and the whole pass runs in one ``lax.fori_loop`` on device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _greedy(gram: jax.Array, order: jax.Array, pruned0: jax.Array) -> jax.Array:
    """``pruned0``: boolean ``[n]`` (the |P| lowest); ``order``: the other units, ascending Fisher."""
    diag = jnp.diag(gram)
    v = gram @ pruned0.astype(gram.dtype)
    q = jnp.sum(v * pruned0)

    def body(i, carry):
        pruned, v, q = carry
        j = order[i]
        q = q + 2.0 * v[j] + gram[j, j]
        v = v + gram[:, j]
        pruned = pruned.at[j].set(True)
        cost = q - 2.0 * v + diag  # objective after removing each unit from P
        k = jnp.argmin(jnp.where(pruned, cost, jnp.inf))
        q = cost[k]
        v = v - gram[:, k]
        return pruned.at[k].set(False), v, q

    pruned, _, _ = jax.lax.fori_loop(0, order.shape[0], body, (pruned0, v, q))
    return pruned


def objective(grads: np.ndarray, keep: np.ndarray) -> float:
    """``Σ_n (Σ_{i pruned} g_{n,i})²`` for one layer: ``grads [examples, units]``, ``keep [units]``."""
    s = np.asarray(grads, np.float64)[:, ~np.asarray(keep, bool)].sum(1)
    return float(np.sum(s * s))


def rearrange_layer(grads: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """A keep-mask of one layer with the same number kept and a block-diagonal Fisher objective no
    worse than ``keep``'s greedy starting point (the ``|P|`` lowest-diagonal units)."""
    keep = np.asarray(keep, bool)
    n_pruned = int((~keep).sum())
    if n_pruned == 0 or n_pruned == keep.size:
        return keep.copy()
    g = jnp.asarray(grads, jnp.float32)
    gram = (g.T @ g).astype(jnp.float32)
    fisher = np.asarray(jnp.diag(gram))
    ascending = np.argsort(fisher, kind="stable")
    pruned0 = np.zeros(keep.size, bool)
    pruned0[ascending[:n_pruned]] = True
    pruned = np.asarray(_greedy(gram, jnp.asarray(ascending[n_pruned:]), jnp.asarray(pruned0)))
    assert pruned.sum() == n_pruned
    return ~pruned


def rearrange(
    head_grads: np.ndarray,
    neuron_grads: np.ndarray,
    head_mask: np.ndarray,
    neuron_mask: np.ndarray,
    *,
    group_size: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Rearranges both masks layer by layer (head groups of ``group_size`` move together).

    Args:
        head_grads: ``[examples, layers, heads]``; neuron_grads: ``[examples, layers, d_ff]``.
        head_mask, neuron_mask: boolean keep-masks from the search.
    """
    n, layers, heads = head_grads.shape
    g_grads = np.asarray(head_grads).reshape(n, layers, heads // group_size, group_size).sum(-1)
    g_mask = np.any(np.asarray(head_mask, bool).reshape(layers, heads // group_size, group_size), axis=-1)
    new_h = np.stack([rearrange_layer(g_grads[:, layer], g_mask[layer]) for layer in range(layers)])
    new_n = np.stack([rearrange_layer(neuron_grads[:, layer], neuron_mask[layer]) for layer in range(layers)])
    return np.repeat(new_h, group_size, axis=-1), new_n
