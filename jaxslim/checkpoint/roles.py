"""Which leaves of a training state are weights and which are their Adam moments, by structure.

The lossy codec treats weights (residual-coded) and their optimizer moments (shrunk jointly with
them) differently from everything else. A training state may hold its parameters under any key
(``"params"``, ``"model"``, an ``nnx.Optimizer``'s model, a tuple position...), so they are found
the way ``optax.tree_map_params`` relates them: optax's Adam-family states hold ``mu`` and ``nu``
trees with exactly the parameters' structure. The parameters are the subtree outside the
optimizer state whose leaves sit at the same relative paths, with the same shapes, as the ``mu``
leaves. Without moments, a top-level ``params`` entry is taken as the parameters.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
    >>> state = {"model": params, "opt": optax.adam(1e-3).init(params), "step": 0}
    >>> paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    >>> shapes = [jnp.shape(x) for x in jax.tree.leaves(state)]
    >>> weights, mus, nus = find_weights(paths, shapes)
    >>> sorted(weights), sorted(mus) == sorted(weights)
    ([('b',), ('w',)], True)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

MOMENTS = ("mu", "nu")


def _name(k: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _common(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def find_weights(
    paths: Sequence[Sequence[Any]], shapes: Sequence[tuple[int, ...]]
) -> tuple[dict[tuple, int], dict[tuple, int], dict[tuple, int]]:
    """The weights of a state and the ``mu`` / ``nu`` leaves that mirror them.

    Args:
        paths: every leaf's tree path (``jax.tree_util.tree_flatten_with_path``), in order.
        shapes: every leaf's shape, in the same order.

    Returns:
        ``(weights, mus, nus)``: the weights are every leaf under the parameters' root; each maps a path relative to its tree's root (the parameters'
        root, or the ``mu`` / ``nu`` node) to the leaf's index. The first ``mu`` / ``nu`` found
        for a relative path wins (several Adam states in one chain share the parameters' layout).
    """
    names = [tuple(_name(k) for k in p) for p in paths]
    mus: dict[tuple, int] = {}
    nus: dict[tuple, int] = {}
    moment_root: tuple | None = None
    in_moments: set[int] = set()
    for i, ns in enumerate(names):
        for j, n in enumerate(ns):
            if n in MOMENTS:
                (mus if n == "mu" else nus).setdefault(ns[j + 1 :], i)
                in_moments.add(i)
                if moment_root is None:
                    moment_root = ns[:j]
                break
    weights: dict[tuple, int] = {}
    if mus:
        votes: Counter = Counter()
        for i, ns in enumerate(names):
            if i in in_moments:
                continue
            for j in range(len(ns)):
                k = mus.get(ns[j:])
                if k is not None and tuple(shapes[k]) == tuple(shapes[i]):
                    votes[ns[:j]] += 1
        if votes:
            # most leaves matched, then farthest from the optimizer state (its other trees that
            # mirror the parameters, e.g. a momentum trace or pruning masks, sit next to mu),
            # then the shortest root
            root = min(votes, key=lambda r: (-votes[r], _common(r, moment_root or ()), len(r)))
            for i, ns in enumerate(names):  # every leaf under the root (some may have no moments)
                if i not in in_moments and ns[: len(root)] == root:
                    weights.setdefault(ns[len(root) :], i)
    if not weights:
        for i, ns in enumerate(names):
            if ns and ns[0] == "params" and i not in in_moments:
                weights.setdefault(ns[1:], i)
    return weights, mus, nus
