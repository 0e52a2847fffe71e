"""Exact order statistics and 1-D k-means codebooks from integer histograms, on device.

Both statistics work on 16-bit bins of an order-preserving integer key of float32 values, so the
heavy part is one scatter-add per pass over the data, the counts are exact integers (the same on one
device or summed over shards, in any order) and the rest works on a ``(groups, 65536)`` table:

- :func:`select_kth` finds the exact k-th smallest value with two histogram passes (radix select:
  the high 16 bits of the key, then the low 16 bits within the chosen bin);
- :func:`fit_codebook` runs weighted Lloyd iterations on the histogram (bin midpoints weighted by
  their counts), initialised at the companded quantiles, and returns sorted centroids;
- :func:`nearest` assigns every element to its nearest centroid by binary search (elementwise).

Every function takes a ``groups`` leading axis (one row per layer of a scanned stack, or a single
row) and a ``hist`` callable that turns per-element bin indices and weights into the ``(groups,
65536)`` count table; :func:`local_histogram` is the single-device one, and
:func:`jaxslim.checkpoint.codec` wraps it in ``shard_map`` with a ``psum`` for sharded arrays.

Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[3.0, -1.0, 2.0, 5.0, 4.0]])
    >>> float(key_value(select_kth(order_key(x), x == x, jnp.array([2]), local_histogram))[0])
    3.0
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

BINS = 1 << 16
_SIGN = 0x80000000


def _u32(v: int) -> jax.Array:
    return jnp.asarray(v, jnp.uint32)


Histogram = Callable[[jax.Array, jax.Array], jax.Array]


def order_key(x: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 values (negative values flipped, sign bit set on the rest)."""
    u = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(u >= _u32(_SIGN), ~u, u | _u32(_SIGN))


def key_value(key: jax.Array) -> jax.Array:
    """The float32 values of :func:`order_key` keys (its inverse)."""
    u = jnp.where(key >= _u32(_SIGN), key & _u32(0x7FFFFFFF), ~key)
    return lax.bitcast_convert_type(u, jnp.float32)


def _group_index(shape: tuple[int, ...]) -> jax.Array:
    return lax.broadcasted_iota(jnp.int32, shape, 0)


def local_histogram(bins: jax.Array, weight: jax.Array) -> jax.Array:
    """``(groups, BINS)`` int32 counts of ``bins`` (int32, leading axis = groups), weighted by ``weight``."""
    g = _group_index(bins.shape)
    table = jnp.zeros((bins.shape[0], BINS), jnp.int32)
    return table.at[g, bins].add(weight.astype(jnp.int32), mode="drop")


def _first_above(cum: jax.Array, k: jax.Array) -> jax.Array:
    """Per row, the first index where the cumulative count exceeds ``k``."""
    return jnp.argmax(cum > k[:, None], axis=1).astype(jnp.int32)


def _expand(v: jax.Array, ndim: int) -> jax.Array:
    return v.reshape(v.shape + (1,) * (ndim - 1))


def select_kth(key: jax.Array, mask: jax.Array, k: jax.Array, hist: Histogram) -> jax.Array:
    """The key of the ``k``-th smallest (0-based, per group) element among those where ``mask`` holds.

    Exact: two histogram passes over 16-bit halves of the key. ``k`` must be below the group's count.

    Args:
        key: uint32 keys from :func:`order_key`, groups on axis 0.
        mask: bool, same shape; elements outside it are ignored.
        k: int32 ``(groups,)`` ranks.
        hist: the histogram function (single-device or sharded).

    Returns:
        uint32 ``(groups,)`` keys.
    """
    hi = (key >> 16).astype(jnp.int32)
    lo = (key & _u32(0xFFFF)).astype(jnp.int32)
    h1 = hist(hi, mask)
    c1 = jnp.cumsum(h1, axis=1)
    b1 = _first_above(c1, k)
    before = jnp.take_along_axis(c1 - h1, b1[:, None], axis=1)[:, 0]
    inside = mask & (hi == _expand(b1, hi.ndim))
    h2 = hist(lo, inside)
    b2 = _first_above(jnp.cumsum(h2, axis=1), k - before)
    return (b1.astype(jnp.uint32) << 16) | b2.astype(jnp.uint32)


def _bin_values() -> tuple[jax.Array, jax.Array]:
    """The value at the middle of every 16-bit bin, and whether it is finite."""
    keys = (jnp.arange(BINS, dtype=jnp.uint32) << 16) | _u32(0x8000)
    v = key_value(keys)
    finite = jnp.isfinite(v)
    return jnp.where(finite, v, 0.0), finite


