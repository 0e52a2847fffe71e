"""The ExCP codec: exact statistics, code alphabet, the error bound, lossless exactness, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.checkpoint import Codec, CodecConfig, kmeans, packing
from jaxslim.checkpoint.codec import MOMENT, WEIGHT
from jaxslim.config import CheckpointConfig, MeshConfig, ModelConfig, OptimConfig
from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer
from jaxslim.sharding import make_mesh
from jaxslim.training import create_train_state, lm_objective, make_train_step

TINY = dict(vocab_size=96, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=16)


def _setup(mesh_cfg: MeshConfig):
    n = int(np.prod([s for s in (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, mesh_cfg.expert)]))
    mesh = make_mesh(mesh_cfg, jax.devices()[:n])
    tx = build_optimizer(OptimConfig(lr=3e-3, warmup_steps=1), 10)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
        return create_train_state(
            lambda: Transformer(ModelConfig.gpt2(**TINY), rngs=nnx.Rngs(0)), tx, mesh, mesh_cfg.rules
        )


@pytest.fixture(scope="module")
def states():
    """Four consecutive real AdamW training states of a tiny GPT (one device)."""
    state, setup = _setup(MeshConfig(data=1))
    step = make_train_step(setup, lm_objective)
    rng = np.random.default_rng(0)
    out = []
    with jax.set_mesh(setup.mesh):
        for _ in range(4):
            tokens = jnp.asarray(rng.integers(0, TINY["vocab_size"], (4, 17)), jnp.int32)
            state, _ = step(state, {"tokens": tokens})
            out.append(jax.tree.map(jnp.copy, state))
    return out


def _leaves(state):
    return jax.tree.leaves(state)


# -- statistics -----------------------------------------------------------------------------------


def test_select_kth_is_the_exact_order_statistic():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 50, 41)).astype(np.float32)
    x[1, :5] = 0.0  # ties and signed zeros
    x[2, 0, 0] = -0.0
    mask = rng.random(x.shape) > 0.3
    ks = np.array([0, 517, int(mask[2].sum()) - 1], np.int32)
    key = kmeans.select_kth(
        kmeans.order_key(jnp.asarray(x)), jnp.asarray(mask), jnp.asarray(ks), kmeans.local_histogram
    )
    got = np.asarray(kmeans.key_value(key))
    for g in range(3):
        want = np.sort(x[g][mask[g]])[ks[g]]
        assert got[g] == want


def test_kmeans_centroids_beat_uniform_levels_and_assignment_is_nearest():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.laplace(size=(1, 20000)).astype(np.float32))
    h = kmeans.local_histogram((kmeans.order_key(x) >> 16).astype(jnp.int32), jnp.ones(x.shape, bool))
    cent = kmeans.fit_codebook(h, 15, 10)
    assert bool(jnp.all(jnp.diff(cent, axis=1) >= 0))
    idx = np.asarray(kmeans.nearest(x, cent))
    c, xs = np.asarray(cent[0]), np.asarray(x)
    brute = np.argmin(np.abs(xs[..., None] - c), axis=-1)
    np.testing.assert_array_equal(np.abs(c[idx] - xs), np.abs(c[brute] - xs))
    # Lloyd iterations only lower the distortion of their quantile start, and beat uniform levels
    err = lambda c: float(np.mean((c[np.asarray(kmeans.nearest(x, jnp.asarray(c)[None]))[0]] - xs[0]) ** 2))  # noqa: E731
    start = np.quantile(xs[0], (np.arange(15) + 0.5) / 15).astype(np.float32)
    uniform = np.linspace(xs.min(), xs.max(), 15, dtype=np.float32)
    assert err(c) < err(start) and err(c) < err(uniform)


def _codebook_rms(x: np.ndarray, n: int, iters: int) -> tuple[float, np.ndarray]:
    xj = jnp.asarray(x[None])
    h = kmeans.local_histogram((kmeans.order_key(xj) >> 16).astype(jnp.int32), jnp.ones(xj.shape, bool))
    cent = kmeans.fit_codebook(h, n, iters)
    q = np.asarray(cent[0])[np.asarray(kmeans.nearest(xj, cent))[0]]
    return float(np.sqrt(np.mean((q - x) ** 2))), np.asarray(cent[0])


def test_codebook_of_a_group_of_twelve_million_values_spans_both_signs():
    # the quantile ranks of the start once overflowed int32 above 2**31 / 510 elements (8 bits)
    x = np.random.default_rng(3).standard_normal(12_000_000).astype(np.float32)
    rms, cent = _codebook_rms(x, 255, 10)
    assert cent[0] < -2.5 and cent[-1] > 2.5 and len(np.unique(cent)) == 255
    # the minimum-error 8-bit quantiser of a unit Gaussian has an RMS error of about 0.0064
    assert rms < 0.0075


def test_codebook_of_heavy_tails_needs_no_more_lloyd_iterations():
    # Student-t with 3 degrees of freedom: rare values 50x the typical one, as in trained weights
    x = np.random.default_rng(4).standard_t(3, 400_000).astype(np.float32)
    for n in (3, 255):
        start, _ = _codebook_rms(x, n, 0)
        ten, _ = _codebook_rms(x, n, 10)
        converged, _ = _codebook_rms(x, n, 200)
        assert ten <= start and ten <= 1.1 * converged, (n, start, ten, converged)


def test_log_domain_codebook_has_a_bounded_relative_error():
    # Adam's second moments span many octaves; a linear fit spends its levels on the largest
    v = np.exp2(np.random.default_rng(5).uniform(-40, -10, 100_000)).astype(np.float32)
    vj = jnp.asarray(v[None])
    h = kmeans.local_histogram((kmeans.order_key(vj) >> 16).astype(jnp.int32), jnp.ones(vj.shape, bool))
    errors = {}
    for log in (False, True):
        cent = kmeans.fit_codebook(h, 15, 10, log=log)
        idx = kmeans.nearest(vj, cent, log=log)
        q = np.asarray(cent[0])[np.asarray(idx)[0]]
        errors[log] = np.abs(np.log2(np.maximum(q, 1e-45) / v))
    # 15 levels over 30 octaves: within one octave of every value (exactly 1 for uniform levels)
    assert errors[True].max() < 1.1
    assert np.sqrt(np.mean(errors[True] ** 2)) < 0.2 * np.sqrt(np.mean(errors[False] ** 2))


def test_packing_round_trips_and_checksum_sees_one_bit():
    rng = np.random.default_rng(2)
    for bits in (2, 3, 5, 8):
        codes = jnp.asarray(rng.integers(0, 1 << bits, (3, 7, 13)), jnp.uint8)
        packed = packing.pack_codes(codes, bits)
        assert packed.shape == (bits, 3, 7, 2) and packed.dtype == jnp.uint8
        np.testing.assert_array_equal(packing.unpack_codes(packed, bits, 13), codes)
    x = jnp.asarray(rng.standard_normal((4, 9)), jnp.float32)
    u = packing.as_bits(x)
    np.testing.assert_array_equal(packing.from_byte_planes(packing.byte_planes(u), u.dtype), u)
    flipped = packing.from_bits(u.at[2, 3].set(u[2, 3] ^ jnp.uint32(1 << 7)), jnp.float32)
    assert int(packing.checksum(flipped)) != int(packing.checksum(x))
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    assert int(packing.checksum(swapped)) != int(packing.checksum(x))


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True])
def test_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(ValueError, match=r"CodecConfig.weight_bits must be an integer in \[2, 8\], got"):
        CodecConfig(weight_bits=bits)
    with pytest.raises(ValueError, match=r"CodecConfig.moment_bits must be an integer in \[2, 8\]"):
        CheckpointConfig(codec=CodecConfig(moment_bits=bits))
    with pytest.raises(
        ValueError, match=r"CodecConfig.mode must be one of \('excp', 'lossless'\), got 'zip'"
    ):
        CheckpointConfig(codec=CodecConfig(mode="zip"))
    with pytest.raises(ValueError, match=r"CheckpointConfig.codec must be a CodecConfig or None, got 'excp'"):
        CheckpointConfig(codec="excp")


# -- the codec on real states ---------------------------------------------------------------------


def test_plan_pairs_weights_with_their_adam_moments(states):
    codec = Codec(CodecConfig())
    plan = codec.plan(states[0])
    weights = [p for p in plan if p.kind == WEIGHT]
    assert len(weights) >= 6 and all(p.mu >= 0 and p.nu >= 0 for p in weights)
    for p in weights:
        assert plan[p.mu].kind == plan[p.nu].kind == MOMENT
        assert ".mu[" in plan[p.mu].path and ".nu[" in plan[p.nu].path
        assert plan[p.mu].path.split(".mu")[1] == p.path.split(".params")[1]
        assert np.prod(p.shape) >= codec.cfg.min_size
    stacked = [p for p in weights if "stack" in p.path]
    assert stacked and all(p.grouped for p in stacked)  # per-layer statistics for the scanned stack
    assert not any(p.grouped for p in weights if "embed" in p.path)


def test_lossless_is_bit_exact(states):
    codec = Codec(CodecConfig(mode="lossless"))
    plan = codec.plan(states[0])
    ref = None
    for i, state in enumerate(states):
        enc = codec.encode(plan, _leaves(state), ref, keyframe=i == 0)
        recon, _ = codec.decode(plan, enc.records, ref, keyframe=i == 0, bits=codec.bits(i == 0))
        for j, x in enumerate(_leaves(state)):
            got = recon[j] if j in recon else enc.records[j]["value"]
            assert np.asarray(got).tobytes() == np.asarray(x).tobytes(), plan[j].path
        ref = recon


@pytest.mark.parametrize("bits", [2, 4])
def test_lossy_error_is_within_the_threshold_and_codebook_bound(states, bits):
    cfg = CodecConfig(
        weight_bits=bits, moment_bits=bits, residual_gain=False, momentum_gain=False, outlier_fraction=1e-4
    )
    codec = Codec(cfg)
    plan = codec.plan(states[0])
    key = codec.encode(plan, _leaves(states[0]), None, keyframe=True)
    enc = codec.encode(plan, _leaves(states[1]), key.recon, keyframe=False)
    leaves = _leaves(states[1])
    checked = 0
    for i, p in enumerate(plan):
        if p.kind != WEIGHT:
            continue
        rec = enc.records[i]
        book = np.asarray(rec["codebook"])  # (groups, 2**bits), column 0 = 0
        r = np.asarray(rec["threshold"])
        codes = np.asarray(packing.unpack_codes(rec["planes"], bits, p.shape[-1]))
        w = np.asarray(leaves[i], np.float32)
        ref = np.asarray(key.recon[i], np.float32)
        w_hat = np.asarray(enc.recon[i], np.float32)
        if not p.grouped:
            codes, w, ref, w_hat = codes[None], w[None], ref[None], w_hat[None]
        # the code alphabet: 2**bits values, zero only as code 0
        assert codes.max() < 2**bits and book.shape[1] == 2**bits and np.all(book[:, 0] == 0)
        index, value = np.asarray(rec["outlier_index"]), np.asarray(rec["outlier_value"])
        k = index.shape[1]
        assert k == max(1, int(np.ceil(1e-4 * w[0].size)))
        for g in range(codes.shape[0]):
            d = w[g] - ref[g]
            # the exact outliers: the largest residuals, at most k, listed in row-major order
            listed = index[g][index[g][:, 0] < d.shape[0]]
            exact = np.zeros(d.shape, bool)
            exact[tuple(listed.T)] = True
            assert 1 <= exact.sum() <= k and np.abs(d[exact]).min() >= np.abs(d[~exact]).max(), p.path
            flat = np.ravel_multi_index(tuple(listed.T), d.shape)
            assert np.all(np.diff(flat) > 0)
            np.testing.assert_array_equal(value[g][: len(listed)], w[g][exact])
            np.testing.assert_array_equal(w_hat[g][exact], w[g][exact])
            keep = (np.abs(d) > r[g]) & ~exact
            assert np.array_equal(codes[g] != 0, keep & (d != 0)), p.path  # kept exactly above r
            dq = book[g][codes[g]]
            err = np.abs(dq - d)
            # dropped: the error is the residual itself, at most r; kept: distance to the nearest centroid
            assert np.all(err[~keep & ~exact] <= r[g])
            nearest = np.min(np.abs(d[keep][:, None] - book[g][None, 1:]), axis=1)
            np.testing.assert_array_equal(err[keep], nearest)
            cents = np.sort(book[g, 1:])
            kept_vals = d[keep]
            gap = max(  # a group may keep nothing (every residual within the threshold)
                np.max(np.diff(cents)) / 2,
                cents[0] - kept_vals.min(initial=cents[0]),
                kept_vals.max(initial=cents[-1]) - cents[-1],
            )
            bound = max(float(r[g]), float(gap))
            # plus one rounding of the residual and one of the reconstruction
            ulp = np.spacing(np.maximum(np.abs(w[g]), np.abs(ref[g]))).max()
            assert np.max(np.abs(w_hat[g] - w[g])) <= bound + 2 * ulp, p.path
        # joint momentum shrinking: m kept only where |m| > beta * mean|m| and the residual was kept
        m = np.asarray(leaves[p.mu], np.float32)
        m_hat = np.asarray(enc.recon[p.mu], np.float32)
        v_hat = np.asarray(enc.recon[p.nu], np.float32)
        tm = np.asarray(enc.records[p.mu]["threshold"])
        d_all = np.asarray(leaves[i], np.float32) - np.asarray(key.recon[i], np.float32)
        if not p.grouped:
            m, m_hat, v_hat, d_all = m[None], m_hat[None], v_hat[None], d_all[None]
        v = np.asarray(leaves[p.nu], np.float32)
        if not p.grouped:
            v = v[None]
        for g in range(m.shape[0]):
            allowed = (np.abs(m[g]) > tm[g]) & (np.abs(d_all[g]) > r[g])
            assert not np.any(m_hat[g][~allowed])
            # v where it was dropped: the (positive) fill, never zero where v was not
            assert np.all(v_hat[g][~allowed & (v[g] > 0)] > 0)
            assert len(np.unique(m_hat[g])) <= 2**bits
            assert len(np.unique(v_hat[g][allowed])) <= 2**bits
            # kept v: the nearest centroid in log2 (its relative error is what Adam's update sees)
            kept_v = allowed & (v[g] > 0)
            vbook = np.asarray(enc.records[p.nu]["codebook"])[g, 1:]
            if kept_v.any():
                assert np.all(vbook > 0)
                log_err = np.abs(np.log2(v_hat[g][kept_v]) - np.log2(v[g][kept_v]))
                best = np.min(np.abs(np.log2(v[g][kept_v])[:, None] - np.log2(vbook)[None]), axis=1)
                np.testing.assert_allclose(log_err, best, atol=1e-5)
        # v's planes store its level index relative to m's mask (code - 1 there, 0 elsewhere)
        m_codes = np.asarray(packing.unpack_codes(enc.records[p.mu]["planes"], bits, p.shape[-1]))
        v_stored = np.asarray(packing.unpack_codes(enc.records[p.nu]["planes"], bits, p.shape[-1]))
        if not p.grouped:
            m_codes, v_stored = m_codes[None], v_stored[None]
        assert not np.any(v_stored[m_codes == 0])
        assert np.all(v_stored < 2**bits - 1)
        vbooks = np.asarray(enc.records[p.nu]["codebook"])
        for g in range(m.shape[0]):
            on = m_codes[g] != 0
            np.testing.assert_array_equal(v_hat[g][on], vbooks[g][v_stored[g][on] + 1])
        checked += 1
    assert checked >= 6
    recon, _ = codec.decode(plan, enc.records, key.recon, keyframe=False, bits=codec.bits(False))
    for j in recon:
        assert np.asarray(recon[j]).tobytes() == np.asarray(enc.recon[j]).tobytes(), plan[j].path


def test_residual_gain_scales_the_levels_so_a_restore_does_not_lag(states):
    """The gain multiplies a delta's levels (same codes) so that the reconstruction's projection on
    the residual equals the residual's energy; without it the reconstruction falls short."""
    leaves0, leaves1 = _leaves(states[0]), _leaves(states[2])
    out = {}
    for gain in (False, True):
        codec = Codec(CodecConfig(residual_gain=gain, momentum_gain=gain))
        plan = codec.plan(states[0])
        key = codec.encode(plan, leaves0, None, keyframe=True)
        out[gain] = (key, codec.encode(plan, leaves1, key.recon, keyframe=False))
    checked = 0
    for i, p in enumerate(plan):
        if p.kind != WEIGHT:
            continue
        (k0, plain), (k1, scaled) = out[False], out[True]
        np.testing.assert_array_equal(np.asarray(k0.recon[i]), np.asarray(k1.recon[i]))  # keyframes: none
        np.testing.assert_array_equal(
            np.asarray(plain.records[i]["planes"]), np.asarray(scaled.records[i]["planes"])
        )
        b0, b1 = np.asarray(plain.records[i]["codebook"]), np.asarray(scaled.records[i]["codebook"])
        levels = b0[:, 1:] != 0  # a group that coded nothing has an all-zero codebook
        gain = np.where(levels, b1[:, 1:] / np.where(levels, b0[:, 1:], 1), 1)
        assert np.allclose(gain, gain.max(axis=1, keepdims=True), rtol=1e-6), p.path
        assert np.all((gain >= 1) & (gain <= 2)) and np.all(b1[:, 1:][~levels] == 0)
        ref = np.asarray(k0.recon[i], np.float32)
        d = np.asarray(leaves1[i], np.float32) - ref
        q0, q1 = np.asarray(plain.recon[i], np.float32) - ref, np.asarray(scaled.recon[i], np.float32) - ref
        if not p.grouped:
            d, q0, q1, gain = d[None], q0[None], q1[None], gain[:1]
        for g in range(d.shape[0]):
            e = np.sum(d[g] ** 2)
            assert np.sum(q0[g] * d[g]) < 0.95 * e  # the plain codes fall short
            if levels[g].any() and gain[g, 0] < 2:  # the energy is matched (up to the bin midpoints)
                np.testing.assert_allclose(np.sum(q1[g] * d[g]), e, rtol=0.03)
            assert np.sum((q1[g] - d[g]) ** 2) <= e  # never further than no update at all
        checked += int(levels.any())
        # m: every save, the kept levels scaled to the energy of all of m (dropped entries stay 0)
        m = np.asarray(leaves1[p.mu], np.float32)
        m0, m1 = np.asarray(plain.recon[p.mu], np.float32), np.asarray(scaled.recon[p.mu], np.float32)
        np.testing.assert_array_equal(m0 == 0, m1 == 0)
        if not p.grouped:
            m, m0, m1 = m[None], m0[None], m1[None]
        for g in range(m.shape[0]):
            gm = np.sum(m1[g] * m0[g]) / max(np.sum(m0[g] ** 2), 1e-30)
            if np.any(m0[g]):
                assert 1 <= gm <= 2 + 1e-5 and np.sum((m1[g] - m[g]) ** 2) <= np.sum(m[g] ** 2)
                if gm < 2:  # gain * sum q**2 = sum m**2 (up to the histogram's bin midpoints)
                    np.testing.assert_allclose(np.sum(m1[g] * m0[g]), np.sum(m[g] ** 2), rtol=0.03)
    assert checked >= 4


