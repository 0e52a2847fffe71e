"""ExCP checkpoint codec in pure JAX: residual, weight-momentum joint shrinking, k-means codes.

One checkpoint of a training state is encoded against the *reconstructed* previous one (Li et al.,
"ExCP: Extreme LLM Checkpoint Compression via Weight-Momentum Joint Shrinking", ICML 2024), so the
quantisation error never accumulates along a chain. Per weight tensor ``W`` with Adam moments
``m`` (``mu``) and ``v`` (``nu``), and per layer of a scanned stack:

1. residual ``dW = W - W_ref`` (``W_ref``: the previous reconstruction; a keyframe has none);
2. weight shrinking: keep ``dW`` where ``|dW| > r = median(|dW|) * min(max_scale, alpha / sqrt(mean(v)))``
   (a keyframe keeps every non-zero weight);
3. joint momentum shrinking: keep ``m`` where ``|m| > beta * mean(|m|)`` *and* ``dW`` was kept;
   ``v`` at exactly the same positions; everything else is zero;
4. non-uniform quantisation of the kept values of ``dW``, ``m`` and ``v`` separately: a 1-D
   k-means codebook of ``2**bits - 1`` centroids plus code 0 for an exact zero, the codes packed
   into bit planes (:mod:`jaxslim.checkpoint.packing`); Orbax's zstd then turns the zero runs into
   few bytes.

The lossless mode XORs the bits of every floating-point leaf with the previous checkpoint's and
splits them into byte planes (sign and exponent bytes, which rarely change, sit together), so a
restore is bit-exact.

Everything runs in one ``jax.jit`` program per state layout. Thresholding, assignment, packing and
reconstruction are elementwise, so arrays keep their shardings; the two statistics that need the
whole tensor are exact: the median by radix select and the k-means codebook from a 65536-bin
histogram (:mod:`jaxslim.checkpoint.kmeans`), both from integer counts that each shard computes
locally and ``shard_map`` sums with one ``psum``. The only floating-point reductions are the means in
the thresholds.

Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> state = {"params": {"w": jnp.asarray(np.random.default_rng(0).normal(size=(64, 128)), jnp.float32)}}
    >>> codec = Codec(CodecConfig(mode="lossless"))
    >>> plan = codec.plan(state)
    >>> enc = codec.encode(plan, jax.tree.leaves(state), None, keyframe=True)
    >>> out = codec.decode(plan, enc.records, None, keyframe=True, bits=codec.bits(True))
    >>> bool((out[0] == state["params"]["w"]).all())
    True
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxslim.checkpoint import kmeans, packing
from jaxslim.sharding import LAYERS

FORMAT = "jaxslim-compressed-checkpoint"
FORMAT_VERSION = 1
MODES = ("excp", "lossless")

RAW, XOR, WEIGHT, MOMENT = "raw", "xor", "weight", "moment"


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """How checkpoints are compressed.

    Attributes:
        mode: ``"excp"`` (lossy: residual, shrinking, k-means codes) or ``"lossless"`` (XOR
            residual and byte planes; bit-exact).
        weight_bits: bits of a weight-residual code (2..8): ``2**bits - 1`` centroids and zero.
        moment_bits: bits of an Adam-moment code (2..8).
        keyframe_bits: bits of a keyframe's weight codes (2..8); keyframes keep every weight.
        keyframe_every: a keyframe every this many saves (then ``keyframe_every - 1`` deltas), so a
            restore applies at most ``keyframe_every - 1`` residuals.
        alpha: ExCP's ``prune_alpha``, the numerator of the second-moment scaling of the threshold.
        beta: ExCP's ``prune_beta``: momentum is kept where ``|m| > beta * mean(|m|)``.
        max_scale: cap of the threshold's scale on the median of ``|dW|`` (2.5 in ExCP).
        min_size: floating-point leaves with fewer elements (biases, norms, scalars) are stored
            unchanged in the lossy mode.
        kmeans_iters: Lloyd iterations of the codebook fit.
    """

    mode: str = "excp"
    weight_bits: int = 4
    moment_bits: int = 4
    keyframe_bits: int = 8
    keyframe_every: int = 5
    alpha: float = 5e-5
    beta: float = 2.0
    max_scale: float = 2.5
    min_size: int = 4096
    kmeans_iters: int = 10

    def __post_init__(self):
        o = "CodecConfig"
        if self.mode not in MODES:
            raise ValueError(f"{o}.mode must be one of {MODES}, got {self.mode!r}")
        for name in ("weight_bits", "moment_bits", "keyframe_bits"):
            b = getattr(self, name)
            if not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8:
                raise ValueError(f"{o}.{name} must be an integer from 2 to 8, got {b!r}")
        for name in ("keyframe_every", "min_size", "kmeans_iters"):
            n = getattr(self, name)
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{o}.{name} must be a positive integer, got {n!r}")
        for name in ("alpha", "beta", "max_scale"):
            x = getattr(self, name)
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not x >= 0 or x == float("inf"):
                raise ValueError(f"{o}.{name} must be a finite number >= 0, got {x!r}")


class LeafPlan(NamedTuple):
    """How one leaf of the state is stored (static; part of the compiled program's key)."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # raw | xor | weight | moment
    grouped: bool  # axis 0 is a scanned stack's layers axis: statistics per layer
    mu: int  # for a weight: index of its first moment (-1: none)
    nu: int  # for a weight: index of its second moment (-1: none)
    sharding: Any  # the leaf's jax sharding, or None for host values


class Encoded(NamedTuple):
    """What :meth:`Codec.encode` returns (device arrays; nothing has been copied to the host)."""

    records: dict  # {leaf index: {field: array}}, the tree that is saved
    recon: dict  # {leaf index: array}: what a restore will return for the non-raw leaves
    stats: dict  # {leaf index: {name: scalar}}
    checksums: dict  # {leaf index: {field: uint32}}


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _is_float(dtype: Any) -> bool:
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _key_name(k: Any) -> Any:
    return getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))


