"""Weight masks as pytrees shaped like the parameters: scores, allocation, N:M, structured units.

A *mask tree* has exactly the tree structure of the parameters it belongs to. For an ``nnx.State``
of ``nnx.Param`` variables, every leaf of the mask tree is the parameter's own Variable type with
the same metadata (``param.replace(mask)``), so logical axis names, and with them shardings,
carry over: ``optax.tree_map_params`` gives each mask the sharding of its parameter.

**Sentinel for leaves that are not pruned**: the Variable holds ``None`` (``param.replace(None)``);
for a plain pytree of arrays the leaf itself is ``None``. A ``None`` mask means "keep everything"
and stores nothing, so biases, norm scales and embeddings cost no memory. Which leaves are pruned
is decided statically from names, logical axes and shapes (:func:`default_filter`, or any
``filter(path, axes, shape) -> bool``), so the tree structure never depends on values.

Masks are boolean (True = keep). Every selection is *exact-k* (the number of pruned weights is
``round(sparsity * size)``, at least one weight kept) and ties are broken deterministically by flat
index (the earlier element is pruned first), so the same parameters give the same masks on one
device and on any mesh.

**Contraction axes.** :func:`contraction_axes` gives, per kernel, the axes the forward pass
contracts over, from its logical names; N:M groups of ``m`` consecutive elements run along the
*innermost* contraction axis (:func:`nm_axis`): ``embed`` for attention ``wq/wk/wv``, MLP
``wi/wu`` and the LM head, ``mlp`` for the MLP ``wo``, and ``head_dim`` for the attention ``wo``
(so a group never straddles two heads; ``head_dim`` must be divisible by ``m``).

Example:
    >>> from flax import nnx
    >>> from jaxslim.config import ModelConfig
    >>> from jaxslim.models import Transformer
    >>> cfg = ModelConfig.gpt2(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
    >>> _, params, _ = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    >>> masks = compute_masks(params, 0.5)                    # per-layer magnitude pruning
    >>> sparse = apply_masks(params, masks)
    >>> round(float(sparsity_summary(masks)["sparsity/overall"]), 3)
    0.5
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxslim.tree import (
    LAYERS,
    STACK_AXES,
    AxesTable,
    is_leaf,
    map_named,
    named_leaves,
    resolve_axes,
    value,
    wrap,
)

Criterion = Literal["magnitude", "random", "saliency"]
Kind = Literal["unstructured", "nm", "heads", "neurons", "channels"]
Allocation = Literal["layer", "global"]
# (dotted path, logical axes, shape) -> whether the leaf is pruned
PruneFilter = Callable[[str, tuple, tuple], bool]

CRITERIA = ("magnitude", "random", "saliency")
KINDS = ("unstructured", "nm", "heads", "neurons", "channels")
ALLOCATIONS = ("layer", "global")
# structured kinds: the logical axis whose units are kept or dropped whole
UNIT_AXES = {"heads": "heads", "neurons": "mlp", "channels": "embed"}
# axes that are batch-like in a kernel (never contracted)
_BATCH_AXES = STACK_AXES
_HEAD_AXES = ("heads", "kv_heads")
_NOT_KERNELS = ("bias", "scale")  # Flax names of biases and norm scales


# -- leaves, paths and axes -----------------------------------------------------------------------

_is_leaf = is_leaf
_value = value
_wrap = wrap
_map = map_named
_named_leaves = named_leaves


def _axes_of(table: AxesTable, name: str, x: Any) -> tuple:
    """The axes of leaf ``name`` from a resolved table (``(None,) * ndim`` where unknown)."""
    v = _value(x)
    return table.of(name, int(np.ndim(v)) if v is not None else 0)


def _layer_axis(axes: tuple) -> int | None:
    return axes.index(LAYERS) if LAYERS in axes else None


def _check_sparsity(sparsity: Any, what: str = "sparsity") -> None:
    if isinstance(sparsity, (int, float, np.number)) and not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {sparsity!r}")


def _check_nm(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m):
        raise ValueError(f"N:M sparsity needs integers 1 <= n < m, got n={n!r}, m={m!r}")


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


# -- which leaves, which axes ---------------------------------------------------------------------


def is_embedding(path: str, axes: Sequence[str | None] = ()) -> bool:
    """Whether a leaf is an embedding table (rows gathered by token id, not a kernel).

    By role, whatever the model: Flax's ``nnx.Embed`` / ``nn.Embed`` parameter (``embedding``), a
    path component that names an embedding (containing ``embed`` but not ``unembed``, or GPT-2's
    ``wte`` / ``wpe``), or a first non-stacking logical axis ``vocab`` (a ``[vocab, d]`` table).
    """
    parts = [p.lower() for p in path.split(".")]
    rest = [a for a in axes if a not in STACK_AXES]
    if rest and rest[0] == "vocab":
        return True
    return any(p in ("wte", "wpe") or ("embed" in p and "unembed" not in p) for p in parts)


def default_filter(path: str, axes: tuple, shape: tuple) -> bool:
    """True for the kernels pruned by default: rank >= 2 (not counting stacking axes) and not an
    embedding table, whatever the model's axis names.

    Defined by shape and role, so a user's own model (own axis names, or none) is pruned like
    jaxslim's: the rank leaves out the stacking axes (``layers``, ``exp``) that the resolved axes
    name; leaves named ``bias`` or ``scale`` (Flax's biases and norm scales, also when stacked
    ``[layers, d]`` without annotations), norm parameters (logical axis ``norm``), per-head
    attention biases (only ``heads`` / ``kv_heads`` / ``head_dim`` axes) and embedding tables
    (:func:`is_embedding`) are not pruned. The LM head, pooler and router kernels are.

    Example:
        >>> default_filter("block.mlp.kernel", (None, "model"), (64, 256))
        True
        >>> default_filter("blocks.ln.scale", (), (4, 64)), default_filter("tok.embedding", (), (100, 64))
        (False, False)
    """
    axes = tuple(axes) if axes else (None,) * len(shape)
    rest = [a for a in axes if a not in STACK_AXES]
    if len(rest) < 2 or "norm" in axes:
        return False
    if path.rsplit(".", 1)[-1].lower() in _NOT_KERNELS:
        return False
    if all(a in _HEAD_AXES + ("head_dim",) for a in rest):
        return False
    return not is_embedding(path, axes)


def contraction_axes(path: str, axes: Sequence[str | None]) -> tuple[int, ...]:
    """Indices of the axes a kernel is contracted over in the forward pass, from its logical names.

    ==========================  ===============================  ====================
    kernel                      logical axes                     contracted over
    ==========================  ===============================  ====================
    attention ``wq/wk/wv``      ``[layers?, embed, heads, hd]``  ``embed``
    attention ``wo``            ``[layers?, heads, hd, embed]``  ``heads, head_dim``
    MLP ``wi/wu``               ``[layers?, embed, mlp]``        ``embed``
    MLP ``wo``                  ``[layers?, mlp, embed]``        ``mlp``
    LM head                     ``[embed, vocab]``               ``embed``
    any other ``[in, out]``     Flax ``Dense`` convention        the first axis
    ==========================  ===============================  ====================

    Batch-like axes (``layers``, ``exp``) are skipped. When the first remaining axes are a head axis
    (``heads`` / ``kv_heads``) followed by ``head_dim``, both are contracted (the attention output
    projection); otherwise the first remaining axis is.

    Args:
        path: the parameter's dotted name (used in error messages).
        axes: its logical axis names (``None`` entries allowed).

    Returns:
        The contracted axis indices, in order.

    Example:
        >>> contraction_axes("stack.blocks.attn.wo", ("layers", "heads", "head_dim", "embed"))
        (1, 2)
    """
    axes = tuple(axes)
    rest = [i for i, a in enumerate(axes) if a not in _BATCH_AXES]
    if len(rest) < 2:
        raise ValueError(f"{path}: a kernel needs two non-layer axes to contract over, got axes {axes}")
    first, second = rest[0], rest[1]
    if axes[first] in _HEAD_AXES and axes[second] == "head_dim" and len(rest) > 2:
        return (first, second)
    return (first,)


def nm_axis(path: str, axes: Sequence[str | None]) -> int:
    """The axis N:M groups run along: the innermost contraction axis (``head_dim`` for attention
    ``wo``, so groups of consecutive elements in the flattened ``heads * head_dim`` input never
    straddle a head)."""
    return contraction_axes(path, axes)[-1]


def _targets(tree: Any, kind: str, filter: PruneFilter, table: AxesTable) -> dict[str, bool]:
    """Static choice of the pruned leaves, by name, for a pruning ``kind``."""
    leaves = [(n, x) for n, x in _named_leaves(tree) if x is not None and _value(x) is not None]
    out: dict[str, bool] = {}
    heads_size: dict[str, int] = {}
    for name, x in leaves:
        axes = _axes_of(table, name, x)
        if "heads" in axes:
            heads_size[name.rsplit(".", 1)[0]] = np.shape(_value(x))[axes.index("heads")]
    for name, x in leaves:
        axes, shape = _axes_of(table, name, x), tuple(np.shape(_value(x)))
        ok = bool(filter(name, axes, shape))
        if ok and kind in UNIT_AXES:
            unit = UNIT_AXES[kind]
            if unit in axes:
                pass
            elif kind == "heads" and "kv_heads" in axes:
                # key/value heads are pruned with the query heads only without grouping (MHA)
                group = name.rsplit(".", 1)[0]
                ok = heads_size.get(group) == shape[axes.index("kv_heads")]
            else:
                ok = False
        out[name] = ok
    return out


def _unit_axis(kind: str, axes: tuple) -> int:
    unit = UNIT_AXES[kind]
    if unit in axes:
        return axes.index(unit)
    return axes.index("kv_heads")


# -- scores ---------------------------------------------------------------------------------------


def compute_scores(
    params: Any,
    criterion: Criterion = "magnitude",
    *,
    grads: Any = None,
    rng: jax.Array | None = None,
    filter: PruneFilter = default_filter,
    kind: Kind = "unstructured",
    axes: Any = None,
) -> Any:
    """Importance scores (float32) for the pruned leaves, ``None`` for the others.

    Args:
        params: parameters (an ``nnx.State`` of Variables or a pytree of arrays).
        criterion: ``"magnitude"`` (``|w|``), ``"random"`` (uniform, from ``rng``) or ``"saliency"``
            (``|w * g|``, needs ``grads`` with the params' structure).
        grads: gradients for ``"saliency"``.
        rng: a PRNG key for ``"random"``; each leaf draws from ``fold_in(rng, leaf index)``.
        filter: which leaves are pruned (see :func:`default_filter`).
        kind: the pruning kind; structured kinds also drop leaves without the unit axis.
        axes: logical axes per leaf: ``None`` reads Variable metadata, or a prefix tree / resolved
            table (see :func:`jaxslim.tree.resolve_axes`).

    Returns:
        A tree with the structure of ``params``.
    """
    _check_choice("criterion", criterion, CRITERIA)
    _check_choice("kind", kind, KINDS)
    if criterion == "saliency" and grads is None:
        raise ValueError('criterion="saliency" needs grads (|w * g|)')
    if criterion == "random" and rng is None:
        raise ValueError('criterion="random" needs an rng key')
    targets = _targets(params, kind, filter, resolve_axes(params, axes))
    names = [n for n, _ in _named_leaves(params)]
    index = {n: i for i, n in enumerate(names)}

    def score(name, p, g=None):
        if p is None:
            return None
        if not targets.get(name, False):
            return _wrap(p, None)
        w = jnp.asarray(_value(p), jnp.float32)
        if criterion == "magnitude":
            s = jnp.abs(w)
        elif criterion == "saliency":
            s = jnp.abs(w * jnp.asarray(_value(g), jnp.float32))
        else:
            s = jax.random.uniform(jax.random.fold_in(rng, index[name]), w.shape, jnp.float32)
        return _wrap(p, s)

    if criterion == "saliency":
        return _map(score, params, grads)
    return _map(score, params)


def mask_template(
    params: Any, *, kind: Kind = "unstructured", filter: PruneFilter = default_filter, axes: Any = None
) -> Any:
    """All-True masks for the leaves a ``kind`` prunes, the ``None`` sentinel elsewhere."""
    _check_choice("kind", kind, KINDS)
    targets = _targets(params, kind, filter, resolve_axes(params, axes))

    def leaf(name, p):
        if p is None:
            return None
        if not targets.get(name, False):
            return _wrap(p, None)
        return _wrap(p, jnp.ones(np.shape(_value(p)), bool))

    return _map(leaf, params)


# -- masks from scores ----------------------------------------------------------------------------


def _n_prune(sparsity: Any, size: int) -> jax.Array:
    n = jnp.floor(jnp.asarray(sparsity, jnp.float32) * size + 0.5).astype(jnp.int32)
    return jnp.clip(n, 0, size - 1)  # always keep at least one


def _keep_top(flat: jax.Array, sparsity: Any) -> jax.Array:
    """Exact-k keep mask of a 1-D score vector; ties pruned in index order."""
    size = flat.shape[0]
    order = jnp.argsort(flat, stable=True)
    keep_sorted = jnp.arange(size) >= _n_prune(sparsity, size)
    return jnp.zeros(size, bool).at[order].set(keep_sorted, unique_indices=True)


def _per_layer(fn: Callable[[jax.Array], jax.Array], x: jax.Array, axes: tuple) -> jax.Array:
    i = _layer_axis(axes)
    if i is None:
        return fn(x)
    return jax.vmap(fn, in_axes=i, out_axes=i)(x)


def unstructured_masks(
    scores: Any, sparsity: Any, *, allocation: Allocation = "layer", axes: Any = None
) -> Any:
    """Keep the highest-scoring weights.

    Args:
        scores: from :func:`compute_scores` (``None`` leaves stay ``None``).
        sparsity: the fraction pruned, in ``[0, 1)`` (a float or a traced scalar).
        allocation: ``"layer"`` reaches the sparsity in every leaf, and in every layer of a scanned
            stack separately; ``"global"`` uses one threshold over all scored weights, so the
            overall sparsity is exact and layers differ.
        axes: logical axes per leaf: ``None`` reads Variable metadata, or a prefix tree / resolved
            table (see :func:`jaxslim.tree.resolve_axes`).

    Returns:
        Boolean masks with the structure of ``scores``.
    """
    _check_sparsity(sparsity)
    _check_choice("allocation", allocation, ALLOCATIONS)
    if allocation == "layer":
        table = resolve_axes(scores, axes)

        def leaf(name, s):
            if s is None or _value(s) is None:
                return s
            x = _value(s)
            fn = lambda y: _keep_top(y.reshape(-1), sparsity).reshape(y.shape)  # noqa: E731
            return _wrap(s, _per_layer(fn, x, _axes_of(table, name, s)))

        return _map(leaf, scores)

    live = [(n, _value(s)) for n, s in _named_leaves(scores) if s is not None and _value(s) is not None]
    if not live:
        return scores
    flat = jnp.concatenate([x.reshape(-1) for _, x in live])
    keep = _keep_top(flat, sparsity)
    parts, start = {}, 0
    for name, x in live:
        parts[name] = keep[start : start + x.size].reshape(x.shape)
        start += x.size

    def put(name, s):
        if s is None or _value(s) is None:
            return s
        return _wrap(s, parts[name])

    return _map(put, scores)


def _nm_keep(x: jax.Array, ax: int, n: int, m: int) -> jax.Array:
    y = jnp.moveaxis(x, ax, -1)
    g = y.reshape(y.shape[:-1] + (y.shape[-1] // m, m))
    a, b = g[..., :, None], g[..., None, :]  # element i against every j of its group
    idx = jnp.arange(m)
    earlier = (idx[None, :] < idx[:, None]).reshape((1,) * (g.ndim - 1) + (m, m))
    below = (b < a) | ((b == a) & earlier)  # j ranks below i (ties: the earlier one is lower)
    rank = below.sum(-1)
    keep = rank >= m - n
    return jnp.moveaxis(keep.reshape(y.shape), -1, ax)


def nm_masks(scores: Any, n: int = 2, m: int = 4, *, axes: Any = None) -> Any:
    """N:M masks: in every group of ``m`` consecutive weights along the contraction axis
    (:func:`nm_axis`), keep the ``n`` highest-scoring ones (ties: the later index wins).

    Raises:
        ValueError: ``n >= m``, or a pruned kernel's N:M axis is not divisible by ``m`` (the
            message names the parameter and the axis).
    """
    _check_nm(n, m)
    table = resolve_axes(scores, axes)

    def leaf(name, s):
        if s is None or _value(s) is None:
            return s
        x, axes = _value(s), _axes_of(table, name, s)
        ax = nm_axis(name, axes)
        if x.shape[ax] % m:
            raise ValueError(
                f"{name}: N:M {n}:{m} runs along contraction axis {ax} ({axes[ax]!r}, size "
                f"{x.shape[ax]}), which is not divisible by m={m}; exclude it with filter= or pick another m"
            )
        return _wrap(s, _nm_keep(x, ax, n, m))

    return _map(leaf, scores)


def unit_masks(scores: Any, sparsity: Any, *, kind: Kind = "heads", axes: Any = None) -> dict[str, jax.Array]:
    """Keep-masks of whole units: attention heads, FFN neurons or residual channels.

    A unit's score is the sum of the scores of every weight it owns, over all scored leaves of its
    group. Groups: for ``"heads"`` and ``"neurons"`` the parent module (``stack.blocks.attn``,
    ``stack.blocks.mlp``), one mask per layer; for ``"channels"`` the whole model (the residual
    stream is shared), one mask for all layers.

    Returns:
        ``{group: bool [layers, units]}`` for scanned stacks, ``[units]`` otherwise; ``channels``
        gives ``{"embed": bool [d_model]}``.
    """
    _check_sparsity(sparsity)
    _check_choice("kind", kind, tuple(UNIT_AXES))
    table = resolve_axes(scores, axes)
    sums: dict[str, jax.Array] = {}
    for name, s in _named_leaves(scores):
        if s is None or _value(s) is None:
            continue
        x, axes = _value(s), _axes_of(table, name, s)
        u = _unit_axis(kind, axes)
        li = _layer_axis(axes)
        keep_axes: tuple[int, ...]
        if kind == "channels":
            group, keep_axes = "embed", (u,)
        else:
            group, keep_axes = name.rsplit(".", 1)[0], (u,) if li is None else (li, u)
        red = jnp.sum(x, axis=tuple(i for i in range(x.ndim) if i not in keep_axes))
        if len(keep_axes) == 2 and li is not None and li > u:
            red = red.T
        sums[group] = red if group not in sums else sums[group] + red
    return {g: _per_layer_rows(s, sparsity) for g, s in sums.items()}


def _per_layer_rows(s: jax.Array, sparsity: Any) -> jax.Array:
    if s.ndim == 1:
        return _keep_top(s, sparsity)
    return jax.vmap(lambda r: _keep_top(r, sparsity))(s)


def broadcast_unit_masks(
    template: Any, units: dict[str, jax.Array], *, kind: Kind = "heads", axes: Any = None
) -> Any:
    """Weight masks from unit masks: every weight of a dropped unit is masked.

    ``template`` is any tree with the params' structure whose ``None`` leaves are left alone (for
    example :func:`mask_template` or scores).
    """
    _check_choice("kind", kind, tuple(UNIT_AXES))
    table = resolve_axes(template, axes)

    def leaf(name, t):
        if t is None or _value(t) is None:
            return t
        shape, axes = np.shape(_value(t)), _axes_of(table, name, t)
        group = "embed" if kind == "channels" else name.rsplit(".", 1)[0]
        if group not in units:
            raise ValueError(f"{name}: no {kind} mask for group {group!r} (have {sorted(units)})")
        um = units[group]
        u, li = _unit_axis(kind, axes), _layer_axis(axes)
        target = [1] * len(shape)
        target[u] = shape[u]
        if um.ndim == 2:
            if li is None:
                raise ValueError(f"{name}: a per-layer {kind} mask {um.shape} for an unstacked weight")
            target[li] = shape[li]
            if li > u:
                um = um.T
        if um.size != int(np.prod(target)):
            raise ValueError(
                f"{name}: {kind} mask of shape {tuple(units[group].shape)} does not fit weight shape {shape}"
            )
        return _wrap(t, jnp.broadcast_to(um.reshape(target), shape))

    return _map(leaf, template)


def structured_masks(scores: Any, sparsity: Any, *, kind: Kind = "heads", axes: Any = None) -> Any:
    """Weight masks that drop whole heads, FFN neurons or residual channels (see :func:`unit_masks`)."""
    table = resolve_axes(scores, axes)
    units = unit_masks(scores, sparsity, kind=kind, axes=table)
    return broadcast_unit_masks(scores, units, kind=kind, axes=table)


def compute_masks(
    params: Any,
    sparsity: Any = None,
    *,
    kind: Kind = "unstructured",
    criterion: Criterion = "magnitude",
    allocation: Allocation = "layer",
    n: int = 2,
    m: int = 4,
    grads: Any = None,
    rng: jax.Array | None = None,
    filter: PruneFilter = default_filter,
    previous: Any = None,
    axes: Any = None,
) -> Any:
    """Scores and masks in one call.

    Args:
        params: the parameters.
        sparsity: fraction pruned, in ``[0, 1)``; not used by ``kind="nm"`` (``1 - n / m``), required
            by every other kind.
        kind: ``"unstructured"``, ``"nm"``, ``"heads"``, ``"neurons"`` or ``"channels"``.
        criterion: see :func:`compute_scores`.
        allocation: ``"layer"`` or ``"global"`` (unstructured only).
        n, m: N:M pattern.
        grads, rng, filter: see :func:`compute_scores`.
        previous: earlier masks; weights they pruned score ``-inf``, so they are pruned first and
            masks only shrink while the sparsity grows.
        axes: logical axes per leaf: ``None`` reads Variable metadata, or a prefix tree / resolved
            table (see :func:`jaxslim.tree.resolve_axes`).

    Returns:
        Boolean masks with the structure of ``params``.
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("allocation", allocation, ALLOCATIONS)
    if kind == "nm":
        _check_nm(n, m)
    elif sparsity is None:
        raise ValueError(f"kind={kind!r} needs a sparsity in [0, 1)")
    else:
        _check_sparsity(sparsity)
    table = resolve_axes(params, axes)
    scores = compute_scores(params, criterion, grads=grads, rng=rng, filter=filter, kind=kind, axes=table)
    if previous is not None:

        def demote(name, s, old):
            if s is None or _value(s) is None or old is None or _value(old) is None:
                return s
            return _wrap(s, jnp.where(_value(old), _value(s), -jnp.inf))

        scores = _map(demote, scores, previous)
    if kind == "unstructured":
        return unstructured_masks(scores, sparsity, allocation=allocation, axes=table)
    if kind == "nm":
        return nm_masks(scores, n, m, axes=table)
    return structured_masks(scores, sparsity, kind=kind, axes=table)


