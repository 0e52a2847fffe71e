"""The pieces every growth operator shares: dotted-path maps over nested dicts and model growth.

A growth operator is an object with ``config(model_cfg) -> model_cfg`` and
``apply(model_cfg, tree, axes, kind) -> tree``: ``tree`` is a nested dict of arrays with the
structure of the model's parameters (``nnx.to_pure_dict``; partial trees are fine), ``axes`` the
same structure holding each leaf's logical axis names, and ``kind`` says what the leaves are, so
the operator can apply its policy: ``"param"`` (weights), ``"moment1"`` / ``"moment2"`` (first and
second moments of an Adam-style optimizer, momentum traces) or ``"mask"`` (pruning masks).
Operators use only ``jax.numpy``, so the same code grows a model on the host and a sharded training
state inside ``jax.jit`` (:func:`jaxslim.grow.state.grow_train_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import jax
import numpy as np
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models.transformer import Transformer
from jaxslim.sharding import logical_axes

Kind = Literal["param", "moment1", "moment2", "mask"]
KINDS = ("param", "moment1", "moment2", "mask")


class GrowthOp(Protocol):
    def config(self, cfg: ModelConfig) -> ModelConfig: ...

    def apply(self, cfg: ModelConfig, tree: dict, axes: dict, kind: Kind) -> dict: ...


def map_paths(fn: Callable[[str, Any, tuple], Any], tree: Any, axes: Any, prefix: str = "") -> Any:
    """``fn(dotted path, leaf, logical axes)`` over the leaves of a nested dict (``None`` kept)."""
    if isinstance(tree, dict):
        return {
            key: map_paths(fn, value, axes[key], f"{prefix}.{key}" if prefix else str(key))
            for key, value in tree.items()
        }
    return None if tree is None else fn(prefix, tree, axes)


def nest(flat: dict[tuple, Any]) -> dict:
    """A nested dict from ``{path tuple: leaf}``."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return out


def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    """The inverse of :func:`nest`."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def variable_paths(state: Any) -> dict[tuple, nnx.Variable]:
    """``{path tuple: Variable}`` of an ``nnx.State``."""
    return {tuple(p): v for p, v in nnx.to_flat_state(state)}


def axes_tree(state: Any) -> dict:
    """The logical axes of every Variable of ``state`` as a nested dict."""
    return nest({tuple(p): tuple(a) for p, a in nnx.to_flat_state(logical_axes(state))})


def check_shapes(grown: dict[tuple, Any], target: dict[tuple, Any], what: str) -> None:
    """Every grown leaf has the target's shape and no target leaf is missing."""
    missing = sorted(".".join(map(str, p)) for p in target if p not in grown)
    if missing:
        raise AssertionError(f"growth left {what} {missing[:5]} without a value")
    for path, var in target.items():
        have = tuple(np.shape(grown[path]))
        if have != tuple(var.shape):
            name = ".".join(map(str, path))
            raise AssertionError(
                f"growth produced {what} {name} of shape {have}, expected {tuple(var.shape)}"
            )


def grow_model(model: Transformer, op: GrowthOp) -> Transformer:
    """A new model of ``op.config(model.cfg)`` holding ``model``'s grown weights."""
    cfg = model.cfg
    new_cfg = op.config(cfg)
    state = nnx.state(model)
    pure = nest({p: v.get_value() for p, v in variable_paths(state).items()})
    grown = flatten(op.apply(cfg, pure, axes_tree(state), "param"))
    target = nnx.eval_shape(lambda: type(model)(new_cfg, rngs=nnx.Rngs(0)))
    graphdef, target_state = nnx.split(target)
    targets = variable_paths(target_state)
    check_shapes(grown, targets, "weight")
    filled = [(p, var.replace(jax.numpy.asarray(grown[p]))) for p, var in targets.items()]
    return nnx.merge(graphdef, nnx.from_flat_state(filled))
