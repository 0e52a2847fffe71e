"""LAMB / LARS presets against independent NumPy re-implementations of each reference's update rule
(TF-addons LAMB, NVIDIA apex FusedLAMB and NVLAMB, DeepSpeed FusedLamb, LARS) over 100 random steps,
with the references' exclusion lists; per-layer and per-expert trust ratios on stacked weights."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxslim.optim import exclude_mask, lamb, lamb_preset, lars, trust_ratio_metrics

STEPS = 100
EXCLUDE = ["bias", "LayerNorm"]  # the BERT recipe's exclusion list

# name -> (shape, logical axes); "stack" is a scanned stack of 3 layers, "moe" 2 layers x 3 experts
SPEC = {
    "embeddings/word": ((12, 8), None),
    "layer/attention/kernel": ((8, 8), None),
    "layer/attention/bias": ((8,), None),
    "layer/LayerNorm/gamma": ((8,), None),
    "layer/LayerNorm/beta": ((8,), None),
    "head/kernel": ((8, 4), None),
    "head/bias": ((4,), None),
    "stack/kernel": ((3, 8, 6), ("layers", None, None)),
    "stack/bias": ((3, 6), ("layers", None)),
    "moe/wi": ((2, 3, 4, 5), ("layers", "exp", None, None)),
}


def _nest(flat):
    out = {}
    for name, v in flat.items():
        d = out
        *head, last = name.split("/")
        for k in head:
            d = d.setdefault(k, {})
        d[last] = v
    return out


def _flatten(tree):
    return {
        "/".join(str(k.key) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _problem(seed=0):
    """Params whose layers and experts have very different norms, a zero-initialised bias, and 100
    gradients whose global norm is sometimes above and sometimes below 1 (apex's clip)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, (shape, axes) in SPEC.items():
        w = rng.normal(size=shape).astype(np.float32)
        if axes:  # scale each layer / expert differently: 0.01 ... 100
            n_groups = int(np.prod([s for s, a in zip(shape, axes, strict=True) if a]))
            scales = np.logspace(-2, 2, n_groups).reshape(
                [s if a else 1 for s, a in zip(shape, axes, strict=True)]
            )
            w = (w * scales).astype(np.float32)
        params[name] = w
    params["head/bias"] = np.zeros((4,), np.float32)
    grads = []
    for _ in range(STEPS):
        scale = rng.uniform(0.002, 0.3)
        grads.append({k: (scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()})
    return params, grads


def _units(flat):
    """Each reference treats every weight tensor as a layer: split stacks into their slices."""
    out = {}
    for name, w in flat.items():
        shape, axes = SPEC[name]
        if not axes:
            out[name] = w
            continue
        lead = sum(1 for a in axes if a)
        for idx in np.ndindex(*shape[:lead]):
            out[f"{name}/{'_'.join(map(str, idx))}"] = w[idx]
    return out


def _stack(units):
    out = {}
    for name, (shape, axes) in SPEC.items():
        if not axes:
            out[name] = units[name]
            continue
        lead = sum(1 for a in axes if a)
        w = np.zeros(shape, np.float32)
        for idx in np.ndindex(*shape[:lead]):
            w[idx] = units[f"{name}/{'_'.join(map(str, idx))}"]
        out[name] = w
    return out


def _excluded(name, patterns=EXCLUDE):
    return any(re.search(p, name) for p in patterns)


def _norm(x):
    return np.float32(np.sqrt(np.sum(np.square(x, dtype=np.float32), dtype=np.float32)))


# -- NumPy references (float32) -------------------------------------------------------------------


def ref_tf_addons(params, grads, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    """tfa.optimizers.LAMB: exclude_from_layer_adaptation defaults to exclude_from_weight_decay."""
    b1, b2, eps, wd, lr = map(np.float32, (b1, b2, eps, wd, lr))
    p = _units(params)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g_all in enumerate(grads, 1):
        g_all = _units(g_all)
        for k in p:
            g = g_all[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1 ** np.float32(t))
            v_hat = v[k] / (1 - b2 ** np.float32(t))
            update = m_hat / (np.sqrt(v_hat) + eps)
            if not _excluded(k):
                update = update + wd * p[k]
            ratio = np.float32(1.0)
            if not _excluded(k):
                w_norm, g_norm = _norm(p[k]), _norm(update)
                ratio = w_norm / g_norm if (w_norm > 0 and g_norm > 0) else np.float32(1.0)
            p[k] = (p[k] - ratio * lr * update).astype(np.float32)
    return _stack(p)


def ref_apex(params, grads, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.01, max_grad_norm=1.0, nvlamb=False):
    """apex.optimizers.FusedLAMB (adam_w_mode, grad_averaging, bias_correction) with two parameter
    groups: decay ``wd`` and, for the exclusion list, decay 0."""
    b1, b2, eps, wd, lr = map(np.float32, (b1, b2, eps, wd, lr))
    p = _units(params)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g_all in enumerate(grads, 1):
        g_all = _units(g_all)
        global_norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in g_all.values()))
        clip = global_norm / max_grad_norm if global_norm > max_grad_norm else 1.0
        for k in p:
            decay = 0.0 if _excluded(k) else wd
            g = g_all[k] / np.float32(clip)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            update = (m[k] / (1 - b1 ** np.float32(t))) / (np.sqrt(v[k] / (1 - b2 ** np.float32(t))) + eps)
            update = update + decay * p[k]
            p_norm, u_norm = _norm(p[k]), _norm(update)
            if (nvlamb or decay != 0) and p_norm != 0 and u_norm != 0:
                step = lr * (p_norm / u_norm)
            else:
                step = lr
            p[k] = (p[k] - step * update).astype(np.float32)
    return _stack(p)


def ref_deepspeed(params, grads, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.01, min_coeff=0.01, max_coeff=10.0):
    """deepspeed.ops.lamb.FusedLamb kernel: raw moments, eps outside the root, clamped coefficient,
    bias correction on the step size; groups as in :func:`ref_apex`."""
    b1, b2, eps, wd, lr = map(np.float32, (b1, b2, eps, wd, lr))
    p = _units(params)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g_all in enumerate(grads, 1):
        g_all = _units(g_all)
        step_size = lr * np.sqrt(1 - b2 ** np.float32(t)) / (1 - b1 ** np.float32(t))
        for k in p:
            decay = 0.0 if _excluded(k) else wd
            g = g_all[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            update = m[k] / (np.sqrt(v[k]) + eps) + decay * p[k]
            w_norm, u_norm = _norm(p[k]), _norm(update)
            coeff = np.float32(1.0)
            if w_norm != 0 and u_norm != 0:
                coeff = np.clip(w_norm / u_norm, min_coeff, max_coeff)
            p[k] = (p[k] - np.float32(step_size) * coeff * update).astype(np.float32)
    return _stack(p)


def ref_lars(params, grads, lr, wd=1e-4, coef=0.001, eps=0.0, momentum=0.9):
    """LARS as optax composes it: decay, trust ratio (not on the exclusion list), LR, momentum."""
    p = _units(params)
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    for g_all in grads:
        g_all = _units(g_all)
        for k in p:
            g = g_all[k] if _excluded(k) else g_all[k] + wd * p[k]
            ratio = np.float32(1.0)
            if not _excluded(k):
                w_norm, g_norm = _norm(p[k]), _norm(g)
                ratio = coef * w_norm / (g_norm + eps) if (w_norm > 0 and g_norm > 0) else np.float32(1.0)
            buf[k] = lr * ratio * g + momentum * buf[k]
            p[k] = (p[k] - buf[k]).astype(np.float32)
    return _stack(p)


# -- running the jaxslim optimizers ---------------------------------------------------------------

AXES = _nest({k: axes for k, (_, axes) in SPEC.items()})


def _run(tx, params, grads):
    p = jax.tree.map(jnp.asarray, _nest(params))
    state = tx.init(p)

    @jax.jit
    def step(p, state, g):
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state

    for g in grads:
        p, state = step(p, state, _nest(g))
    return _flatten(p), state


def _max_diff(got, want):
    """Largest elementwise difference over every layer / expert, in units of that layer's scale
    (its RMS, at least 1): float32 cannot resolve 1e-6 absolute on a layer of norm 600."""
    got, want = _units(got), _units(want)
    return max(
        float(np.max(np.abs(got[k] - want[k])) / max(1.0, float(np.sqrt(np.mean(np.square(want[k]))))))
        for k in want
    )


@pytest.mark.parametrize(
    "preset,ref,lr",
    [
        ("tf_addons", ref_tf_addons, 1e-2),
        ("apex", ref_apex, 1e-2),
        ("nvlamb", lambda *a, **k: ref_apex(*a, nvlamb=True, **k), 1e-2),
        ("deepspeed", ref_deepspeed, 1e-2),
    ],
)
def test_preset_matches_reference(preset, ref, lr):
    params, grads = _problem()
    tx = lamb_preset(preset, lr, weight_decay=0.01, weight_decay_mask=exclude_mask(EXCLUDE), axes=AXES)
    got, _ = _run(tx, params, grads)
    want = ref(params, grads, lr)
    assert _max_diff(got, want) <= 1e-6, (preset, _max_diff(got, want))
    # the references differ from each other by far more than the tolerance
    assert (
        _max_diff(
            want, ref_tf_addons(params, grads, lr) if preset != "tf_addons" else ref_apex(params, grads, lr)
        )
        > 1e-3
    )


def test_lars_matches_reference():
    params, grads = _problem(1)
    tx = lars(0.5, 1e-4, weight_decay_mask=exclude_mask(EXCLUDE), trust_coefficient=0.001, axes=AXES)
    got, _ = _run(tx, params, grads)
    want = ref_lars(params, grads, 0.5)
    assert _max_diff(got, want) <= 1e-6, _max_diff(got, want)


def test_optax_preset_equals_optax_lamb_without_stacks():
    params, grads = _problem(2)
    flat = {k: v for k, v in params.items() if SPEC[k][1] is None}
    flat_grads = [{k: g[k] for k in flat} for g in grads[:20]]
    ours, _ = _run(lamb_preset("optax", 1e-2, weight_decay=0.01, weight_decay_mask=True), flat, flat_grads)
    theirs, _ = _run(optax.lamb(1e-2, weight_decay=0.01), flat, flat_grads)
    assert _max_diff(ours, theirs) <= 1e-7


# -- per-layer and per-expert ratios --------------------------------------------------------------


def _relative_updates(tx, w, axes, lr_axes_count):
    params = {"w": jnp.asarray(w)}
    g = {"w": jnp.asarray(np.random.default_rng(5).normal(size=w.shape).astype(np.float32))}
    state = tx.init(params)
    u, state = jax.jit(tx.update)(g, state, params)
    u = np.asarray(u["w"])
    lead = w.shape[:lr_axes_count]
    return np.array([np.linalg.norm(u[i]) / np.linalg.norm(w[i]) for i in np.ndindex(*lead)]), state


def test_stacked_layers_each_get_their_own_ratio():
    """Four scanned 64x64 layers with norms 0.648 / 6.47 / 64.8 / 640: every layer's relative step is
    the learning rate; optax's per-array ratio is off by up to ~500x on the same stack."""
    rng = np.random.default_rng(0)
    w = np.stack([rng.normal(size=(64, 64)) * s for s in (0.01, 0.1, 1.0, 10.0)]).astype(np.float32)
    lr = 1e-2
    ours, state = _relative_updates(
        lamb(lr, eps=0.0, trust_mask=True, axes={"w": ("layers", "embed", "mlp")}), w, None, 1
    )
    np.testing.assert_allclose(ours, lr, rtol=0, atol=1e-6 * lr)
    assert np.max(np.abs(ours - lr)) <= 1e-6
    theirs, _ = _relative_updates(optax.lamb(lr), w, None, 1)
    assert theirs[0] > 100 * lr and theirs[3] < 0.6 * lr  # the bug being fixed
    norms = np.linalg.norm(w.reshape(4, -1), axis=1)
    m = trust_ratio_metrics(state)
    # step 1 with eps 0: every Adam element is +-1, so ||u_l|| = sqrt(4096) and ratio_l = ||w_l|| / 64
    np.testing.assert_allclose(float(m["trust_ratio/min"]), norms.min() / 64, rtol=1e-5)
    np.testing.assert_allclose(float(m["trust_ratio/max"]), norms.max() / 64, rtol=1e-5)
    np.testing.assert_allclose(float(m["trust_ratio/mean"]), norms.mean() / 64, rtol=1e-5)


def test_stacked_experts_each_get_their_own_ratio():
    rng = np.random.default_rng(1)
    scales = np.logspace(-2, 2, 8).reshape(2, 4, 1, 1)
    w = (rng.normal(size=(2, 4, 16, 24)) * scales).astype(np.float32)
    lr = 3e-3
    ours, _ = _relative_updates(
        lamb(lr, trust_mask=True, axes={"w": ("layers", "exp", "embed", "mlp")}), w, None, 2
    )
    assert ours.shape == (8,)
    assert np.max(np.abs(ours - lr)) <= 1e-6
    # with only the layers axis declared, the 4 experts of a layer would share one ratio
    shared, _ = _relative_updates(
        lamb(lr, trust_mask=True, axes={"w": ("layers", None, "embed", "mlp")}), w, None, 2
    )
    assert np.max(shared) / np.min(shared) > 10


def test_clamp_bounds_the_ratio():
    w = np.stack([np.full((8, 8), 1e-3), np.full((8, 8), 1e3)]).astype(np.float32)
    tx = lamb(
        1.0, eps=0.0, trust_mask=True, min_ratio=0.01, max_ratio=10.0, axes={"w": ("layers", None, None)}
    )
    rel, state = _relative_updates(tx, w, None, 1)
    ratios = rel * np.linalg.norm(w.reshape(2, -1), axis=1) / 8.0  # ||u|| = 8 at step 1
    np.testing.assert_allclose(ratios, [0.01, 10.0], rtol=1e-5)
    m = trust_ratio_metrics(state)
    assert float(m["trust_ratio/min"]) == pytest.approx(0.01) and float(
        m["trust_ratio/max"]
    ) == pytest.approx(10.0)


# -- bad hyperparameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: lamb(-1e-3), r"learning_rate must be a number >= 0.0, got -0.001"),
        (lambda: lamb(1e-3, weight_decay=-0.1), r"weight_decay must be a number >= 0.0, got -0.1"),
        (lambda: lamb(1e-3, b2=1.0), r"b2 must be a number >= 0.0 and < 1.0, got 1.0"),
        (lambda: lamb(1e-3, min_ratio=2.0, max_ratio=1.0), r"min_ratio=2.0 must not exceed max_ratio=1.0"),
        (lambda: lamb(1e-3, min_ratio=-1.0), r"min_ratio must be a number > 0 or None, got -1.0"),
        (lambda: lamb(1e-3, clip_norm=0), r"clip_norm must be > 0"),
        (lambda: lamb(1e-3, bias_correction="yes"), r"bias_correction must be True, False or 'step_size'"),
        (lambda: lars(-0.1), r"learning_rate must be a number >= 0.0, got -0.1"),
        (lambda: lars(0.1, momentum=1.5), r"momentum must be a number >= 0.0 and < 1.0, got 1.5"),
        (lambda: lamb_preset("lamb9", 1e-3), r"LAMB preset must be one of .*got 'lamb9'"),
    ],
)
def test_bad_hyperparameters_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_mask_not_matching_params_is_named():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx = lamb(1e-3, weight_decay=0.1, weight_decay_mask={"a": True, "c": False})
    with pytest.raises(ValueError, match=r"weight_decay_mask does not match the params"):
        tx.init(params)
    tx = lamb(1e-3, trust_mask={"a": True, "b": 1})
    with pytest.raises(ValueError, match=r"trust_mask must hold Python bools"):
        tx.init(params)
    with pytest.raises(ValueError, match=r"logical axes .* name 2 dimensions, the array has 1"):
        tx = lamb(1e-3, trust_mask=True, axes={"a": ("layers", None), "b": ("layers", None)})
        tx.update(params, tx.init(params), params)
