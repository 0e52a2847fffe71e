"""AGVM (Xue et al. 2022): module-wise learning-rate multipliers that align gradient variance.

Every few steps the training step computes the gradient of each half of the batch (``g_A``,
``g_B``) and passes them stacked on a leading axis of size 2 as the ``agvm_grads`` extra argument.
For each module ``i`` (a group of parameters given by a label per leaf) the variance proxy is
``phi_i = 1 - cos(g_A^i, g_B^i)``; the new multiplier ``sqrt(clamp((phi_0 + eps) / (phi_i + eps),
0.5, 10))`` (module 0 is the reference, the backbone) is smoothed with momentum 0.97, and every
update of module ``i`` is scaled by it, which scales that module's learning rate. With Adam-like
optimizers the halves are first preconditioned by the would-be second moment
``b2 * v + (1 - b2) * g^2`` (found in the wrapped optimizer's ``ScaleByAdamState``).

Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {"backbone": jnp.ones(4), "head": jnp.ones(2)}
    >>> tx = agvm(optax.sgd(0.1), module_labels(["backbone", "head"]), num_modules=2)
    >>> state = tx.init(params)
    >>> halves = {"backbone": jnp.stack([jnp.ones(4), jnp.ones(4)]), "head": jnp.asarray([[1.0, 0], [0, 1]])}
    >>> _, state = tx.update(params, state, params, agvm_grads=halves)
    >>> [round(float(m), 4) for m in state.mu]  # the head's halves disagree: its LR shrinks
    [1.0, 0.9912]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxslim.optim.masks import param_names
from jaxslim.tree import is_variable


class AgvmState(NamedTuple):
    """``mu``: float32 ``[num_modules]`` multipliers (1 at the start); ``count``: int32 number of
    measurements so far; ``inner_state``: the wrapped optimizer's state."""

    mu: jax.Array
    count: jax.Array  # type: ignore[assignment]  # optax's name for a step count; shadows tuple.count
    inner_state: Any


def _value(x):
    return x.get_value() if is_variable(x) else x


def module_labels(patterns: Sequence[str]) -> Callable[[Any], Any]:
    """``params -> tree of int``: the index of the first regular expression (``re.search``) that
    matches each parameter's path (``"a/b/c"``).

    Raises (when called):
        ValueError: a parameter matches no pattern (name it in a pattern, or end with ``"."``).
    """
    patterns = tuple(patterns)
    compiled = [re.compile(p) for p in patterns]

    def label(name: str) -> int:
        for i, p in enumerate(compiled):
            if p.search(name):
                return i
        raise ValueError(f"AGVM modules {patterns}: parameter {name!r} matches none of them")

    return lambda params: jax.tree.map(label, param_names(params))


