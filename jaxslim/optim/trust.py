"""Layer-wise trust ratio that stays per layer for scanned stacks and per expert for stacked experts.

``optax.scale_by_trust_ratio`` computes one ratio ``||w|| / ||u||`` per array. A scanned stack of
``L`` layers is one array ``[L, ...]`` and ``E`` stacked experts one array ``[E, ...]``, so optax
gives all layers (experts) one shared ratio and the step of a small-norm layer is far too large.
:func:`scale_by_layer_trust_ratio` reduces the norms over every axis except the group axes
(``layers`` and ``exp`` by default) named in each parameter's logical axes, so every layer of a
stack, and every expert of every layer, gets its own ratio. The extra memory is one ``[L]`` or
``[L, E]`` vector per array while the update is computed.

The state keeps the minimum, mean and maximum ratio of the last update
(:func:`trust_ratio_metrics` reads them for ``metrics.jsonl``).

Example:
    >>> import jax.numpy as jnp, optax
    >>> w = {"stack": jnp.stack([jnp.ones((4, 4)), 100 * jnp.ones((4, 4))])}
    >>> tx = optax.chain(scale_by_layer_trust_ratio(axes={"stack": ("layers", None, None)}),
    ...                  optax.scale_by_learning_rate(0.01))
    >>> u, _ = tx.update(w, tx.init(w), w)  # u = -0.01 * w / ||w|| * ||w|| per layer
    >>> [round(float(jnp.linalg.norm(u["stack"][i]) / jnp.linalg.norm(w["stack"][i])), 4) for i in range(2)]
    [0.01, 0.01]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxslim.sharding import LAYERS, layer_axis
from jaxslim.tree import AxesTable, is_variable, known_axes, map_named, structure_key

EXPERTS = "exp"
GROUP_AXES = (LAYERS, EXPERTS)

Axes = tuple[str | None, ...] | None


class LayerTrustRatioState(NamedTuple):
    """Summary of the ratios applied by the last update (over every layer / expert group).

    Attributes:
        min / mean / max: float32 scalars; 1 before the first update.
        groups: int32 number of groups (layers, experts, unstacked arrays) the ratios cover.
    """

    min: jax.Array
    mean: jax.Array
    max: jax.Array
    groups: jax.Array


def _value(x):
    return x.get_value() if is_variable(x) else x


def _wrap(like, value):
    return like.replace(value) if is_variable(like) else value


def variable_axes(tree: Any) -> Any:
    """Logical axes of every leaf of ``tree``: a Variable's ``out_sharding`` metadata, else None."""

    def get(x):
        if is_variable(x):
            axes = x.get_metadata().get("out_sharding")
            return tuple(axes) if axes else None
        return None

    return jax.tree.map(get, tree, is_leaf=is_variable)


def group_dims(axes: Axes, ndim: int, group_axes: Sequence[str] = GROUP_AXES) -> tuple[int, ...]:
    """Indices of the dimensions that index separate groups (e.g. the ``layers`` and ``exp`` axes).

    The layers axis is found with the shared helper :func:`jaxslim.sharding.layer_axis`.

    Raises:
        ValueError: ``axes`` names a different number of dimensions than the array has.
    """
    if axes is None:
        return ()
    axes = tuple(axes)
    if len(axes) != ndim:
        raise ValueError(f"logical axes {axes} name {len(axes)} dimensions, the array has {ndim}")
    dims = []
    if LAYERS in group_axes:
        i = layer_axis(axes)
        if i is not None:
            dims.append(i)
    dims += [i for i, a in enumerate(axes) if a in group_axes and a != LAYERS]
    return tuple(sorted(dims))


def group_norm(x: jax.Array, axes: Axes, group_axes: Sequence[str] = GROUP_AXES) -> jax.Array:
    """L2 norm of each group of ``x``, kept broadcastable to ``x`` (size 1 on the reduced dims).

    For an array with logical axes ``("layers", "exp", "embed", "mlp")`` the result has shape
    ``[L, E, 1, 1]``; for an array without group axes it is a scalar of shape ``[1] * ndim``.
    Computed in float32.
    """
    keep = group_dims(axes, x.ndim, group_axes)
    reduce = tuple(i for i in range(x.ndim) if i not in keep)
    x = x.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(x * x, axis=reduce, keepdims=True))


def _check_clamp(min_ratio, max_ratio) -> None:
    for name, v in (("min_ratio", min_ratio), ("max_ratio", max_ratio)):
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"{name} must be a number > 0 or None, got {v!r}")
    if min_ratio is not None and max_ratio is not None and min_ratio > max_ratio:
        raise ValueError(
            f"trust-ratio clamp: min_ratio={min_ratio!r} must not exceed max_ratio={max_ratio!r}"
        )


