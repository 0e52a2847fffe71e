"""The optimizers on real jaxslim models: per-layer and per-expert trust ratios read from the
parameters' logical axes, optimizer state sharded like the params on 8 devices, AGVM's half-batch
gradients in the train step, and the metrics the step reports."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxslim.config import MeshConfig, ModelConfig, MoeConfig, OptimConfig
from jaxslim.models import Transformer
from jaxslim.optim import agvm, build_optimizer, decay_mask, lamb, module_labels, optimizer_metric_fns
from jaxslim.sharding import batch_sharding, make_mesh, per_layer_reduce, shard_batch
from jaxslim.training import create_train_state, lm_objective, make_train_step

GPT2 = ModelConfig.gpt2(vocab_size=64, d_model=32, n_layers=4, n_heads=4, d_ff=64, max_len=16)
MOE = GPT2.replace(moe=MoeConfig(num_experts=4, every=2))


def _is_var(x):
    return isinstance(x, nnx.Variable)


def _leaves(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_var)[0]
    return {jax.tree_util.keystr(p): v for p, v in flat}


def _spread(params):
    """Scale every layer and expert of every stacked weight differently (norms over 4 decades)."""

    def f(v):
        axes = tuple(v.get_metadata().get("out_sharding") or ())
        x = v.get_value()
        dims = [i for i, a in enumerate(axes) if a in ("layers", "exp")]
        if not dims:
            return v
        n = int(np.prod([x.shape[i] for i in dims]))
        shape = [x.shape[i] if i in dims else 1 for i in range(x.ndim)]
        return v.replace(x * jnp.asarray(np.logspace(-2, 2, n).reshape(shape), x.dtype))

    return jax.tree.map(f, params, is_leaf=_is_var)


def test_per_layer_and_per_expert_ratios_from_logical_axes():
    _, params, _ = nnx.split(Transformer(MOE, rngs=nnx.Rngs(0)), nnx.Param, ...)
    params = _spread(params)
    key = jax.random.key(1)
    grads = jax.tree.map(
        lambda v: v.replace(jax.random.normal(key, v.get_value().shape)), params, is_leaf=_is_var
    )
    lr = 1e-2
    tx = lamb(lr, eps=0.0, weight_decay=0.01)  # trust ratio where weight decay applies (TF-addons)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    decayed = _leaves(decay_mask(params))
    ps, us, gs = _leaves(params), _leaves(updates), _leaves(grads)
    assert any("'exp'" in str(v.get_metadata().get("out_sharding")) for v in ps.values())
    seen_experts, zero_init = 0, []
    for name, p in ps.items():
        axes = tuple(p.get_metadata().get("out_sharding"))
        w, u = np.asarray(p.get_value()), np.asarray(us[name].get_value())
        g = np.asarray(gs[name].get_value())
        # the first Adam step; optax forms 1 - beta from the Python float, beta^t from the float32 beta
        m_hat = np.float32(1 - 0.9) * g / (1 - np.float32(0.9))
        v_hat = np.float32(1 - 0.999) * g * g / (1 - np.float32(0.999))
        adam_step = -lr * m_hat / np.sqrt(v_hat)
        if decayed[name]:
            dims = [i for i, a in enumerate(axes) if a in ("layers", "exp")]
            red = tuple(i for i in range(w.ndim) if i not in dims)
            w_norm = np.sqrt(np.sum(w * w, axis=red))
            rel = np.sqrt(np.sum(u * u, axis=red)) / np.where(w_norm > 0, w_norm, 1.0)
            assert np.max(np.abs(np.where(w_norm > 0, rel, lr) - lr)) <= 1e-6, (name, rel)
            if np.any(w_norm == 0):  # zero-initialised weights (e.g. the routers): ratio 1
                np.testing.assert_allclose(u, adam_step, rtol=1e-6)
                zero_init.append(name)
            seen_experts += rel.size if "exp" in axes else 0
        else:  # biases and norm scales: no trust ratio
            np.testing.assert_allclose(u, adam_step, rtol=1e-6)
    assert seen_experts == 2 * 2 * 4, zero_init  # 2 MoE layers x (wi, wo) x 4 experts


def test_layer_norms_agree_with_the_shared_helper():
    from jaxslim.optim.trust import group_norm

    _, params, _ = nnx.split(Transformer(GPT2, rngs=nnx.Rngs(0)), nnx.Param, ...)
    for v in _leaves(params).values():
        axes = tuple(v.get_metadata().get("out_sharding"))
        x = v.get_value()
        ours = group_norm(x, axes)
        helper = per_layer_reduce(lambda s: jnp.linalg.norm(s.ravel()), x, axes)
        np.testing.assert_allclose(
            np.asarray(ours), np.broadcast_to(np.asarray(helper), ours.shape), rtol=1e-6
        )


def _train(mesh_cfg, opt, devices, model=GPT2, steps=3, agvm_every=0):
    mesh, rules = make_mesh(mesh_cfg, devices), mesh_cfg.rules
    tx = build_optimizer(opt, 100)
    rng = np.random.default_rng(0)
    batches = [{"tokens": rng.integers(0, model.vocab_size, (8, 9), dtype=np.int32)} for _ in range(steps)]
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        state, setup = create_train_state(lambda: Transformer(model, rngs=nnx.Rngs(0)), tx, mesh, rules)
        step = make_train_step(
            setup,
            lm_objective,
            metric_fns=optimizer_metric_fns(opt),
            batch_sharding=batch_sharding(mesh, rules),
            agvm_every=agvm_every,
            donate=False,
        )
        history = []
        for b in batches:
            state, m = step(state, shard_batch(b, mesh, rules))
            history.append({k: float(v) for k, v in jax.device_get(m).items()})
    return state, history


@pytest.mark.parametrize(
    "mesh_cfg,model",
    [(MeshConfig(data=2, fsdp=2, tensor=2), GPT2), (MeshConfig(data=2, expert=2, tensor=2), MOE)],
    ids=["dense", "moe"],
)
def test_state_stays_sharded_like_the_params(devices, mesh_cfg, model):
    opt = OptimConfig(name="lamb", lr=3e-3, warmup_steps=1, noise_eta=0.01, agvm_every=2, trust_max=10.0)
    state, history = _train(mesh_cfg, opt, devices, model, agvm_every=2)
    adam = [
        x
        for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(x, optax.ScaleByAdamState)
    ]
    assert len(adam) == 1
    params = jax.tree.leaves(state.params)
    sharded = 0
    for moment in (adam[0].mu, adam[0].nu):
        for m, p in zip(jax.tree.leaves(moment), params, strict=True):
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
            sharded += not p.sharding.is_fully_replicated
    assert sharded > len(params)  # most moments are really split across devices
    for m in history:
        assert m["nonfinite"] == 0
        assert 0 < m["trust_ratio/min"] <= m["trust_ratio/mean"] <= m["trust_ratio/max"] <= 10.0
        assert {"agvm/mu_0", "agvm/mu_3"} <= set(m)
    assert history[0]["agvm/mu_1"] != 1.0  # measured at step 0
    assert history[1]["agvm/mu_1"] == history[0]["agvm/mu_1"]  # and not at step 1


def test_agvm_half_batch_gradient_is_the_full_batch_gradient(devices):
    mesh_cfg = MeshConfig(data=2, fsdp=4)
    plain = OptimConfig(name="adamw", lr=1e-3, warmup_steps=0, decay="constant")
    with_agvm = OptimConfig(name="adamw", lr=1e-3, warmup_steps=0, decay="constant", agvm_every=1)
    _, a = _train(mesh_cfg, plain, devices, steps=1)
    _, b = _train(mesh_cfg, with_agvm, devices, steps=1, agvm_every=1)
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-6)
    assert b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-5)
    assert b[0]["agvm/mu_0"] == 1.0 and any(b[0][f"agvm/mu_{i}"] != 1.0 for i in range(1, 4))


def test_agvm_multipliers_follow_the_update_rule():
    """Three modules, SGD inside: the multipliers follow sqrt(clamp(phi_0 / phi_i)) smoothed with
    0.97, recomputed in NumPy, and every update is the SGD update times its module's multiplier."""
    rng = np.random.default_rng(0)
    shapes = {"backbone/w": (6, 5), "neck/w": (5, 4), "head/w": (4,), "head/b": (3,)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    labels = {"backbone/w": 0, "neck/w": 1, "head/w": 2, "head/b": 2}
    tx = agvm(optax.sgd(0.1), module_labels(["backbone", "neck", "head"]), 3)
    state = tx.init(params)
    mu = np.ones(3)
    update = jax.jit(lambda g, s, h: tx.update(g, s, params, agvm_grads=h))
    noise = [1.0, 0.5, 3.0]  # the halves disagree least in the neck, most in the head
    for _ in range(6):
        base = {k: rng.normal(size=s) for k, s in shapes.items()}
        halves = {
            k: np.stack([base[k] + noise[labels[k]] * rng.normal(size=s) for _ in range(2)])
            for k, s in shapes.items()
        }
        g = {k: jnp.asarray(h.mean(0), jnp.float32) for k, h in halves.items()}
        u, state = update(g, state, {k: jnp.asarray(h, jnp.float32) for k, h in halves.items()})
        dot, na, nb = np.zeros(3), np.zeros(3), np.zeros(3)
        for k, h in halves.items():
            a, b = h[0].astype(np.float32).ravel(), h[1].astype(np.float32).ravel()
            dot[labels[k]] += a @ b
            na[labels[k]] += a @ a
            nb[labels[k]] += b @ b
        phi = 1 - dot / np.sqrt(na * nb)
        mu = 0.97 * mu + 0.03 * np.sqrt(np.clip((phi[0] + 1e-6) / (phi + 1e-6), 0.5, 10.0))
        np.testing.assert_allclose(np.asarray(state.mu), mu, rtol=1e-5)
        for k in shapes:
            np.testing.assert_allclose(np.asarray(u[k]), -0.1 * np.asarray(g[k]) * mu[labels[k]], rtol=1e-5)
    assert mu[2] < 1.0 < mu[1]