def _bin_edges() -> tuple[jax.Array, jax.Array]:
    """The first and the last value of every 16-bit bin."""
    keys = jnp.arange(BINS, dtype=jnp.uint32) << 16
    return key_value(keys), key_value(keys | _u32(0xFFFF))


def fit_codebook(counts: jax.Array, n_centroids: int, iters: int, *, log: bool = False) -> jax.Array:
    """Sorted centroids of a weighted 1-D k-means over histogram bins.

    Initialised at the companded quantiles: the ``(i + 1/2) / n`` quantiles of the density to the
    power 1/3 (``counts**(1/3) * width**(2/3)`` per bin), where the high-resolution theory puts the
    levels of a minimum-error quantiser (Panter and Dite), so the tails get their share of levels
    from the start; plain quantiles leave the tails to Lloyd iterations, which move outwards only
    a little per pass. Then ``iters`` Lloyd iterations on the bin midpoints weighted by their
    counts. A centroid that loses all its mass keeps its previous value. A group with no elements
    gets all-zero centroids.

    With ``log``, the fit runs on ``log2`` of the positive values (the others are ignored) and the
    centroids come back as ``2**c``: the error it minimises is relative, what matters for a scale
    such as Adam's second moment, which updates divide by ``sqrt(v)``. Assign to such a codebook
    with ``nearest(..., log=True)``.

    Args:
        counts: int32 ``(groups, BINS)`` histogram of :func:`order_key` high halves.
        n_centroids: number of centroids (``2**bits - 1``).
        iters: Lloyd iterations.
        log: fit in the log domain (positive values only).

    Returns:
        float32 ``(groups, n_centroids)``, ascending per row.
    """
    reps, finite = _bin_values()
    lo, hi = _bin_edges()
    if log:
        finite = finite & (lo > 0)
        reps, lo, hi = (jnp.log2(jnp.where(finite, x, 1.0)) for x in (reps, lo, hi))
    width = jnp.where(finite & jnp.isfinite(hi - lo), jnp.abs(hi - lo), 0.0)
    counts = jnp.where(finite[None], counts, 0)
    total = counts.sum(axis=1)
    w = counts.astype(jnp.float32)
    dens = jnp.where(counts > 0, jnp.cbrt(w) * jnp.cbrt(width)[None] ** 2, 0.0)
    cum = jnp.cumsum(dens, axis=1)
    q = (jnp.arange(n_centroids, dtype=jnp.float32)[None] + 0.5) / n_centroids * cum[:, -1:]
    first = jax.vmap(lambda c, r: jnp.searchsorted(c, r, side="right"))(cum, q)
    cent = reps[jnp.clip(first, 0, BINS - 1)]
    wx = w * reps[None]
    groups = counts.shape[0]
    g = _group_index((groups, BINS))

    def lloyd(_, c):
        c = jnp.sort(c, axis=1)
        mid = (c[:, 1:] + c[:, :-1]) * 0.5
        a = jax.vmap(lambda m: jnp.searchsorted(m, reps, side="left"))(mid)
        sums = jnp.zeros((groups, n_centroids), jnp.float32).at[g, a].add(wx)
        mass = jnp.zeros((groups, n_centroids), jnp.float32).at[g, a].add(w)
        return jnp.where(mass > 0, sums / jnp.where(mass > 0, mass, 1.0), c)

    cent = jnp.sort(lax.fori_loop(0, iters, lloyd, cent), axis=1)
    return jnp.where(total[:, None] > 0, jnp.exp2(cent) if log else cent, 0.0)


def nearest(x: jax.Array, centroids: jax.Array, *, log: bool = False) -> jax.Array:
    """Index of the nearest centroid for every element (ties go to the smaller one); elementwise.

    Args:
        x: float32, groups on axis 0.
        centroids: float32 ``(groups, n)``, ascending.
        log: nearest in ``log2`` (a codebook from ``fit_codebook(..., log=True)``); the index of
            an element that is not positive is meaningless.

    Returns:
        int32 of ``x``'s shape, in ``[0, n)``.
    """
    if log:
        x, centroids = jnp.log2(x), jnp.log2(centroids)
    n = centroids.shape[1]
    if n == 1:
        return jnp.zeros(x.shape, jnp.int32)
    mid = ((centroids[:, 1:] + centroids[:, :-1]) * 0.5).reshape(-1)
    base = _group_index(x.shape) * (n - 1)
    pos = jnp.zeros(x.shape, jnp.int32)
    step = 1 << (n - 1).bit_length()
    # branch-free binary search: pos ends as the number of midpoints strictly below x
    while step:
        cand = pos + step
        ok = (cand <= n - 1) & (jnp.take(mid, base + jnp.minimum(cand, n - 1) - 1) < x)
        pos = jnp.where(ok, cand, pos)
        step >>= 1
    return pos