def test_keyframe_keeps_every_weight_with_keyframe_bits(states):
    codec = Codec(CodecConfig(keyframe_bits=6, outlier_fraction=1e-4))
    plan = codec.plan(states[2])
    enc = codec.encode(plan, _leaves(states[2]), None, keyframe=True)
    for i, p in enumerate(plan):
        if p.kind == WEIGHT:
            codes = np.asarray(packing.unpack_codes(enc.records[i]["planes"], 6, p.shape[-1]))
            w = np.asarray(_leaves(states[2])[i])
            exact = np.zeros(w.shape, bool)  # the largest weights are stored exactly instead
            index = np.asarray(enc.records[i]["outlier_index"])
            for g, idx in enumerate(index):
                idx = idx[idx[:, 0] < (w.shape[1] if p.grouped else w.shape[0])]
                exact[((g,) if p.grouped else ()) + tuple(idx.T)] = True
            assert exact.any() and np.array_equal(codes != 0, (w != 0) & ~exact)
            np.testing.assert_array_equal(np.asarray(enc.recon[i])[exact], w[exact])
            assert np.all(np.asarray(enc.records[i]["threshold"]) == 0)
            assert enc.records[i]["codebook"].shape[1] == 64


def test_sharded_and_single_device_compression_are_identical(states, devices):
    single = Codec(CodecConfig(weight_bits=3, min_size=16384, outlier_fraction=1e-3))  # two weight shapes
    _, setup8 = _setup(MeshConfig(data=2, tensor=4))
    sharded_states = [jax.tree.map(jax.device_put, s, setup8.shardings) for s in states[:2]]
    assert any(x.sharding.spec != () and len(x.sharding.device_set) == 8 for x in _leaves(sharded_states[0]))
    out = []
    for sts in (states[:2], sharded_states):
        plan = single.plan(sts[0])
        key = single.encode(plan, _leaves(sts[0]), None, keyframe=True)
        enc = single.encode(plan, _leaves(sts[1]), key.recon, keyframe=False)
        out.append((plan, jax.device_get((enc.records, enc.recon, enc.checksums))))
    (plan1, a), (plan8, b) = out
    assert [p.kind for p in plan1] == [p.kind for p in plan8]
    sharded_weights = [p for p in plan8 if p.kind == WEIGHT and "tensor" in str(p.sharding.spec)]
    assert sharded_weights, "some compressed weights should be sharded over the tensor axis"
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b, strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), jax.tree_util.keystr(path)


