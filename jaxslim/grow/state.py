"""Growth of a whole training state: parameters, optimizer state, schedule step, in its shardings.

:func:`grow_train_state` is ``(train state, model config) -> (train state, model config)`` for any
growth operator (:class:`~jaxslim.grow.Widen`, :class:`~jaxslim.grow.Deepen`). It runs as one
``jax.jit`` whose ``out_shardings`` come from the grown model's logical axes, so the grown state is
created sharded on the mesh, never gathered on one host.

The optimizer state is walked by path. Every part of it with the parameters' structure is grown
with the operator's policy for what it holds, named by the optax field that holds it:

========================  ==========  ====================================================
field                      kind        policy (width x k / new depth blocks)
========================  ==========  ====================================================
``mu``, ``trace``          moment1     copied blocks ``m/k``, new blocks 0 / identity 0
``nu``                     moment2     copied blocks ``v/k**2``, new blocks 0 / identity 0
``masks`` (or booleans)    mask        tiled over the grown axes / copied with the block
========================  ==========  ====================================================

With these the first Adam / AdamW / momentum-SGD update of every copied block equals the small
model's update (tested), provided global-norm clipping does not bind: the grown gradient has a
different global norm (the new blocks have gradients too), so an active clip scales it differently.
For LAMB the moments follow the same policy but the trust ratio is a norm over the whole (grown)
weight, new blocks included, so the first LAMB step differs. A field holding parameter-shaped
state that the table does not name raises an error rather than being grown blindly.

Everything else (counts, learning-rate hyperparameters, PRNG keys) is kept, except the step of the
learning-rate schedule when ``restart_step`` is given: every ``optax.inject_hyperparams`` count in
the state is set to it, so the schedule continues from the larger model's equivalent step (see
:func:`jaxslim.optim.rewarm.rewarm_schedule` for the re-warm-up after the jump). Adam's own count,
which drives bias correction, and the training step are not changed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxslim.config import ModelConfig
from jaxslim.engine.state import TrainState, train_state_shardings
from jaxslim.grow.tree import GrowthOp, Kind, axes_tree, check_shapes, flatten, nest, variable_paths
from jaxslim.models import Transformer
from jaxslim.sharding import Rules
from jaxslim.tree import is_variable

# optax (and jaxslim) state fields with the params' structure, and what they hold
FIELD_KINDS: dict[str, Kind] = {"mu": "moment1", "trace": "moment1", "nu": "moment2", "masks": "mask"}
_INJECT = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


def _value(x):
    return x.get_value() if is_variable(x) else x


def _split_path(path: tuple, param_paths: set) -> tuple[tuple, tuple] | None:
    """``(prefix, param path)`` when ``path`` ends with the path of a parameter, else ``None``."""
    keys: list[Any] = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.insert(0, entry.key)
        if tuple(keys) in param_paths:
            return tuple(path[: len(path) - len(keys)]), tuple(keys)
    return None


def _kind(prefix: tuple, leaves: list) -> Kind:
    for entry in reversed(prefix):
        if isinstance(entry, jax.tree_util.GetAttrKey) and entry.name in FIELD_KINDS:
            return FIELD_KINDS[entry.name]
    if all(jnp.asarray(_value(v)).dtype == jnp.bool_ for v in leaves):
        return "mask"
    where = jax.tree_util.keystr(prefix)
    raise ValueError(
        f"cannot grow the optimizer state at {where}: it holds parameter-shaped values that are not a "
        f"known moment or mask (known fields: {sorted(FIELD_KINDS)}); add its field to "
        "jaxslim.grow.state.FIELD_KINDS with the policy that fits it"
    )


def set_schedule_step(opt_state: Any, step) -> Any:
    """``opt_state`` with every ``optax.inject_hyperparams`` count (the step its schedules are
    evaluated at) set to ``step``; nothing else changes."""

    def walk(node):
        if isinstance(node, _INJECT):
            counts = {
                k: (s._replace(count=jnp.asarray(step, s.count.dtype)) if hasattr(s, "count") else s)
                for k, s in node.hyperparams_states.items()
            }
            return node._replace(
                count=jnp.asarray(step, node.count.dtype),
                hyperparams_states=counts,
                inner_state=walk(node.inner_state),
            )
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(walk(x) for x in node))
        if isinstance(node, (tuple, list)):
            return type(node)(walk(x) for x in node)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    return walk(opt_state)


def grow_train_state(
    state: TrainState,
    cfg: ModelConfig,
    op: GrowthOp,
    *,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules,
    restart_step: int | None = None,
) -> tuple[TrainState, ModelConfig]:
    """Grows a whole training state with ``op`` (see the module doc for the policies).

    Args:
        state: the state of a ``cfg`` model trained with ``tx``.
        cfg: the model's config.
        op: a growth operator, e.g. ``Widen(2)`` or ``Deepen("identity")``.
        tx: the optimizer (its state structure does not depend on the model's size).
        mesh / rules: where the grown state lives and how logical axes map to mesh axes.
        restart_step: the schedule step the grown model continues from (``None``: unchanged).

    Returns:
        ``(grown state, grown model config)``; the grown state is sharded like a state created for
        the grown model (:func:`~jaxslim.engine.state.create_train_state`).

    Raises:
        ValueError: the operator does not apply to ``cfg`` (a factor that does not fit, a model
            the operator refuses), or the optimizer state holds parameter-shaped state of an
            unknown kind.
    """

    new_cfg = op.config(cfg)
    abstract = nnx.eval_shape(lambda: Transformer(new_cfg, rngs=nnx.Rngs(0)))
    _, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)  # type: ignore[misc]  # see make_setup
    shardings = train_state_shardings(abs_params, abs_rest, tx, mesh, rules)
    abs_opt = jax.eval_shape(tx.init, abs_params)
    new_param_paths = variable_paths(abs_params)
    param_axes, rest_axes = axes_tree(state.params), axes_tree(state.rest)
    old_paths = set(variable_paths(state.params))

    def grow_module_state(tree, axes, target, what):
        pure = nest({p: v.get_value() for p, v in variable_paths(tree).items()})
        grown = flatten(op.apply(cfg, pure, axes, "param")) if pure else {}
        targets = variable_paths(target)
        check_shapes(grown, targets, what)
        return nnx.from_flat_state([(p, v.replace(grown[p])) for p, v in targets.items()])

    def grow_opt_state(opt_state):
        flat, _ = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_variable)
        groups: dict[tuple, dict[tuple, Any]] = {}
        others: dict[tuple, Any] = {}
        for path, leaf in flat:
            split = _split_path(path, old_paths)
            if split is None:
                others[path] = leaf
            else:
                groups.setdefault(split[0], {})[split[1]] = leaf
        grown = {}
        for prefix, leaves in groups.items():
            kind = _kind(prefix, list(leaves.values()))
            pure = nest({p: _value(v) for p, v in leaves.items()})
            grown[prefix] = flatten(op.apply(cfg, pure, param_axes, kind))
        new_flat, treedef = jax.tree_util.tree_flatten_with_path(abs_opt, is_leaf=is_variable)
        out = []
        for path, like in new_flat:
            split = _split_path(path, set(new_param_paths))
            if split is None:
                if path not in others:
                    raise AssertionError(
                        f"growth found no value for optimizer state {jax.tree_util.keystr(path)}"
                    )
                out.append(others[path])
                continue
            value = grown[split[0]][split[1]]
            if value is None:  # an unpruned leaf's mask
                out.append(like)
                continue
            if tuple(value.shape) != tuple(like.shape):
                raise AssertionError(
                    f"growth produced optimizer state {jax.tree_util.keystr(path)} of shape {value.shape}, "
                    f"expected {like.shape}"
                )
            out.append(like.replace(value) if is_variable(like) else value)
        return jax.tree_util.tree_unflatten(treedef, out)

    def grow(state: TrainState) -> TrainState:
        params = grow_module_state(state.params, param_axes, abs_params, "parameter")
        rest = grow_module_state(state.rest, rest_axes, abs_rest, "model variable")
        opt_state = grow_opt_state(state.opt_state)
        if restart_step is not None:
            opt_state = set_schedule_step(opt_state, restart_step)
        return TrainState(params, rest, opt_state, state.step, state.rng)

    with jax.set_mesh(mesh):
        return jax.jit(grow, out_shardings=shardings)(state), new_cfg