def _find_nu(inner_state: Any):
    found = [
        x
        for x in jax.tree.leaves(inner_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(x, optax.ScaleByAdamState)
    ]
    return found[0].nu if len(found) == 1 else None


def agvm(
    inner: optax.GradientTransformation,
    labels: Callable[[Any], Any],
    num_modules: int,
    *,
    momentum: float = 0.97,
    min_ratio: float = 0.5,
    max_ratio: float = 10.0,
    eps: float = 1e-6,
    precondition: tuple[float, float] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` with AGVM's module-wise learning-rate multipliers.

    Args:
        inner: the optimizer (its updates, learning rate included, are scaled per module).
        labels: ``params -> tree of int`` in ``[0, num_modules)``, e.g. :func:`module_labels`.
        num_modules: number of modules; module 0 is the reference.
        momentum: smoothing of the multipliers (0.97 in the paper).
        min_ratio, max_ratio: clamp of the variance ratio before the square root.
        eps: added to both variance proxies.
        precondition: ``(b2, eps)`` of an Adam-like ``inner``: the halves are divided by
            ``sqrt(b2 * v + (1 - b2) * g^2) + eps`` with ``v`` from ``inner``'s state.

    Returns:
        A ``GradientTransformationExtraArgs``; ``update`` takes ``agvm_grads=`` (the two half-batch
        gradients stacked on a leading axis of size 2) on measurement steps.

    Raises:
        ValueError: ``num_modules < 1``, momentum outside ``[0, 1)``, or a bad clamp.
    """
    if not (isinstance(num_modules, int) and num_modules >= 1):
        raise ValueError(f"num_modules must be an integer >= 1, got {num_modules!r}")
    if not (0 <= momentum < 1):
        raise ValueError(f"AGVM momentum must be in [0, 1), got {momentum!r}")
    if not (0 < min_ratio <= max_ratio):
        raise ValueError(
            f"AGVM clamp must satisfy 0 < min_ratio <= max_ratio, got {min_ratio!r}, {max_ratio!r}"
        )
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return AgvmState(jnp.ones([num_modules], jnp.float32), jnp.zeros([], jnp.int32), inner.init(params))

    def measure(grads, halves, inner_state, labels_tree):
        dots = [jnp.zeros([], jnp.float32) for _ in range(num_modules)]
        sq_a = list(dots)
        sq_b = list(dots)
        nu = _find_nu(inner_state) if precondition is not None else None
        g_leaves = jax.tree.leaves(grads)
        h_leaves = jax.tree.leaves(halves)
        l_leaves = jax.tree.leaves(labels_tree)
        n_leaves = jax.tree.leaves(nu) if nu is not None else [None] * len(g_leaves)
        if not (len(g_leaves) == len(h_leaves) == len(l_leaves) == len(n_leaves)):
            raise ValueError("agvm_grads must have the gradients' tree structure (with a leading axis of 2)")
        for g, h, lab, v in zip(g_leaves, h_leaves, l_leaves, n_leaves, strict=True):
            a, b = h[0].astype(jnp.float32), h[1].astype(jnp.float32)
            if v is not None:
                b2, peps = precondition
                d = jnp.sqrt(b2 * v + (1 - b2) * jnp.square(g.astype(jnp.float32))) + peps
                a, b = a / d, b / d
            dots[lab] = dots[lab] + jnp.sum(a * b)
            sq_a[lab] = sq_a[lab] + jnp.sum(a * a)
            sq_b[lab] = sq_b[lab] + jnp.sum(b * b)
        dot, na, nb = jnp.stack(dots), jnp.stack(sq_a), jnp.stack(sq_b)
        cos = dot / jnp.maximum(jnp.sqrt(na * nb), jnp.finfo(jnp.float32).tiny)
        phi = 1.0 - cos
        ratio = jnp.clip((phi[0] + eps) / (phi + eps), min_ratio, max_ratio)
        return jnp.sqrt(ratio)

    def update(updates, state, params=None, *, agvm_grads=None, **extra_args):
        labels_tree = labels(updates)
        mu, count = state.mu, state.count
        if agvm_grads is not None:
            new_mu = measure(updates, agvm_grads, state.inner_state, labels_tree)
            mu = momentum * mu + (1.0 - momentum) * new_mu
            count = optax.safe_increment(count)
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)

        def scale(lab, u):
            v = _value(u)
            v = v * mu[lab].astype(v.dtype)
            return u.replace(v) if is_variable(u) else v

        scaled = jax.tree.map(scale, labels_tree, new_updates, is_leaf=lambda x: isinstance(x, int))
        return scaled, AgvmState(mu, count, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def find_agvm_state(opt_state: Any) -> AgvmState | None:
    """The :class:`AgvmState` inside an optimizer state, or None."""
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, AgvmState))
        if isinstance(x, AgvmState)
    ]
    return found[0] if found else None


def agvm_metrics(opt_state: Any) -> dict[str, jax.Array]:
    """``agvm/mu_<i>`` for every module (empty without AGVM)."""
    s = find_agvm_state(opt_state)
    if s is None:
        return {}
    return {f"agvm/mu_{i}": s.mu[i] for i in range(s.mu.shape[0])}


def agvm_metric_fn(state, grads, updates) -> dict[str, jax.Array]:
    """A training-step ``MetricFn`` reporting :func:`agvm_metrics` of the new state."""
    del grads, updates
    return agvm_metrics(state.opt_state)