# -- applying and counting ------------------------------------------------------------------------


def apply_masks(params: Any, masks: Any) -> Any:
    """``params`` with masked weights set to exactly zero (``None`` masks keep the leaf).

    Raises:
        ValueError: a mask's shape differs from its parameter's (names the parameter and both shapes).
    """

    def leaf(name, mask, p):
        mv = _value(mask) if mask is not None else None
        if mv is None:
            return p
        w = _value(p)
        if np.shape(mv) != np.shape(w):
            raise ValueError(
                f"{name}: mask shape {tuple(np.shape(mv))} does not match parameter shape {tuple(np.shape(w))}"
            )
        return _wrap(p, jnp.where(mv, w, jnp.zeros((), w.dtype)))

    try:
        return _map(leaf, masks, params)
    except ValueError as e:
        if "mask shape" in str(e):
            raise
        raise ValueError(f"the mask tree does not have the structure of the params: {e}") from e


def mask_counts(masks: Any, *, axes: Any = None) -> dict[str, tuple[jax.Array, int]]:
    """Per pruned leaf: (kept weights per layer — shape ``[layers]`` for scanned stacks, a scalar
    otherwise — and the number of weights per layer). Jit-able. ``axes`` as for
    :func:`compute_masks` (masks without metadata need it to count per layer)."""
    out = {}
    table = resolve_axes(masks, axes)
    for name, mk in _named_leaves(masks):
        if mk is None or _value(mk) is None:
            continue
        x, axes = _value(mk), _axes_of(table, name, mk)
        li = _layer_axis(axes)
        if li is None:
            out[name] = (jnp.sum(x, dtype=jnp.int32), int(x.size))
        else:
            kept = jnp.sum(x, axis=tuple(i for i in range(x.ndim) if i != li), dtype=jnp.int32)
            out[name] = (kept, int(x.size // x.shape[li]))
    return out


def sparsity_summary(masks: Any, prefix: str = "sparsity", *, axes: Any = None) -> dict[str, jax.Array]:
    """Flat metrics: ``{prefix}/{leaf}`` per pruned leaf, ``{prefix}/{leaf}/layer_{i}`` per layer
    of a scanned stack, and ``{prefix}/overall`` over all pruned leaves (float32). Jit-able."""
    out: dict[str, jax.Array] = {}
    kept_all, total_all = jnp.zeros((), jnp.float32), 0
    for name, (kept, per_layer) in mask_counts(masks, axes=axes).items():
        kept = kept.astype(jnp.float32)
        n_layers = kept.size if kept.ndim else 1
        if kept.ndim:
            for i in range(kept.shape[0]):
                out[f"{prefix}/{name}/layer_{i}"] = 1.0 - kept[i] / per_layer
        out[f"{prefix}/{name}"] = 1.0 - jnp.sum(kept) / (per_layer * n_layers)
        kept_all = kept_all + jnp.sum(kept)
        total_all += per_layer * n_layers
    out[f"{prefix}/overall"] = 1.0 - kept_all / max(total_all, 1) if total_all else jnp.zeros((), jnp.float32)
    return out


def summary_table(masks: Any, *, axes: Any = None) -> str:
    """A printable per-layer table: parameter, layer, kept, total, sparsity."""
    rows = [("parameter", "layer", "kept", "total", "sparsity")]
    kept_all = total_all = 0
    for name, (kept, per_layer) in mask_counts(masks, axes=axes).items():
        ks = np.atleast_1d(np.asarray(kept))
        for i, k in enumerate(ks):
            layer = str(i) if np.ndim(kept) else "-"
            rows.append((name, layer, str(int(k)), str(per_layer), f"{1 - int(k) / per_layer:.4f}"))
            kept_all += int(k)
            total_all += per_layer
    if total_all:
        rows.append(("overall", "", str(kept_all), str(total_all), f"{1 - kept_all / total_all:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
