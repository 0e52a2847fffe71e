"""Leaves, paths and logical axes of parameter trees, whatever kind of tree they are.

jaxslim's transforms meet parameters in several forms: an ``nnx.State`` of ``nnx.Variable``\\ s
(``nnx.split``), the same tree stripped to raw arrays (what ``nnx.Optimizer`` passes to
``tx.update``), Linen variable dicts and plain pytrees. Per-layer behaviour (per-layer sparsity,
N:M groups along the contraction axis, one trust ratio per layer of a stacked kernel) needs each
leaf's logical axes, which only the Variable form carries. The helpers here name every leaf by
its dotted path, which is the same in all these forms, and resolve the axes **once** into an
:class:`AxesTable` (``{dotted path: axes}``) that a transform keeps and consults later, instead of
re-reading metadata that may have been stripped.

Axes come from, in order: an explicit ``axes=`` tree (a prefix of the params' tree, as optax
masks are: a tuple of names or ``None`` at a node applies to every leaf below it), each
Variable's ``out_sharding`` metadata (``sharding_names`` / ``sharding`` in older Flax), or
nothing (``(None,) * ndim``). A stacked layer axis is called ``"layers"`` (what ``nnx.vmap`` /
``nnx.scan`` with ``transform_metadata={nnx.PARTITION_NAME: "layers"}`` add), a stacked expert
axis ``"exp"``.

Example:
    >>> import jax.numpy as jnp
    >>> params = {"stack": {"w": jnp.ones((3, 4, 8)), "b": jnp.ones((3, 8))}, "head": jnp.ones((8, 2))}
    >>> table = resolve_axes(params, {"stack": {"w": ("layers", None, None), "b": ("layers", None)}})
    >>> table["stack.w"], table["head"]
    (('layers', None, None), None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

LAYERS = "layers"
EXPERTS = "exp"
STACK_AXES = (LAYERS, EXPERTS)
_METADATA_KEYS = ("out_sharding", "sharding_names", "sharding")

Axes = tuple[str | None, ...]


def is_variable(x: Any) -> bool:
    """Whether ``x`` is an ``nnx.Variable`` (a leaf with metadata)."""
    return isinstance(x, nnx.Variable)


def is_leaf(x: Any) -> bool:
    """Leaf predicate for parameter-shaped trees: ``None`` and Variables are leaves."""
    return x is None or isinstance(x, nnx.Variable)


def value(x: Any) -> Any:
    """The raw value of a Variable, or ``x`` itself."""
    return x.get_value() if isinstance(x, nnx.Variable) else x


def wrap(like: Any, v: Any) -> Any:
    """``v`` in the same kind of leaf as ``like`` (a Variable keeps its type and metadata)."""
    return like.replace(v) if isinstance(like, nnx.Variable) else v


def key_name(k: Any) -> str:
    """The name of one path entry (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_name(path: Sequence[Any], sep: str = ".") -> str:
    """Dotted name of a tree path, e.g. ``stack.blocks.attn.wq``."""
    return sep.join(key_name(k) for k in path)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """``(dotted path, leaf)`` for every leaf (Variables and ``None`` count as leaves)."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return [(path_name(p), x) for p, x in flat]


def structure_key(tree: Any) -> tuple:
    """A hashable key of a tree's leaf names and shapes that is the same for an ``nnx.State`` of
    Variables, the same state stripped to arrays (``nnx.as_pure``) and ``optax.masked``'s view."""
    return tuple(
        (name, tuple(np.shape(value(x))))
        for name, x in named_leaves(tree)
        if x is not None and value(x) is not None
    )


def variable_axes(x: Any) -> Axes | None:
    """A Variable's logical axis names from its metadata, or ``None`` (no Variable, no names, or
    names that do not match its rank)."""
    if not isinstance(x, nnx.Variable):
        return None
    meta = x.get_metadata()
    for k in _METADATA_KEYS:
        axes = meta.get(k)
        if axes is None:
            continue
        spec = getattr(axes, "spec", axes)  # a NamedSharding
        try:
            axes = tuple(spec)
        except TypeError:
            continue
        if (
            axes
            and len(axes) == np.ndim(x.get_value())
            and all(a is None or isinstance(a, str) for a in axes)
        ):
            return axes
    return None


class AxesTable(dict):
    """``{dotted path: logical axes}`` resolved once by :func:`resolve_axes` (a plain ``dict``,
    marked so that passing it again skips resolution)."""

    def of(self, name: str, ndim: int) -> Axes:
        """The axes of leaf ``name``, ``(None,) * ndim`` where unknown."""
        axes = self.get(name)
        return tuple(axes) if axes is not None and len(axes) == ndim else (None,) * ndim


def _check_axes_leaf(name: str, axes: Any, ndim: int) -> Axes | None:
    if axes is None:
        return None
    if isinstance(axes, str) or not isinstance(axes, (tuple, list)):
        raise ValueError(
            f"axes for {name!r} must be a tuple of logical axis names (str or None) or None, got {axes!r}"
        )
    axes = tuple(axes)
    if not all(a is None or isinstance(a, str) for a in axes):
        raise ValueError(f"axes for {name!r} must hold str or None entries, got {axes!r}")
    if len(axes) != ndim:
        raise ValueError(
            f"logical axes {axes} for {name!r} name {len(axes)} dimensions, the array has {ndim} "
            "(give a tuple per leaf, or None to leave a leaf unannotated)"
        )
    return axes


def resolve_axes(params: Any, axes: Any = None) -> AxesTable:
    """Every leaf's logical axes, resolved once.

    Args:
        params: any parameter tree (Variables or arrays; ``ShapeDtypeStruct`` leaves are fine).
        axes: ``None`` (read Variable metadata), an :class:`AxesTable` (returned as is), a tree that
            is a prefix of ``params`` with a tuple of names or ``None`` at each of its leaves, or
            a callable ``params -> such a tree``. A tuple at an inner node applies to every leaf
            below it. ``None`` in the tree falls back to the leaf's metadata.

    Returns:
        An :class:`AxesTable` with an entry for every leaf (``None`` where nothing is known).

    Raises:
        ValueError: no entry of ``axes`` names a leaf or subtree of ``params`` (entries for
            leaves a call does not see, e.g. under ``optax.masked``, are fine), or a tuple names a
            different number of dimensions than its leaf has (the message names the leaf).
    """
    if isinstance(axes, AxesTable):
        return axes
    leaves = [(n, x) for n, x in named_leaves(params) if x is not None]
    table = AxesTable()
    explicit: dict[str, Any] = {}
    if axes is not None:
        tree = axes(params) if callable(axes) else axes
        axes_leaf = lambda x: x is None or isinstance(x, (tuple, list))  # noqa: E731
        # matched by path names, so a plain dict of axes fits an nnx.State of params as well
        prefixes = [
            (tuple(key_name(k) for k in p), a)
            for p, a in jax.tree_util.tree_flatten_with_path(tree, is_leaf=axes_leaf)[0]
        ]
        parts = {name: tuple(key_name(k) for k in p) for p, name in _paths(params)}
        for prefix, a in prefixes:
            # a prefix may name leaves this call does not see (optax.masked hides some)
            for n, ps in parts.items():
                if ps[: len(prefix)] == prefix and (n not in explicit or len(prefix) > explicit[n][0]):
                    explicit[n] = (len(prefix), a)  # the longest prefix wins
        if prefixes and parts and not explicit:
            raise ValueError(
                f"axes names {sorted('.'.join(p) or '<root>' for p, _ in prefixes)[:8]}, none of which is a "
                f"parameter or subtree of the params (they have {sorted(parts)[:8]}"
                f"{' ...' if len(parts) > 8 else ''}); axes must be a prefix of the params' tree"
            )
        explicit = {n: a for n, (_, a) in explicit.items()}
    for name, x in leaves:
        ndim = int(np.ndim(value(x))) if value(x) is not None else 0
        a = _check_axes_leaf(name, explicit.get(name), ndim)
        table[name] = a if a is not None else variable_axes(x)
    return table


def _paths(tree: Any) -> list[tuple[Any, str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return [(p, path_name(p)) for p, x in flat if x is not None]


def layer_dim(axes: Axes | None) -> int | None:
    """Index of the ``layers`` axis, or ``None``."""
    return tuple(axes).index(LAYERS) if axes and LAYERS in axes else None


def stack_dims(axes: Axes | None, stack_axes: Sequence[str] = STACK_AXES) -> tuple[int, ...]:
    """Indices of the stacking axes (``layers`` and ``exp`` by default)."""
    return tuple(i for i, a in enumerate(axes or ()) if a in stack_axes)


def map_named(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``fn(name, leaf, *rest_leaves)`` over the leaves of ``tree`` (Variables or ``None``)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x, *r: fn(path_name(p), x, *r), tree, *rest, is_leaf=is_leaf
    )


# Axes tables resolved from Variable metadata, by structure_key: nnx.Optimizer gives tx.init the
# Variables and tx.update raw arrays, and optax.inject_hyperparams rebuilds the inner transform on
# every call, so a table kept only by the transform instance that ran init would be lost.
_SEEN: dict[tuple, AxesTable] = {}
_SEEN_MAX = 256


def known_axes(params: Any, axes: Any = None) -> AxesTable:
    """The axes a transform should use for ``params``, the same at ``init`` and at ``update``.

    Explicit ``axes`` are resolved as given. Otherwise, parameters that carry Variable metadata
    are resolved from it and the table is remembered under their leaf names and shapes; raw arrays
    with the same names and shapes (``nnx.Optimizer``'s ``update``, ``nnx.as_pure``) get the
    remembered table, and raw arrays never seen with metadata (Linen dicts, plain pytrees) get no
    axes (every array is one group, like optax). The table is remembered per process, so a plain
    pytree with exactly the leaf names and shapes of an NNX model seen earlier gets that model's
    axes; explicit ``axes`` always win.
    """
    if axes is not None:
        return resolve_axes(params, axes)
    if any(is_variable(x) for _, x in named_leaves(params)):
        table = resolve_axes(params)
        key = structure_key(params)
        if key not in _SEEN and len(_SEEN) >= _SEEN_MAX:
            _SEEN.pop(next(iter(_SEEN)))
        _SEEN[key] = table
        return table
    return _SEEN.get(structure_key(params)) or resolve_axes(params)


def count_parameters(model: Any) -> int:
    """The number of ``nnx.Param`` elements of an NNX module (or of every array leaf of a pytree)."""
    tree = nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else model
    return sum(int(x.size) for x in jax.tree.leaves(tree))
