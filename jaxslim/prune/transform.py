"""Gradual pruning as an optax transform: masks live in the optimizer state, beside the moments.

:func:`prune` wraps any optax optimizer. On a mask-update step (``lax.cond``) it recomputes the
masks from the current parameters (and, for saliency, the incoming gradients) at the scheduled
sparsity; on every step it

1. masks the gradients of pruned weights before the inner optimizer, so its moments do not
   accumulate for them, and
2. replaces the inner optimizer's update of every pruned weight by ``-param``, so that
   ``optax.apply_updates`` gives ``param + (-param) == 0`` exactly (IEEE addition of a number and
   its negation is exactly zero), whatever momentum or weight decay the inner optimizer applies.

Masks only shrink while the sparsity grows (weights pruned earlier score ``-inf``), so a pruned
weight never comes back. With ``ste=True`` (straight-through, typically for N:M) the parameters stay
dense, masks are recomputed from the dense weights on every update step (they may flip), the
forward pass uses :func:`masked_params`, and SR-STE adds ``sr_ste_decay * w * ~mask`` to the
gradient to pull pruned weights towards zero.

The state is a :class:`PruneState` whose ``masks`` have the params' tree structure (see
:mod:`jaxslim.prune.masks`), so ``optax.tree_map_params`` shards each mask like its parameter and
the state checkpoints with Orbax like any other optimizer state.

Example:
    >>> import optax
    >>> from jaxslim.prune.schedule import cubic_sparsity_schedule
    >>> tx = prune(
    ...     optax.adamw(1e-3, weight_decay=0.1),
    ...     cubic_sparsity_schedule(0.8, begin_step=0, num_updates=10, update_every=100),
    ...     end_step=1000,
    ...     update_every=100,
    ... )
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxslim.config import PruneConfig
from jaxslim.prune.masks import (
    ALLOCATIONS,
    CRITERIA,
    KINDS,
    Allocation,
    Criterion,
    Kind,
    PruneFilter,
    _check_choice,
    _check_nm,
    _map,
    _value,
    _wrap,
    apply_masks,
    compute_masks,
    default_filter,
    mask_template,
    sparsity_summary,
)
from jaxslim.prune.schedule import (
    Schedule,
    constant_sparsity_schedule,
    cubic_sparsity_schedule,
    cubic_update_window,
    is_update_step,
)
from jaxslim.tree import AxesTable, known_axes, named_leaves, structure_key


class PruneState(NamedTuple):
    """State of :func:`prune`.

    Attributes:
        masks: boolean masks with the params' structure (``None`` values for unpruned leaves).
        inner_state: the wrapped optimizer's state.
        count: int32 number of updates applied so far (the step the next update belongs to).
        rng: raw uint32 PRNG key data for random scores (a plain array, so it checkpoints).
    """

    masks: Any
    inner_state: Any
    count: jax.Array  # type: ignore[assignment]  # optax's name for a step count; shadows tuple.count
    rng: jax.Array


class _Config(NamedTuple):
    sparsity: Schedule | None
    kind: Kind
    criterion: Criterion
    allocation: Allocation
    n: int
    m: int
    begin_step: int
    end_step: int | None
    update_every: int
    filter: PruneFilter
    ste: bool
    sr_ste_decay: Callable[[jax.Array], jax.Array]


class _Plan(NamedTuple):
    """What :func:`prune` resolves once, at ``init``: every leaf's axes and the pruned leaves."""

    axes: AxesTable
    filter: PruneFilter  # True exactly for the leaves pruned at init


