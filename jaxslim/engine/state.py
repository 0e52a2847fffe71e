"""The training state as one pytree, created directly in its sharding.

``TrainState`` holds the model's ``nnx.Param`` slice, its other variables, the optimizer state, the
step and the PRNG key. The model's graph definition is static and kept beside it (``TrainSetup``),
so the state can be jitted, donated, checkpointed and restored against an abstract target. The
data iterator's position is small JSON and travels with the checkpoint's metadata instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxslim.models.transformer import Transformer
from jaxslim.sharding import Rules, state_shardings
from jaxslim.tree import is_variable


class TrainState(NamedTuple):
    """``params``: the ``nnx.Param`` state; ``rest``: other model variables; ``opt_state``; int32
    ``step``; ``rng``: raw uint32 PRNG key data (checkpointable as a plain array)."""

    params: Any
    rest: Any
    opt_state: Any
    step: Any  # a jax.Array; TrainSetup.shardings holds the same fields' shardings
    rng: Any


class TrainSetup(NamedTuple):
    """Everything static about a state: the model graph, the optimizer, the shardings, and the mesh
    and logical axis rules its steps trace under (step factories enter them themselves)."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    shardings: TrainState
    mesh: Mesh
    rules: Rules = ()


def variable_shardings(state: Any, mesh: Mesh, rules: Rules) -> Any:
    """Shardings with the same tree structure as ``state`` (Variables holding NamedShardings)."""
    shardings = state_shardings(state, mesh, rules)
    return jax.tree.map(lambda v, s: v.replace(s), state, shardings, is_leaf=is_variable)


def train_state_shardings(abs_params: Any, abs_rest: Any, tx, mesh: Mesh, rules: Rules) -> TrainState:
    """The shardings of a train state of these (abstract) parameters and other variables.

    Optimizer moments take the sharding of the parameter they belong to (through
    ``optax.tree_map_params``); everything else in the optimizer state, the step and the key are
    replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    param_sh = variable_shardings(abs_params, mesh, rules)
    rest_sh = variable_shardings(abs_rest, mesh, rules)
    abs_opt = jax.eval_shape(tx.init, abs_params)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abs_opt, param_sh, transform_non_params=lambda _: replicated, is_leaf=is_variable
    )
    return TrainState(param_sh, rest_sh, opt_sh, replicated, replicated)


def make_setup(make_model: Callable[[], Transformer], tx, mesh: Mesh, rules: Rules) -> TrainSetup:
    """The :class:`TrainSetup` of a model (built abstractly, nothing is allocated)."""
    # flax annotates split's states after the first as a variadic tuple, which mypy cannot unpack
    graphdef, abs_params, abs_rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)  # type: ignore[misc]
    shardings = train_state_shardings(abs_params, abs_rest, tx, mesh, rules)
    return TrainSetup(graphdef, tx, shardings, mesh, tuple(rules))


def create_train_state(
    make_model: Callable[[], Transformer],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules,
    *,
    seed: int = 0,
) -> tuple[TrainState, TrainSetup]:
    """Initialises model and optimizer state directly in their shardings.

    Optimizer moments take the sharding of the parameter they belong to (through
    ``optax.tree_map_params``); a plain ``jax.jit(tx.init)`` would leave them on one device.
    """
    setup = make_setup(make_model, tx, mesh, rules)
    state = jax.jit(_initializer(make_model, tx, seed), out_shardings=setup.shardings)()
    return state, setup


def _initializer(make_model: Callable[[], nnx.Module], tx, seed: int) -> Callable[[], TrainState]:
    def init():
        _, params, rest = nnx.split(make_model(), nnx.Param, ...)
        rng = jax.random.key_data(jax.random.key(seed + 1))
        return TrainState(params, rest, tx.init(params), jnp.zeros((), jnp.int32), rng)

    return init


def create_abstract_train_state(
    make_model: Callable[[], Transformer], tx, mesh: Mesh, rules: Rules, *, seed: int = 0
) -> tuple[TrainState, TrainSetup]:
    """What :func:`create_train_state` would return, as ``jax.ShapeDtypeStruct``s carrying their
    shardings: nothing is allocated, so a step can be lowered and compiled for a model of any size
    (``step.lower(state, batch).compile()``)."""
    setup = make_setup(make_model, tx, mesh, rules)
    shapes = jax.eval_shape(_initializer(make_model, tx, seed))
    return abstract_train_state(setup, like=shapes), setup


def abstract_train_state(state_or_setup: TrainState | TrainSetup, like: TrainState | None = None):
    """``jax.ShapeDtypeStruct`` tree (with shardings) of a train state, the restore target."""
    if isinstance(state_or_setup, TrainSetup):
        assert like is not None, "pass like= (a state or an abstract state) with a TrainSetup"
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, state_or_setup.shardings
        )
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_or_setup)


def merge_model(setup: TrainSetup, state: TrainState) -> Transformer:
    """The model of ``state`` (for evaluation, sampling or export)."""
    return nnx.merge(setup.graphdef, state.params, state.rest)


def count_params(state: TrainState) -> int:
    """Number of trainable parameters."""
    return sum(int(x.size) for x in jax.tree.leaves(state.params))
