"""Mask search: which head groups and FFN neurons to keep under a FLOPs or a latency budget.

Both searches follow Kwon et al. (2022). Importance is the diagonal Fisher of each unit's mask (the
loss increase of removing units is approximated as the sum of their Fisher values), so the problem is
a knapsack with two item sizes.

* FLOPs (:func:`search_flops`): every head group costs the same and every neuron costs the same, so
  the knapsack is solved exactly: for each number of kept groups ``n`` (zero included), fill the rest
  of the budget with the best neurons, and keep the ``n`` with the largest total Fisher.
* Latency (:func:`search_latency`): measured per-layer latency is flat below a threshold number of
  units and linear above it (:class:`~jaxslim.prune.latency.LinearFit`). Each module (a layer's
  attention or its FFN) is either removed or keeps at least its threshold's worth of best units; for
  every number of removed modules of each kind the remaining budget is recomputed from scratch (the
  reference decrements it cumulatively across combinations, which judges later combinations against
  a too-small budget) and the above-threshold units fill it as in the FLOPs knapsack.

Masks are boolean numpy arrays ``head_mask [layers, heads]`` and ``neuron_mask [layers, d_ff]``.
Optional rounding keeps each layer's FFN width a multiple of ``round_to`` (hardware-friendly shapes)
and charges the rounding to the budget: the result never exceeds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jaxslim.prune.flops import CostModel

if TYPE_CHECKING:
    from jaxslim.prune.latency import LatencyModel


class BudgetError(ValueError):
    """A budget outside (0, 1] or one no mask can meet."""


def check_budget(budget: float, name: str = "budget") -> float:
    budget = float(budget)
    if not 0.0 < budget <= 1.0:
        raise BudgetError(f"{name} must be a fraction of the dense model in (0, 1], got {budget}")
    return budget


def group_scores(head_fisher: np.ndarray, group_size: int) -> np.ndarray:
    """Per-group scores ``[layers, groups]`` from per-head scores ``[layers, heads]`` (summed)."""
    head_fisher = np.asarray(head_fisher, np.float64)
    layers, heads = head_fisher.shape
    return head_fisher.reshape(layers, heads // group_size, group_size).sum(-1)


def expand_groups(group_mask: np.ndarray, group_size: int) -> np.ndarray:
    """Per-head mask ``[layers, heads]`` from a per-group one."""
    return np.repeat(np.asarray(group_mask, bool), group_size, axis=-1)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest entries of a flat array (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")
    keep = np.zeros(scores.shape, bool)
    keep[order[:k]] = True
    return keep


def _knapsack(a_scores, a_cost, b_scores, b_cost, budget):
    """Best (score, n_a, n_b) keeping the top ``n_a`` of A and top ``n_b`` of B with
    ``n_a·a_cost + n_b·b_cost <= budget``; None when even nothing exceeds the budget."""
    if budget < 0:
        return None
    a_cum = np.concatenate([[0.0], np.cumsum(np.sort(a_scores)[::-1])])
    b_cum = np.concatenate([[0.0], np.cumsum(np.sort(b_scores)[::-1])])
    n_a = np.arange(len(a_cum))
    left = budget - n_a * a_cost
    ok = left >= 0
    n_b = np.where(ok, np.minimum(np.floor(np.maximum(left, 0) / max(b_cost, 1e-30)), len(b_cum) - 1), 0)
    n_b = n_b.astype(int) if b_cost > 0 else np.full_like(n_a, len(b_cum) - 1)
    total = np.where(ok, a_cum[n_a] + b_cum[n_b], -np.inf)
    best = int(np.argmax(total))
    return float(total[best]), best, int(n_b[best])


def _round_ffn(neuron_mask, neuron_fisher, round_to, fits) -> np.ndarray:
    """Rounds each layer's kept-neuron count to the nearest multiple of ``round_to`` (adding the
    best pruned or dropping the worst kept neurons), then drops whole ``round_to`` blocks of the
    least important kept neurons while ``fits(mask)`` is False."""
    mask = neuron_mask.copy()
    order = np.argsort(-neuron_fisher, axis=1, kind="stable")  # best first, per layer
    for layer in range(mask.shape[0]):
        kept = int(mask[layer].sum())
        target = int(round(kept / round_to)) * round_to
        target = min(target, mask.shape[1] - mask.shape[1] % round_to)
        mask[layer] = False
        mask[layer, order[layer, :target]] = True
    while not fits(mask):
        counts = mask.sum(1)
        candidates = [layer for layer in range(mask.shape[0]) if counts[layer] >= round_to]
        if not candidates:
            break

        def block_loss(layer, counts=counts):
            worst = order[layer, counts[layer] - round_to : counts[layer]]
            return neuron_fisher[layer, worst].sum()

        layer = min(candidates, key=block_loss)
        mask[layer, order[layer, counts[layer] - round_to : counts[layer]]] = False
    return mask


def search_flops(
    head_fisher: np.ndarray,
    neuron_fisher: np.ndarray,
    cost: CostModel,
    budget: float,
    *,
    round_to: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks with the largest kept Fisher whose MACs are at most ``budget`` times the dense model's.

    Args:
        head_fisher: ``[layers, heads]`` diagonal Fisher of the head masks.
        neuron_fisher: ``[layers, d_ff]`` diagonal Fisher of the neuron masks.
        cost: from :func:`~jaxslim.prune.flops.cost_model`.
        budget: kept fraction of the prunable MACs, in (0, 1].
        round_to: keep every layer's FFN width a multiple of this.

    Returns:
        Boolean ``head_mask [layers, heads]`` and ``neuron_mask [layers, d_ff]``.
    """
    budget = check_budget(budget, "FLOPs budget")
    g_scores = group_scores(head_fisher, cost.group_size)
    neuron_fisher = np.asarray(neuron_fisher, np.float64)
    _check_shapes(g_scores, neuron_fisher, cost)
    limit = budget * cost.dense_macs
    _, n_groups, n_neurons = _knapsack(
        g_scores.ravel(), cost.group_macs, neuron_fisher.ravel(), cost.neuron_macs, limit
    )
    group_mask = _top(g_scores.ravel(), n_groups).reshape(g_scores.shape)
    neuron_mask = _top(neuron_fisher.ravel(), n_neurons).reshape(neuron_fisher.shape)
    head_mask = expand_groups(group_mask, cost.group_size)
    if round_to > 1:
        neuron_mask = _round_ffn(
            neuron_mask, neuron_fisher, round_to, lambda m: cost.macs(head_mask, m) <= limit
        )
    assert cost.macs(head_mask, neuron_mask) <= limit + 1e-6
    return head_mask, neuron_mask