def scale_by_layer_trust_ratio(
    *,
    axes: Any = None,
    group_axes: Sequence[str] = GROUP_AXES,
    min_ratio: float | None = None,
    max_ratio: float | None = None,
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
) -> optax.GradientTransformation:
    """Scales each layer's (and each expert's) update by ``trust_coefficient * ||w|| / (||u|| + eps)``.

    Norms are taken per group: over all axes of an array except those whose logical name is in
    ``group_axes``. Where either norm is zero the ratio is 1 (as in TF-addons, apex and optax), and
    ``min_ratio`` / ``max_ratio`` clamp the computed ratio (DeepSpeed's ``min_coeff`` /
    ``max_coeff``; the zero-norm fallback is not clamped, as in DeepSpeed). Wrap it in
    ``optax.masked`` for a layer-adaptation mask.

    Args:
        axes: logical axes per leaf: ``None`` reads each ``nnx.Variable``'s ``out_sharding``
            metadata (leaves that are plain arrays get one ratio per array, like optax), or a
            prefix of the params' tree (or a callable ``params -> tree``) with a tuple of names or
            ``None`` at each of its leaves (:func:`jaxslim.tree.resolve_axes`). Resolved once, at
            ``init``: under ``nnx.Optimizer`` (Variables at ``init``, raw arrays at ``update``)
            every layer of a stack still gets its own ratio.
        group_axes: the logical axis names that index separate groups.
        min_ratio, max_ratio: optional clamp of the ratio.
        trust_coefficient: multiplier of the ratio (LARS uses 1e-3).
        eps: added to the update norm in the denominator.

    Returns:
        A ``GradientTransformation`` whose state is a :class:`LayerTrustRatioState`; ``update``
        needs ``params``.

    Raises:
        ValueError: a clamp bound that is not positive, ``min_ratio > max_ratio``, a negative
            ``eps`` or ``trust_coefficient``.
    """
    _check_clamp(min_ratio, max_ratio)
    for name, v in (("trust_coefficient", trust_coefficient), ("eps", eps)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    if trust_coefficient == 0:
        raise ValueError("trust_coefficient must be > 0, got 0")
    group_axes = tuple(group_axes)

    # resolved at init (from Variable metadata or axes=), keyed by the leaves' names and shapes:
    # nnx.Optimizer passes Variables to init and raw arrays to update
    tables: dict[tuple, AxesTable] = {}

    def table_for(params: Any) -> AxesTable:
        key = structure_key(params)
        if key not in tables:
            tables[key] = known_axes(params, axes)
        return tables[key]

    def empty_state():
        one = jnp.ones([], jnp.float32)
        return LayerTrustRatioState(one, one, one, jnp.zeros([], jnp.int32))

    def init(params):
        table_for(params)
        return empty_state()

    def update(updates, state, params=None):
        del state
        if params is None:
            raise ValueError(optax.NO_PARAMS_MSG)
        table = table_for(params)
        ratios = []

        def scale(name, u, p):
            if u is None or isinstance(u, optax.MaskedNode):
                return u
            uv, pv = _value(u), _value(p)
            ax = table.get(name)
            w_norm = group_norm(pv, ax, group_axes)
            u_norm = group_norm(uv, ax, group_axes)
            ratio = trust_coefficient * w_norm / (u_norm + eps)
            if min_ratio is not None or max_ratio is not None:
                ratio = jnp.clip(ratio, min_ratio, max_ratio)
            ratio = jnp.where((w_norm == 0) | (u_norm == 0), jnp.ones_like(ratio), ratio)
            ratios.append(ratio.reshape(-1))
            return _wrap(u, (uv * ratio.astype(uv.dtype)).astype(uv.dtype))

        new = map_named(scale, updates, params)
        if ratios:
            flat = jnp.concatenate(ratios)
            new_state = LayerTrustRatioState(
                jnp.min(flat), jnp.mean(flat), jnp.max(flat), jnp.asarray(flat.size, jnp.int32)
            )
        else:
            new_state = empty_state()
        return new, new_state

    return optax.GradientTransformation(init, update)


def find_trust_ratio_states(opt_state: Any) -> list[LayerTrustRatioState]:
    """Every :class:`LayerTrustRatioState` inside an optimizer state (chained, masked, injected...)."""
    is_state = lambda x: isinstance(x, LayerTrustRatioState)  # noqa: E731
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def trust_ratio_metrics(opt_state: Any, prefix: str = "trust_ratio") -> dict[str, jax.Array]:
    """``{prefix}/min``, ``/mean`` and ``/max`` of the ratios the last update applied, over all
    layer / expert groups (empty when the optimizer has no layer-wise trust ratio).

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_layer_trust_ratio()
        >>> sorted(trust_ratio_metrics(tx.init({"w": jnp.ones(3)})))
        ['trust_ratio/max', 'trust_ratio/mean', 'trust_ratio/min']
    """
    states = find_trust_ratio_states(opt_state)
    if not states:
        return {}
    n = [s.groups.astype(jnp.float32) for s in states]
    total = sum(n)
    mean = sum(s.mean * k for s, k in zip(states, n, strict=True)) / jnp.maximum(total, 1.0)
    mean = jnp.where(total > 0, mean, 1.0)
    return {
        f"{prefix}/min": jnp.min(jnp.stack([s.min for s in states])),
        f"{prefix}/mean": mean,
        f"{prefix}/max": jnp.max(jnp.stack([s.max for s in states])),
    }


def trust_ratio_metric_fn(state, grads, updates) -> dict[str, jax.Array]:
    """A training-step ``MetricFn`` reporting :func:`trust_ratio_metrics` of the new state."""
    del grads, updates
    return trust_ratio_metrics(state.opt_state)