def _make_plan(params: Any, cfg: _Config, table: AxesTable, *, check: bool) -> _Plan:
    template = mask_template(params, kind=cfg.kind, filter=cfg.filter, axes=table)
    pruned = frozenset(n for n, mk in named_leaves(template) if mk is not None and _value(mk) is not None)
    seen = [n for n, x in named_leaves(params) if x is not None and _value(x) is not None]
    if check and not pruned and seen:  # (no leaves at all: optax.tree_map_params's placeholder tree)
        raise ValueError(
            f"prune(kind={cfg.kind!r}) found nothing to prune among the {len(seen)} parameters "
            f"({', '.join(seen[:8])}{', ...' if len(seen) > 8 else ''}): the default target is every "
            "kernel of rank >= 2 (not counting a 'layers' / 'exp' stacking axis) that is not an embedding "
            "table, bias or norm scale"
            + (
                "; structured kinds also need the unit's logical axis ('heads', 'mlp' or 'embed')"
                if cfg.kind in ("heads", "neurons", "channels")
                else ""
            )
            + ". Pass filter=(path, axes, shape) -> bool, or axes= to name the axes"
        )
    return _Plan(table, lambda name, a, shape: name in pruned)


def _as_schedule(value: Any) -> Callable[[jax.Array], jax.Array]:
    if callable(value):
        return value
    return lambda step: jnp.asarray(value, jnp.float32)