def _drop_everything(v: np.ndarray, w: np.ndarray):
    """A one-weight state whose moments all fall below the momentum threshold except one entry,
    so joint shrinking drops (almost) all of ``v``."""
    m = np.full_like(w, 1e-6)
    m[0, 0] = 1.0
    return {
        "params": {"w": jnp.asarray(w)},
        "opt": {"mu": {"w": jnp.asarray(m)}, "nu": {"w": jnp.asarray(v)}},
    }


def test_second_moment_fill_is_exact_for_a_rank_one_v_and_positive():
    """The documented bound of ``moment_fill="factored"``: where ``log2 v`` is a row term plus a
    column term, the fill matches ``v`` within 4 fixed-point steps (``4 / LOG2_STEPS`` octaves,
    4.4%: four roundings of the fixed-point means), and a restored ``v`` is never zero where ``v`` was not."""
    from jaxslim.checkpoint.codec import LOG2_STEPS

    rng = np.random.default_rng(0)
    a, b = 2.0 ** rng.uniform(-30, -10, (96, 1)), 2.0 ** rng.uniform(-8, 8, (1, 128))
    v = (a * b).astype(np.float32)
    state = _drop_everything(v, rng.standard_normal((96, 128)).astype(np.float32))
    for fill, bound in (("factored", 4 / LOG2_STEPS), ("scalar", None), ("zero", None)):
        codec = Codec(CodecConfig(moment_fill=fill))
        plan = codec.plan(state)
        i, nu = next((i, p.nu) for i, p in enumerate(plan) if p.kind == WEIGHT)
        enc = codec.encode(plan, _leaves(state), None, keyframe=True)
        v_hat = np.asarray(enc.recon[nu])
        dropped = np.ones(v.shape, bool)
        dropped[0, 0] = False
        if fill == "zero":
            assert not np.any(v_hat[dropped])
            continue
        err = np.abs(np.log2(v_hat[dropped] / v[dropped]))
        if bound is not None:
            assert err.max() <= bound
            assert enc.stats[i]["v_fill_log2_rms"] <= bound
        else:  # one value per tensor: off by the spread of log2 v around its mean
            assert len(np.unique(v_hat[dropped])) == 1 and np.all(v_hat > 0)