def _layer_axes(state: Any, n: int) -> list[Any]:
    """The logical axes of every leaf (from nnx Variable metadata), or None where unknown."""
    nodes = jax.tree_util.tree_flatten(state, is_leaf=_is_var)[0]
    if len(nodes) != n:
        return [None] * n
    out = []
    for node in nodes:
        axes = node.get_metadata().get("out_sharding") if _is_var(node) else None
        out.append(tuple(axes) if axes else None)
    return out


def leaf_paths(state: Any) -> list[str]:
    """``jax.tree_util.keystr`` of every leaf, in flattening order."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]


def _moment_index(paths: list[tuple]) -> tuple[dict, dict, dict]:
    """Parameters (keyed by their path below ``params``) and the Adam ``mu`` / ``nu`` leaves that
    mirror them anywhere in the optimizer state (optax's ``ScaleByAdamState``, also inside chains,
    ``inject_hyperparams`` and masks). The first match wins."""
    params, mus, nus = {}, {}, {}
    for i, path in enumerate(paths):
        names = [_key_name(k) for k in path]
        if names and names[0] == "params":
            params.setdefault(tuple(names[1:]), i)
            continue
        for j, name in enumerate(names):
            if name in ("mu", "nu"):
                (mus if name == "mu" else nus).setdefault(tuple(names[j + 1 :]), i)
                break
    return params, mus, nus


class Codec:
    """The ExCP / lossless codec for one :class:`CodecConfig`; compiled programs are cached per layout.

    Args:
        cfg: the codec settings.
    """

    def __init__(self, cfg: CodecConfig) -> None:
        self.cfg = cfg

    def bits(self, keyframe: bool) -> dict[str, int]:
        """Bits of weight and moment codes for a keyframe or a delta."""
        w = self.cfg.keyframe_bits if keyframe else self.cfg.weight_bits
        return {"weights": w, "moments": self.cfg.moment_bits}

    # -- plan ---------------------------------------------------------------------------------------

    def plan(self, state: Any) -> tuple[LeafPlan, ...]:
        """How each leaf of ``state`` (arrays or ``ShapeDtypeStruct``) is stored.

        Lossy mode: weights under ``params`` with at least ``min_size`` elements are residual-coded,
        their Adam moments (``mu`` / ``nu`` of the same path) coded jointly with them; every other
        leaf is stored unchanged. Lossless mode: every floating-point leaf is XOR-coded.
        """
        flat = jax.tree_util.tree_flatten_with_path(state)[0]
        paths = [p for p, _ in flat]
        leaves = [x for _, x in flat]
        axes = _layer_axes(state, len(leaves))
        kinds = [RAW] * len(leaves)
        mu_of, nu_of = [-1] * len(leaves), [-1] * len(leaves)

        def dtype_of(x):
            return getattr(x, "dtype", None)

        if self.cfg.mode == "lossless":
            kinds = [XOR if _is_float(dtype_of(x)) else RAW for x in leaves]
        else:
            params, mus, nus = _moment_index(paths)
            for key, i in params.items():
                x = leaves[i]
                if not _is_float(dtype_of(x)) or np.ndim(x) < 1 or int(np.size(x)) < self.cfg.min_size:
                    continue
                kinds[i] = WEIGHT
                for table, out in ((mus, mu_of), (nus, nu_of)):
                    j = table.get(key, -1)
                    if j >= 0 and np.shape(leaves[j]) == np.shape(x) and _is_float(dtype_of(leaves[j])):
                        out[i] = j
                        kinds[j] = MOMENT
                if (mu_of[i] < 0) != (nu_of[i] < 0):  # both moments or none
                    for j in (mu_of[i], nu_of[i]):
                        if j >= 0:
                            kinds[j] = RAW
                    mu_of[i] = nu_of[i] = -1
        plans = []
        for i, (path, x) in enumerate(flat):
            a = axes[i]
            grouped = kinds[i] in (WEIGHT, MOMENT) and np.ndim(x) >= 2 and bool(a) and a[0] == LAYERS
            dtype = dtype_of(x)
            plans.append(
                LeafPlan(
                    jax.tree_util.keystr(path),
                    tuple(int(d) for d in np.shape(x)),
                    str(np.dtype(dtype)) if dtype is not None and not _is_key(dtype) else str(dtype),
                    kinds[i],
                    grouped,
                    mu_of[i],
                    nu_of[i],
                    getattr(x, "sharding", None)
                    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct))
                    else None,
                )
            )
        # a moment's grouping follows its weight's (they share codebook rows)
        for p in list(plans):
            for j in (p.mu, p.nu):
                if j >= 0:
                    plans[j] = plans[j]._replace(grouped=p.grouped)
        return tuple(plans)

    # -- encode / decode ----------------------------------------------------------------------------

    def encode(
        self, plan: tuple[LeafPlan, ...], leaves: list[Any], ref: dict | None, *, keyframe: bool
    ) -> Encoded:
        """Encodes the flattened state ``leaves`` (in ``plan``'s order) against ``ref``.

        Args:
            plan: from :meth:`plan`.
            leaves: ``jax.tree.leaves(state)``.
            ref: ``Encoded.recon`` of the previous checkpoint (ignored for a keyframe).
            keyframe: encode without a reference.

        Returns:
            An :class:`Encoded`; the raw leaves appear in ``records`` as they are.
        """
        if not keyframe and ref is None:
            raise ValueError("a delta needs the previous checkpoint's reconstruction (ref)")
        arrays = {i: x for i, (p, x) in enumerate(zip(plan, leaves, strict=True)) if isinstance(x, jax.Array)}
        need = {i for i, p in enumerate(plan) if p.kind in (XOR, WEIGHT)}
        refs = {} if keyframe else {i: ref[i] for i in need}
        records, recon, stats, sums = _encode_fn(plan, self.cfg, keyframe)(arrays, refs)
        for i, (p, x) in enumerate(zip(plan, leaves, strict=True)):
            if p.kind == RAW:
                records[i] = {"value": x}
        return Encoded(records, recon, stats, sums)

    def decode(
        self,
        plan: tuple[LeafPlan, ...],
        records: dict,
        ref: dict | None,
        *,
        keyframe: bool,
        bits: dict[str, int],
    ) -> tuple[dict, dict]:
        """Reconstructs the non-raw leaves from ``records``.

        Returns:
            ``(recon, checksums)``: ``{leaf index: array}`` and the records' checksums (uint32).
        """
        need = {i for i, p in enumerate(plan) if p.kind in (XOR, WEIGHT)}
        if not keyframe and ref is None:
            raise ValueError("a delta needs the previous checkpoint's reconstruction (ref)")
        refs = {} if keyframe else {i: ref[i] for i in need}
        arrays = {i: r for i, r in records.items() if all(isinstance(a, jax.Array) for a in r.values())}
        return _decode_fn(plan, bits["weights"], bits["moments"], keyframe)(arrays, refs)


def _is_key(dtype: Any) -> bool:
    try:
        return jnp.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


# -- sharded statistics ---------------------------------------------------------------------------


def _spec(p: LeafPlan) -> tuple | None:
    """The partition spec of the leaf (padded to its rank), or None for a single-device leaf."""
    s = p.sharding
    if not isinstance(s, NamedSharding) or s.mesh.size == 1:
        return None
    spec = tuple(s.spec) + (None,) * (len(p.shape) - len(s.spec))
    return spec


def _axes_of(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _histogram_fn(p: LeafPlan):
    """Histogram over the leaf's internal ``(groups, ...)`` view: per shard, then one psum."""
    spec = _spec(p)
    if spec is None:
        return kmeans.local_histogram
    inner = spec if p.grouped else (None, *spec)
    summed = tuple(a for e in inner[1:] for a in _axes_of(e))
    mesh = p.sharding.mesh

    def local(bins, weight):
        h = kmeans.local_histogram(bins, weight)
        return jax.lax.psum(h, summed) if summed else h

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(*inner), PartitionSpec(*inner)),
        out_specs=PartitionSpec(inner[0], None),
    )


