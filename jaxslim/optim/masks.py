"""Parameter masks for optimizers: which weights get weight decay, a trust ratio, noise.

A mask is a pytree of Python bools with the params' structure (or a prefix of it), or a callable
``params -> mask``, as ``optax.masked`` takes. :func:`checked_mask` wraps either so that a mask of
the wrong structure fails with a ``ValueError`` naming the option instead of an error deep inside
``jax.tree.map``.

Example:
    >>> import jax.numpy as jnp
    >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "LayerNorm": {"gamma": jnp.ones(2)}}
    >>> exclude_mask(["bias", "LayerNorm"])(params)
    {'LayerNorm': {'gamma': False}, 'dense': {'bias': False, 'kernel': True}}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxslim.optim.trust import GROUP_AXES, group_dims
from jaxslim.tree import is_variable, known_axes, map_named, value

Mask = Any  # a bool pytree or a callable params -> bool pytree


def _path_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def param_names(params: Any) -> Any:
    """Each leaf's path as ``"a/b/c"`` (Variables count as leaves)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _path_name(p), params, is_leaf=is_variable)


def decay_mask(params: Any, axes: Any = None) -> Any:
    """True for weights that get weight decay: matrices and higher-rank kernels, not vectors.

    Stacking axes do not count: a scanned bias ``("layers", "embed")`` or a stacked expert bias
    ``("layers", "exp", "mlp")`` is a vector per layer and expert, so it is excluded, as are norm
    scales, and leaves named ``bias`` or ``scale`` (Flax's names, which also covers a stack of them
    built without annotations, e.g. by ``nn.scan``). The axes are those of :func:`jaxslim.tree.known_axes`: Variable metadata (remembered,
    so ``nnx.Optimizer``'s raw-array ``update`` gets the same mask as its ``init``), or ``axes``
    for plain pytrees; arrays without any count all their dimensions.
    """
    table = known_axes(params, axes)

    def decayed(name, v):
        if v is None:
            return None
        if name.rsplit(".", 1)[-1] in ("bias", "scale"):
            return False
        x = value(v)
        return bool(np.ndim(x) - len(group_dims(table.get(name), np.ndim(x), GROUP_AXES)) >= 2)

    return map_named(decayed, params)


def exclude_mask(patterns: Sequence[str]) -> Callable[[Any], Any]:
    """A mask that is False for every leaf whose path (``"a/b/c"``) matches one of the regular
    expressions (``re.search``, as TF-addons' ``exclude_from_weight_decay``), True elsewhere."""
    patterns = tuple(patterns)
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"exclude pattern {p!r} is not a valid regular expression: {e}") from e

    def mask(params):
        return jax.tree.map(lambda n: not any(re.search(p, n) for p in patterns), param_names(params))

    return mask


def checked_mask(name: str, mask: Mask) -> Mask:
    """``mask`` as a callable that validates its result against the params (or ``True``/``False``
    unchanged, meaning every / no leaf).

    Raises (when called):
        ValueError: the mask's tree is not a prefix of the params' tree, or a leaf is not a bool;
            the message names ``name``.
    """
    if mask is None:
        return True
    if isinstance(mask, bool):
        return mask

    def resolved(params):
        tree = mask(params) if callable(mask) else mask
        try:
            jax.tree.map(lambda m, _: None, tree, params, is_leaf=lambda x: isinstance(x, bool))
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{name} does not match the params: its tree "
                f"{jax.tree.structure(tree, is_leaf=is_variable)} must equal (or be a prefix of) the params' "
                f"tree {jax.tree.structure(params, is_leaf=is_variable)}"
            ) from e
        bad = [x for x in jax.tree.leaves(tree) if not isinstance(x, bool)]
        if bad:
            raise ValueError(
                f"{name} must hold Python bools (one per parameter or subtree), got {type(bad[0]).__name__} "
                f"{bad[0]!r}"
            )
        return tree

    return resolved


def and_masks(name: str, a: Mask, b: Mask) -> Mask:
    """The leafwise AND of two masks (each a bool, a tree or a callable)."""

    def tree(m, params):
        if isinstance(m, bool):
            return jax.tree.map(lambda _: m, params, is_leaf=is_variable)
        return m(params) if callable(m) else m

    if a is True:
        return b
    if b is True:
        return a

    def resolved(params):
        return jax.tree.map(lambda x, y: bool(x and y), tree(a, params), tree(b, params))

    return checked_mask(name, resolved)