def test_second_moment_fill_keeps_the_first_adam_updates_near_the_true_ones(states):
    """After a lossy restore the next Adam update at an entry whose moments were dropped is
    ``(1 - b1) g / sqrt(b2 v_hat + (1 - b2) g**2)``. With ``v_hat = 0`` (ExCP) it is sign-like;
    with the factored fill its median ratio to the update with the true ``v`` stays within 2x."""
    b1, b2 = 0.9, 0.95
    rng = np.random.default_rng(0)
    leaves = _leaves(states[3])
    ratios = {}
    for fill in ("zero", "factored"):
        codec = Codec(CodecConfig(moment_fill=fill))
        plan = codec.plan(states[3])
        enc = codec.encode(plan, leaves, None, keyframe=True)
        r = []
        for p in plan:
            if p.kind != WEIGHT or p.nu < 0:
                continue
            v = np.asarray(leaves[p.nu], np.float32)
            v_hat = np.asarray(enc.recon[p.nu], np.float32)
            dropped = (np.asarray(enc.recon[p.mu]) == 0) & (v > 0)
            g = rng.standard_normal(v.shape).astype(np.float32) * np.sqrt(v)
            true = (1 - b1) * np.abs(g) / np.sqrt(b2 * v + (1 - b2) * g**2)
            got = (1 - b1) * np.abs(g) / np.sqrt(b2 * v_hat + (1 - b2) * g**2)
            r.append((got / true)[dropped])
        ratios[fill] = float(np.median(np.concatenate(r)))
    assert 0.5 <= ratios["factored"] <= 2.0, ratios
    assert ratios["zero"] > 2.0, ratios  # what the fill removes