def packed_sharding(p: LeafPlan) -> Any:
    """Sharding of a leaf's packed planes ``(bits, *shape[:-1], ceil(last / 8))``: the leaf's
    own on the leading axes, its last axis only when every shard holds a multiple of 8."""
    spec = _spec(p)
    if spec is None:
        return p.sharding
    last = spec[-1]
    n = int(np.prod([p.sharding.mesh.shape[a] for a in _axes_of(last)])) if last is not None else 1
    if last is not None and (p.shape[-1] % n or (p.shape[-1] // n) % 8):
        last = None
    return NamedSharding(p.sharding.mesh, PartitionSpec(None, *spec[:-1], last))


def planes_sharding(p: LeafPlan) -> Any:
    """Sharding of a lossless leaf's byte planes ``(itemsize, *shape)``."""
    spec = _spec(p)
    if spec is None:
        return p.sharding
    return NamedSharding(p.sharding.mesh, PartitionSpec(None, *spec))


def replicated(p: LeafPlan) -> Any:
    """A replicated sharding on the leaf's devices (codebooks, thresholds)."""
    s = p.sharding
    if isinstance(s, NamedSharding):
        return NamedSharding(s.mesh, PartitionSpec())
    return s


def _constrain(x: jax.Array, sharding: Any) -> jax.Array:
    return x if not isinstance(sharding, NamedSharding) else jax.lax.with_sharding_constraint(x, sharding)


# -- the programs ---------------------------------------------------------------------------------


def _inner(x: jax.Array, p: LeafPlan) -> jax.Array:
    """The ``(groups, ...)`` view of a leaf in float32."""
    x = x.astype(jnp.float32)
    return x if p.grouped else x[None]


def _outer(x: jax.Array, p: LeafPlan) -> jax.Array:
    return x if p.grouped else x[0]


def _per_group(v: jax.Array, ndim: int) -> jax.Array:
    return v.reshape(v.shape + (1,) * (ndim - 1))


def _group_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def _quantise(x, keep, bits, p, hist, iters):
    """Codes (uint8, 0 = zero) and the ``(groups, 2**bits)`` codebook of ``x`` where ``keep``."""
    nz = keep & (x != 0)
    h = hist((kmeans.order_key(x) >> 16).astype(jnp.int32), nz)
    cent = kmeans.fit_codebook(h, (1 << bits) - 1, iters)
    codes = jnp.where(nz, kmeans.nearest(x, cent) + 1, 0).astype(jnp.uint8)
    codebook = jnp.concatenate([jnp.zeros((cent.shape[0], 1), jnp.float32), cent], axis=1)
    return codes, codebook


def _dequantise(codes: jax.Array, codebook: jax.Array) -> jax.Array:
    g = jax.lax.broadcasted_iota(jnp.int32, codes.shape, 0)
    return jnp.take(codebook.reshape(-1), g * codebook.shape[1] + codes.astype(jnp.int32))


def _pack(codes: jax.Array, bits: int, p: LeafPlan) -> jax.Array:
    return _constrain(packing.pack_codes(_outer(codes, p), bits), packed_sharding(p))


def _unpack(planes: jax.Array, bits: int, p: LeafPlan) -> jax.Array:
    codes = packing.unpack_codes(planes, bits, p.shape[-1])
    return codes if p.grouped else codes[None]


def _xor_ref(p: LeafPlan, ref: jax.Array | None) -> Any:
    return 0 if ref is None else packing.as_bits(ref.astype(p.dtype))


@functools.lru_cache(maxsize=64)
def _encode_fn(plan: tuple[LeafPlan, ...], cfg: CodecConfig, keyframe: bool):
    def encode(arrays: dict, refs: dict):
        records, recon, stats, sums = {}, {}, {}, {}
        for i, p in enumerate(plan):
            if p.kind == RAW:
                if i in arrays and not _is_key(arrays[i].dtype):
                    sums[i] = {"value": packing.checksum(arrays[i])}
            elif p.kind == XOR:
                x = arrays[i]
                u = packing.as_bits(x) ^ _xor_ref(p, refs.get(i))
                planes = _constrain(packing.byte_planes(u), planes_sharding(p))
                records[i] = {"planes": planes}
                recon[i] = packing.from_bits(
                    packing.from_byte_planes(planes, u.dtype) ^ _xor_ref(p, refs.get(i)), x.dtype
                )
                sums[i] = {"planes": packing.checksum(planes)}
            elif p.kind == WEIGHT:
                _encode_weight(i, p, plan, cfg, keyframe, arrays, refs, records, recon, stats)
                for j in (i, p.mu, p.nu):
                    if j >= 0:
                        sums[j] = {k: packing.checksum(v) for k, v in records[j].items()}
        return records, recon, stats, sums

    return jax.jit(encode)


def _encode_weight(i, p, plan, cfg, keyframe, arrays, refs, records, recon, stats):
    hist = _histogram_fn(p)
    w = _inner(arrays[i], p)
    ref = None if keyframe else _inner(refs[i], p)
    d = w if ref is None else w - ref
    nd, groups = d.ndim, d.shape[0]
    has_moments = p.mu >= 0
    if has_moments:
        m, v = _inner(arrays[p.mu], plan[p.mu]), _inner(arrays[p.nu], plan[p.nu])
    if keyframe:
        r = jnp.zeros((groups,), jnp.float32)
    else:
        n = int(np.prod(d.shape[1:]))
        k = jnp.full((groups,), (n - 1) // 2, jnp.int32)
        med = kmeans.key_value(kmeans.select_kth(kmeans.order_key(jnp.abs(d)), d == d, k, hist))
        if has_moments:
            scale = jnp.minimum(cfg.max_scale, cfg.alpha / jnp.sqrt(_group_mean(v)))
        else:
            scale = jnp.full((groups,), cfg.max_scale, jnp.float32)
        r = med * scale
    keep = jnp.abs(d) > _per_group(r, nd)
    wbits = cfg.keyframe_bits if keyframe else cfg.weight_bits
    codes, book = _quantise(d, keep, wbits, p, hist, cfg.kmeans_iters)
    dq = _dequantise(codes, book)
    w_hat = dq if ref is None else ref + dq
    records[i] = {"planes": _pack(codes, wbits, p), "codebook": book, "threshold": r}
    recon[i] = _outer(w_hat, p).astype(p.dtype)
    err = jnp.abs(w_hat - w)
    s = {
        "kept": jnp.mean(keep.astype(jnp.float32)),
        "max_error": jnp.max(err),
        "rel_rms_error": jnp.sqrt(jnp.mean(err**2) / jnp.maximum(jnp.mean(w**2), 1e-30)),
        "threshold": jnp.mean(r),
    }
    if has_moments:
        tm = cfg.beta * _group_mean(jnp.abs(m))
        keep_m = (jnp.abs(m) > _per_group(tm, nd)) & keep
        mb = cfg.moment_bits
        for j, x, extra in ((p.mu, m, {"threshold": tm}), (p.nu, v, {})):
            c, b = _quantise(x, keep_m, mb, p, hist, cfg.kmeans_iters)
            records[j] = {"planes": _pack(c, mb, p), "codebook": b, **extra}
            recon[j] = _outer(_dequantise(c, b), p).astype(plan[j].dtype)
        s["moments_kept"] = jnp.mean(keep_m.astype(jnp.float32))
    stats[i] = s


@functools.lru_cache(maxsize=64)
def _decode_fn(plan: tuple[LeafPlan, ...], weight_bits: int, moment_bits: int, keyframe: bool):
    def decode(arrays: dict, refs: dict):
        recon, sums = {}, {}
        for i, p in enumerate(plan):
            if i in arrays:
                sums[i] = {k: packing.checksum(v) for k, v in arrays[i].items() if not _is_key(v.dtype)}
            if p.kind == XOR:
                planes = arrays[i]["planes"]
                u = packing.from_byte_planes(planes, packing.as_bits(jnp.zeros((), p.dtype)).dtype)
                recon[i] = packing.from_bits(u ^ _xor_ref(p, refs.get(i)), p.dtype)
            elif p.kind == WEIGHT:
                r = arrays[i]
                dq = _dequantise(_unpack(r["planes"], weight_bits, p), r["codebook"])
                w = dq if keyframe else _inner(refs[i], p) + dq
                recon[i] = _outer(w, p).astype(p.dtype)
            elif p.kind == MOMENT:
                r = arrays[i]
                recon[i] = _outer(_dequantise(_unpack(r["planes"], moment_bits, p), r["codebook"]), p).astype(
                    p.dtype
                )
        return recon, sums

    return jax.jit(decode)