def _check_shapes(g_scores, neuron_fisher, cost: CostModel) -> None:
    want_g = (cost.n_layers, cost.n_groups)
    want_n = (cost.n_layers, cost.d_ff)
    if g_scores.shape != want_g or neuron_fisher.shape != want_n:
        raise ValueError(
            f"Fisher shapes {g_scores.shape} (head groups) and {neuron_fisher.shape} (neurons) do not match "
            f"the model: expected {want_g} and {want_n}"
        )


def search_latency(
    head_fisher: np.ndarray,
    neuron_fisher: np.ndarray,
    latency: LatencyModel,
    budget: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks with the largest kept Fisher whose predicted latency is at most ``budget`` times the
    dense model's (prediction from the measured lookup tables in ``latency``).

    Raises:
        BudgetError: when the budget is below what the model costs with every head and neuron removed
            (embeddings, norms and the output layer still run).
    """
    budget = check_budget(budget, "latency budget")
    gs = latency.group_size
    g_scores = group_scores(head_fisher, gs)
    neuron_fisher = np.asarray(neuron_fisher, np.float64)
    limit = budget * latency.dense()
    if limit < latency.base:
        raise BudgetError(
            f"latency budget {budget} ({limit * 1e3:.3f} ms) is below the latency of the model with every "
            f"head and neuron removed ({latency.base * 1e3:.3f} ms = {latency.base / latency.dense():.3f} of "
            "dense); nothing can meet it"
        )
    # the search plans with the piecewise-linear fits; the measured tables have the last word: while
    # they put the plan over the budget, plan again for a slightly smaller one
    target = limit
    for _ in range(60):
        head_mask, neuron_mask = _plan_latency(g_scores, neuron_fisher, latency, target)
        if latency.predict(head_mask, neuron_mask) <= limit:
            return head_mask, neuron_mask
        target = latency.base + 0.95 * (target - latency.base)
    return np.zeros(np.shape(head_fisher), bool), np.zeros(neuron_fisher.shape, bool)


def _plan_latency(g_scores, neuron_fisher, latency: LatencyModel, limit: float):
    gs = latency.group_size
    layers = g_scores.shape[0]
    mha, ffn = latency.mha_fit, latency.ffn_fit
    t_g = max(1, int(np.ceil(mha.threshold / gs)))  # in groups
    t_f = max(1, int(ffn.threshold))
    t_g, t_f = min(t_g, g_scores.shape[1]), min(t_f, neuron_fisher.shape[1])
    g_sorted = np.sort(g_scores, axis=1)[:, ::-1]
    f_sorted = np.sort(neuron_fisher, axis=1)[:, ::-1]
    g_base, f_base = g_sorted[:, :t_g].sum(1), f_sorted[:, :t_f].sum(1)
    g_order, f_order = np.argsort(g_base, kind="stable"), np.argsort(f_base, kind="stable")
    g_const, f_const = mha.constant, ffn.constant  # a kept module with its threshold's worth of units
    best = None
    for drop_a in range(layers + 1):
        kept_a = np.sort(g_order[drop_a:])
        for drop_f in range(layers + 1):
            kept_f = np.sort(f_order[drop_f:])
            # the residual budget of THIS combination (recomputed, never carried over)
            left = limit - latency.base - len(kept_a) * g_const - len(kept_f) * f_const
            if left < 0:
                continue
            extra_g = g_sorted[kept_a, t_g:].ravel()
            extra_f = f_sorted[kept_f, t_f:].ravel()
            found = _knapsack(extra_g, mha.slope * gs, extra_f, ffn.slope, left)
            if found is None:
                continue
            score = g_base[kept_a].sum() + f_base[kept_f].sum() + found[0]
            if best is None or score > best[0]:
                best = (score, kept_a, kept_f, found[1], found[2])
    assert best is not None  # dropping every module always fits once limit >= base
    _, kept_a, kept_f, n_g, n_f = best
    group_mask = np.zeros(g_scores.shape, bool)
    neuron_mask = np.zeros(neuron_fisher.shape, bool)
    g_rank = np.argsort(-g_scores, axis=1, kind="stable")
    f_rank = np.argsort(-neuron_fisher, axis=1, kind="stable")
    for layer in kept_a:
        group_mask[layer, g_rank[layer, :t_g]] = True
    for layer in kept_f:
        neuron_mask[layer, f_rank[layer, :t_f]] = True
    # the above-threshold units with the largest Fisher across the kept modules
    _fill(group_mask, g_scores, g_rank, kept_a, t_g, n_g)
    _fill(neuron_mask, neuron_fisher, f_rank, kept_f, t_f, n_f)
    return expand_groups(group_mask, gs), neuron_mask


def _fill(mask, scores, rank, kept_layers, threshold, n) -> None:
    cand = [(scores[layer, unit], layer, unit) for layer in kept_layers for unit in rank[layer, threshold:]]
    cand.sort(key=lambda c: (-c[0], c[1], c[2]))
    for _, layer, unit in cand[:n]:
        mask[layer, unit] = True