def prune(
    inner: optax.GradientTransformation,
    sparsity: float | Schedule | None = None,
    *,
    kind: Kind = "unstructured",
    criterion: Criterion = "magnitude",
    allocation: Allocation = "layer",
    n: int = 2,
    m: int = 4,
    begin_step: int = 0,
    end_step: int | None = None,
    update_every: int = 1,
    filter: PruneFilter = default_filter,
    ste: bool = False,
    sr_ste_decay: optax.ScalarOrSchedule = 0.0,
    seed: int = 0,
    axes: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` with gradual pruning.

    Works the same on an ``nnx.State`` of Variables (``nnx.split``), under ``nnx.Optimizer``
    (Variables at ``init``, raw arrays at ``update``), on Linen variable dicts and on plain
    pytrees: the leaves to prune and every leaf's logical axes (the ``layers`` axis for per-layer
    sparsity, the contraction axis for N:M) are resolved once, at ``init``, and kept by the
    transform; ``update`` never re-reads them from its inputs.

    Args:
        inner: the optimizer whose updates are masked (any optax transformation).
        sparsity: fraction pruned, a float in ``[0, 1)`` or a schedule of the step (e.g.
            :func:`~jaxslim.prune.schedule.cubic_sparsity_schedule`). Required except for
            ``kind="nm"``, where N:M applies from ``begin_step`` on, or, with a schedule, on update
            steps where the scheduled sparsity is above zero.
        kind: ``"unstructured"``, ``"nm"``, ``"heads"``, ``"neurons"`` or ``"channels"``.
        criterion: ``"magnitude"`` (``|w|``), ``"random"`` or ``"saliency"`` (``|w * g|``).
        allocation: ``"layer"`` (each leaf and each layer of a scanned stack) or ``"global"``.
        n, m: the N:M pattern for ``kind="nm"``, along each kernel's contraction axis.
        begin_step, end_step, update_every: masks are recomputed at steps ``begin_step + k *
            update_every`` up to ``end_step`` (inclusive; ``None`` = no end). For Zhu & Gupta use
            :func:`gradual_pruning` or :func:`~jaxslim.prune.schedule.cubic_update_window`.
        filter: ``filter(path, axes, shape) -> bool``, which leaves are pruned; the default
            (:func:`~jaxslim.prune.masks.default_filter`) takes every kernel of rank >= 2 that is
            not an embedding table, bias or norm scale, whatever the axis names.
        ste: straight-through mode: params stay dense, the forward pass uses
            :func:`masked_params`, masks may change on every update step.
        sr_ste_decay: SR-STE weight (a float or a schedule), adds ``decay * w * ~mask`` to the
            gradient; needs ``ste=True``.
        seed: seed of the random criterion.
        axes: logical axes for parameters without metadata (Linen dicts, plain pytrees): a prefix
            of the params' tree with a tuple of names (or ``None``) at each of its leaves, or a
            callable ``params -> tree``; a stacked layer axis is named ``"layers"``. ``None`` reads
            each ``nnx.Variable``'s ``out_sharding``. See :func:`jaxslim.tree.resolve_axes`.

    Returns:
        A ``GradientTransformationExtraArgs`` whose state is a :class:`PruneState`; ``update``
        needs ``params``.

    Raises:
        ValueError: on an unknown choice, a sparsity outside ``[0, 1)``, ``n >= m``, a negative
            ``sr_ste_decay``, SR-STE without STE, or saliency with STE; at ``init``, when nothing
            would be pruned (a transform that silently trains dense is worse than an error).
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("criterion", criterion, CRITERIA)
    _check_choice("allocation", allocation, ALLOCATIONS)
    if kind == "nm":
        _check_nm(n, m)
    if allocation == "global" and kind != "unstructured":
        raise ValueError(f'allocation="global" is for kind="unstructured" only, got kind={kind!r}')
    if sparsity is None:
        if kind != "nm":
            raise ValueError(f"kind={kind!r} needs a sparsity (a float in [0, 1) or a schedule)")
        schedule = None
    elif callable(sparsity):
        schedule = sparsity
    else:
        schedule = constant_sparsity_schedule(sparsity)  # validates [0, 1)
    if not isinstance(sr_ste_decay, (int, float)) and not callable(sr_ste_decay):
        raise ValueError(f"sr_ste_decay must be a float or a schedule, got {sr_ste_decay!r}")
    if not callable(sr_ste_decay):
        if sr_ste_decay < 0:
            raise ValueError(f"sr_ste_decay must be >= 0, got {sr_ste_decay!r}")
        if sr_ste_decay > 0 and not ste:
            raise ValueError("sr_ste_decay > 0 needs ste=True (SR-STE acts on dense weights)")
    elif not ste:
        raise ValueError("an sr_ste_decay schedule needs ste=True (SR-STE acts on dense weights)")
    if ste and criterion == "saliency":
        raise ValueError('ste=True needs masks before the gradient: use criterion="magnitude" or "random"')
    is_update_step(0, begin_step=begin_step, end_step=end_step, update_every=update_every)  # validates
    cfg = _Config(
        schedule,
        kind,
        criterion,
        allocation,
        n,
        m,
        begin_step,
        end_step,
        update_every,
        filter,
        bool(ste),
        _as_schedule(sr_ste_decay),
    )
    inner = optax.with_extra_args_support(inner)
    # resolved at init, keyed by the leaves' names and shapes (the same with or without Variables);
    # an update whose init ran elsewhere (inject_hyperparams rebuilds this transform) asks known_axes
    plans: dict[tuple, _Plan] = {}

    def plan_for(params: Any, *, at_init: bool) -> _Plan:
        key = structure_key(params)
        if key not in plans:
            plans[key] = _make_plan(params, cfg, known_axes(params, axes), check=at_init)
        return plans[key]

    def init(params):
        plan = plan_for(params, at_init=True)
        state = PruneState(
            masks=mask_template(params, kind=kind, filter=plan.filter, axes=plan.axes),
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            rng=jax.random.key_data(jax.random.key(seed)),
        )
        if cfg.ste:  # the first forward pass already uses masks
            state = state._replace(masks=_current_masks(cfg, plan, state, state.count, params, None))
        return state

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("prune needs params: call tx.update(grads, opt_state, params)")
        plan = plan_for(params, at_init=False)
        if cfg.ste:
            # the forward pass used state.masks (masked_params); keep them for this step
            masks = state.masks
            decay = jnp.asarray(cfg.sr_ste_decay(state.count), jnp.float32)

            def grad(mask, g, p):
                if mask is None or _value(mask) is None:
                    return g
                gv = _value(g)
                pull = decay * jnp.where(_value(mask), 0.0, _value(p).astype(jnp.float32))
                return _wrap(g, gv + pull.astype(gv.dtype))

        else:
            masks = _current_masks(cfg, plan, state, state.count, params, updates)

            def grad(mask, g, p):
                if mask is None or _value(mask) is None:
                    return g
                gv = _value(g)
                return _wrap(g, jnp.where(_value(mask), gv, jnp.zeros((), gv.dtype)))

        grads = _map(lambda _, mk, g, p: grad(mk, g, p), masks, updates, params)
        new_updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        count = optax.safe_increment(state.count)
        if cfg.ste:
            # masks for the next forward pass, from the dense weights it will see
            new_params = optax.apply_updates(params, new_updates)
            masks = _current_masks(cfg, plan, state, count, new_params, None)
        else:

            def zero(mask, u, p):
                if mask is None or _value(mask) is None:
                    return u
                uv = _value(u)
                return _wrap(u, jnp.where(_value(mask), uv, -_value(p).astype(uv.dtype)))

            new_updates = _map(lambda _, mk, u, p: zero(mk, u, p), masks, new_updates, params)
        return new_updates, PruneState(masks, inner_state, count, state.rng)

    return optax.GradientTransformationExtraArgs(init, update)


def _recompute(cfg: _Config, plan: _Plan, state: PruneState, step: jax.Array, params: Any, grads: Any) -> Any:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
    s = cfg.sparsity(step) if cfg.sparsity is not None else 0.0
    masks = compute_masks(
        params,
        s,
        kind=cfg.kind,
        criterion=cfg.criterion,
        allocation=cfg.allocation,
        n=cfg.n,
        m=cfg.m,
        grads=grads,
        rng=key,
        filter=plan.filter,
        previous=None if cfg.ste else state.masks,
        axes=plan.axes,
    )
    if cfg.kind == "nm" and cfg.sparsity is not None:
        on = s > 0
        masks = _map(
            lambda _, mk: mk if mk is None or _value(mk) is None else _wrap(mk, _value(mk) | ~on), masks
        )
    return masks


def _current_masks(
    cfg: _Config, plan: _Plan, state: PruneState, step: jax.Array, params: Any, grads: Any
) -> Any:
    """The masks for ``step``: recomputed on an update step, else the stored ones."""
    do = is_update_step(step, begin_step=cfg.begin_step, end_step=cfg.end_step, update_every=cfg.update_every)
    return jax.lax.cond(do, lambda: _recompute(cfg, plan, state, step, params, grads), lambda: state.masks)


def gradual_pruning(
    inner: optax.GradientTransformation,
    final_sparsity: float,
    *,
    initial_sparsity: float = 0.0,
    begin_step: int = 0,
    num_updates: int = 1,
    update_every: int = 1,
    power: float = 3.0,
    **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Zhu & Gupta gradual pruning: :func:`prune` with a cubic schedule and its update window
    (masks updated at ``begin_step + k * update_every``, ``k = 0..num_updates``). Other keywords go
    to :func:`prune`."""
    schedule = cubic_sparsity_schedule(
        final_sparsity,
        initial_sparsity=initial_sparsity,
        begin_step=begin_step,
        num_updates=num_updates,
        update_every=update_every,
        power=power,
    )
    window = cubic_update_window(begin_step=begin_step, num_updates=num_updates, update_every=update_every)
    return prune(inner, schedule, **window, **kwargs)


# -- finding the state ----------------------------------------------------------------------------


def find_prune_state(opt_state: Any) -> PruneState | None:
    """The :class:`PruneState` inside an optimizer state (chained, ``inject_hyperparams``-wrapped,
    ``MultiSteps``...), or ``None``. Raises ``ValueError`` if there are several."""
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState))
        if isinstance(x, PruneState)
    ]
    if len(found) > 1:
        raise ValueError(f"the optimizer state holds {len(found)} pruning states; pass the one you mean")
    return found[0] if found else None


def _require(opt_state: Any) -> PruneState:
    state = opt_state if isinstance(opt_state, PruneState) else find_prune_state(opt_state)
    if state is None:
        raise ValueError("no PruneState in this optimizer state: was the optimizer built with prune()?")
    return state


def get_masks(opt_state: Any) -> Any:
    """The current masks (params' structure, ``None`` values for unpruned leaves)."""
    return _require(opt_state).masks


def keep_masks(opt_state: Any) -> Any:
    """The current masks in optax's convention: a tree with the params' structure whose leaves are
    a bool array (True = kept) for each pruned parameter and ``True`` for every other one, with
    ``nnx.Variable`` wrappers removed, so it goes into ``jax.tree.map`` beside raw parameters
    (``nnx.as_pure(nnx.state(model, nnx.Param))``, a Linen dict, a plain pytree).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = {"w": jnp.arange(1.0, 5.0).reshape(2, 2), "b": jnp.ones(2)}
        >>> tx = prune(optax.sgd(0.0), 0.5)
        >>> _, state = tx.update(params, tx.init(params), params)
        >>> jax.tree.map(lambda m, p: jnp.where(m, p, 0.0), keep_masks(state), params)["w"].tolist()
        [[0.0, 0.0], [3.0, 4.0]]
    """

    def leaf(_, mk):
        v = _value(mk) if mk is not None else None
        return True if v is None else v

    return _map(leaf, _require(opt_state).masks)


def masked_params(params: Any, opt_state: Any) -> Any:
    """What the forward pass should use: ``params`` with the current pruning masks applied.

    Without STE the pruned weights are already exactly zero, so this is an identity in value. With
    ``ste=True`` the params stay dense and the state holds the masks of the current step (computed
    from these dense weights at the end of the previous update, or at ``init``).
    """
    return apply_masks(params, _require(opt_state).masks)


def straight_through_params(params: Any, opt_state: Any) -> Any:
    """Masked params whose gradient is the dense one (straight-through estimator).

    The value equals :func:`masked_params`; the gradient with respect to every weight, pruned or
    not, is the gradient with respect to the masked weight, so pruned weights keep learning and a
    mask may flip at the next update (``ste=True``). Use it as the training step's parameter view.
    """
    masks = _require(opt_state).masks

    def leaf(_, mk, p):
        if mk is None or _value(mk) is None:
            return p
        w = _value(p)
        return _wrap(p, jnp.where(_value(mk), w, w - jax.lax.stop_gradient(w)))

    return _map(leaf, masks, params)


def from_config(cfg: PruneConfig, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """The optimizer a :class:`~jaxslim.config.PruneConfig` asks for: ``inner`` itself when pruning
    is off, else :func:`prune` around it with the cubic schedule (N:M from ``begin_step``; with
    ``ste`` the masks are recomputed every ``update_every`` steps for the whole run)."""
    if not cfg.enabled:
        return inner
    sparsity = None
    if cfg.kind != "nm":
        sparsity = cubic_sparsity_schedule(
            cfg.sparsity,
            initial_sparsity=cfg.initial_sparsity,
            begin_step=cfg.begin_step,
            num_updates=cfg.num_updates,
            update_every=cfg.update_every,
        )
    if cfg.ste:
        end_step = None
    else:
        end_step = cubic_update_window(
            begin_step=cfg.begin_step, num_updates=cfg.num_updates, update_every=cfg.update_every
        )["end_step"]
    assert cfg.kind != "none"  # cfg.enabled
    return prune(
        inner,
        sparsity,
        kind=cfg.kind,
        criterion=cfg.criterion,
        allocation=cfg.allocation,
        n=cfg.n,
        m=cfg.m,
        ste=cfg.ste,
        sr_ste_decay=cfg.sr_ste_decay,
        begin_step=cfg.begin_step,
        end_step=end_step,
        update_every=cfg.update_every,
    )


def sparsity_metrics(opt_state: Any, prefix: str = "sparsity", *, axes: Any = None) -> dict[str, jax.Array]:
    """Flat per-layer sparsity of the current masks (``sparsity/<param>/layer_<i>``,
    ``sparsity/<param>``, ``sparsity/overall``), jit-able, for training logs. Masks without axis
    metadata (plain pytrees) need ``axes=`` (as given to :func:`prune`) for the per-layer entries."""
    return sparsity_summary(_require(opt_state).masks, prefix, axes=axes)


def params_sparsity(params: Any, opt_state: Any, prefix: str = "zeros") -> dict[str, jax.Array]:
    """The fraction of exact zeros in each pruned leaf of ``params`` (what the masks promise)."""
    masks = _require(opt_state).masks
    out: dict[str, jax.Array] = {}

    def count(name, mk, p):
        if mk is None or _value(mk) is None:
            return None
        w = _value(p)
        out[f"{prefix}/{name}"] = jnp.mean((w == 0).astype(jnp.float32))
        return None

    _map(count, masks, params)
    return out
