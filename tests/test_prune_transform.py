"""Gradual pruning: the cubic schedule, exact zeros under momentum and weight decay, masked moments,
STE / SR-STE for N:M, finding the state in wrapped optimizers, Orbax round trips, and composition
with the repo's optimizer builder and train step on a sharded mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxslim.checkpoint import Checkpointer
from jaxslim.config import MeshConfig, ModelConfig, OptimConfig
from jaxslim.engine.losses import causal_lm_loss
from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer
from jaxslim.prune.masks import compute_masks, compute_scores, mask_counts, nm_masks
from jaxslim.prune.schedule import (
    constant_sparsity_schedule,
    cubic_sparsity_schedule,
    cubic_update_window,
    is_update_step,
    one_shot_sparsity_schedule,
)
from jaxslim.prune.transform import (
    PruneState,
    find_prune_state,
    get_masks,
    gradual_pruning,
    masked_params,
    params_sparsity,
    prune,
    sparsity_metrics,
)
from jaxslim.sharding import batch_sharding, make_mesh, shard_batch
from jaxslim.training import abstract_train_state, create_train_state, lm_objective, make_train_step

GPT2 = ModelConfig.gpt2(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)


def _is_var(x):
    return isinstance(x, nnx.Variable)


def _split(cfg=GPT2):
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)


def _pairs(masks, params):
    """(mask, param) value pairs of the pruned leaves."""
    ms = jax.tree.leaves(masks, is_leaf=_is_var)
    ps = jax.tree.leaves(params, is_leaf=_is_var)
    return [(m.get_value(), p.get_value()) for m, p in zip(ms, ps, strict=True) if m.get_value() is not None]


# -- schedules ------------------------------------------------------------------------------------


def test_cubic_schedule_matches_the_formula():
    s_i, s_f, t0, n, dt = 0.1, 0.85, 30, 7, 20
    sched = jax.jit(
        cubic_sparsity_schedule(s_f, initial_sparsity=s_i, begin_step=t0, num_updates=n, update_every=dt)
    )
    for t in [0, 1, 29, 30, 31, 45, 50, 77, 100, 149, 150, 169, 170, 171, 500, 10_000]:
        if t < t0:
            want = s_i
        elif t > t0 + n * dt:
            want = s_f
        else:
            want = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert float(sched(jnp.int32(t))) == pytest.approx(want, abs=1e-6), t
    assert float(constant_sparsity_schedule(0.3)(jnp.int32(9))) == pytest.approx(0.3)
    shot = one_shot_sparsity_schedule(0.6, step=5)
    assert [float(shot(t)) for t in (0, 4, 5, 99)] == pytest.approx([0, 0, 0.6, 0.6])


def test_update_steps_every_dt():
    window = cubic_update_window(begin_step=30, num_updates=7, update_every=20)
    assert window == {"begin_step": 30, "end_step": 170, "update_every": 20}
    flags = np.asarray(jax.jit(lambda t: is_update_step(t, **window))(jnp.arange(400)))
    assert np.flatnonzero(flags).tolist() == list(range(30, 171, 20))
    assert np.flatnonzero(np.asarray(is_update_step(jnp.arange(12), update_every=3))).tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(final_sparsity=1.0), "final_sparsity must be a fraction in"),
        (dict(final_sparsity=-0.1), "final_sparsity must be a fraction in"),
        (dict(final_sparsity=0.5, initial_sparsity=0.6), "must not exceed final_sparsity"),
        (dict(final_sparsity=0.5, num_updates=0), "num_updates must be an integer >= 1"),
        (dict(final_sparsity=0.5, update_every=0), "update_every must be an integer >= 1"),
        (dict(final_sparsity=0.5, begin_step=-1), "begin_step must be an integer >= 0"),
    ],
)
def test_schedule_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        cubic_sparsity_schedule(**kw)


# -- the transform on a tiny GPT-2 ----------------------------------------------------------------


def _train_loop(tx, steps, *, batch=4, width=9):
    graphdef, params, rest = _split()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, GPT2.vocab_size, (batch, width)), jnp.int32)

    def loss_fn(p):
        out = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
        return causal_lm_loss(out.logits, tokens[:, 1:])[0]

    def step(carry, _):
        p, o = carry
        old = get_masks(o)
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, o = tx.update(g, o, p)
        p = optax.apply_updates(p, u)
        pairs = _pairs(get_masks(o), p)
        leak = jnp.max(jnp.stack([jnp.max(jnp.abs(jnp.where(m, 0.0, w))) for m, w in pairs]))
        grew = jnp.any(
            jnp.stack([jnp.any(n & ~o_) for (n, _), (o_, _) in zip(pairs, _pairs(old, p), strict=True)])
        )
        return (p, o), (loss, leak, grew)

    @jax.jit
    def run(p):
        return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)

    (params, opt_state), (losses, leaks, grew) = run(params)
    return params, opt_state, np.asarray(losses), np.asarray(leaks), np.asarray(grew)


@pytest.mark.parametrize(
    "inner",
    [optax.adamw(3e-3, b1=0.9, weight_decay=0.1), optax.sgd(3e-2, momentum=0.9)],
    ids=["adamw-wd0.1", "sgd-momentum"],
)
def test_pruned_weights_stay_exactly_zero_for_100_steps(inner):
    tx = gradual_pruning(inner, 0.7, begin_step=0, num_updates=5, update_every=10)
    params, opt_state, losses, leaks, grew = _train_loop(tx, 100)
    assert np.all(leaks == 0.0), np.flatnonzero(leaks)  # exactly zero after every apply_updates
    assert not grew.any()  # masks only shrink
    assert losses[-1] < losses[0] - 0.5  # it still trains
    for name, (kept, per_layer) in mask_counts(get_masks(opt_state)).items():
        expected = per_layer - int(np.floor(0.7 * per_layer + 0.5))
        np.testing.assert_array_equal(np.asarray(kept), [expected] * 2, err_msg=name)
    for m, w in _pairs(get_masks(opt_state), params):
        m, w = np.asarray(m), np.asarray(w)
        assert np.all(w[~m] == 0) and np.count_nonzero(w[m]) == m.sum()
    assert int(opt_state.count) == 100
    zeros = params_sparsity(params, opt_state)
    assert all(float(v) == pytest.approx(0.7, abs=1e-3) for v in zeros.values())


def test_gradients_of_pruned_weights_are_masked_before_the_inner_optimizer():
    graphdef, params, _ = _split()
    tx = prune(optax.adam(1e-2), 0.5)
    state = tx.init(params)
    ones = jax.tree.map(lambda v: v.replace(jnp.ones_like(v.get_value())), params, is_leaf=_is_var)
    update = jax.jit(tx.update)
    for _ in range(3):
        u, state = update(ones, state, params)
        params = optax.apply_updates(params, u)
    (mu,) = [v for _, v in optax.tree_utils.tree_get_all_with_path(state, "mu")]
    pairs = _pairs(get_masks(state), mu)
    assert pairs
    for m, moment in pairs:
        assert np.all(np.asarray(moment)[~np.asarray(m)] == 0)
        assert np.all(np.asarray(moment)[np.asarray(m)] > 0)


def test_saliency_uses_the_incoming_gradients():
    _, params, _ = _split()
    grads = jax.tree.map(lambda v: v.replace(jnp.cos(13.0 * v.get_value())), params, is_leaf=_is_var)
    tx = prune(optax.sgd(0.1), 0.4, criterion="saliency")
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    want = compute_masks(params, 0.4, criterion="saliency", grads=grads)
    for (a, _), (b, _) in zip(_pairs(get_masks(state), params), _pairs(want, params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nm_ste_keeps_dense_params_and_sr_ste_pulls_pruned_weights():
    _, params, _ = _split()
    decay, lr = 0.5, 0.1
    tx = prune(optax.sgd(lr), kind="nm", n=2, m=4, ste=True, sr_ste_decay=decay)
    state = tx.init(params)
    zeros = jax.tree.map(lambda v: v.replace(jnp.zeros_like(v.get_value())), params, is_leaf=_is_var)
    want0 = nm_masks(compute_scores(params, "magnitude", kind="nm"), 2, 4)
    for (a, _), (b, _) in zip(_pairs(get_masks(state), params), _pairs(want0, params), strict=True):
        np.testing.assert_array_equal(a, b)  # init already holds the masks of the first forward pass
    fwd = masked_params(params, state)
    u, new_state = jax.jit(tx.update)(zeros, state, params)
    for (m, w), (_, upd), (_, f) in zip(
        _pairs(get_masks(state), params),
        _pairs(get_masks(state), u),
        _pairs(get_masks(state), fwd),
        strict=True,
    ):
        m, w, upd, f = map(np.asarray, (m, w, upd, f))
        np.testing.assert_allclose(upd, np.where(m, 0.0, -lr * decay * w), rtol=1e-6, atol=1e-8)
        np.testing.assert_array_equal(f, np.where(m, w, 0.0))
    new_params = optax.apply_updates(params, u)
    dense = [np.asarray(w) for _, w in _pairs(get_masks(state), new_params)]
    assert all(np.count_nonzero(w) == w.size for w in dense)  # params stay dense under STE
    # the next step's masks are recomputed from the new dense weights
    want1 = nm_masks(compute_scores(new_params, "magnitude", kind="nm"), 2, 4)
    for (a, _), (b, _) in zip(_pairs(get_masks(new_state), params), _pairs(want1, params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_find_state_in_wrapped_optimizers_and_jit_metrics():
    _, params, _ = _split()
    wrapped = optax.inject_hyperparams(
        lambda learning_rate: optax.chain(
            optax.clip_by_global_norm(1.0), prune(optax.adamw(learning_rate), 0.5)
        )
    )(learning_rate=1e-3)
    outer = prune(build_optimizer(OptimConfig(lr=1e-3, warmup_steps=0, decay="constant"), 10), 0.5)
    for tx, calls in ((wrapped, 1), (outer, 1), (optax.MultiSteps(outer, 2), 2)):
        state = tx.init(params)
        assert isinstance(find_prune_state(state), PruneState)
        grads = jax.tree.map(lambda v: v.replace(jnp.ones_like(v.get_value())), params, is_leaf=_is_var)
        for _ in range(calls):  # MultiSteps runs the inner update every 2nd call
            _, state = jax.jit(tx.update)(grads, state, params)
        metrics = jax.jit(sparsity_metrics)(state)
        assert "sparsity/stack.blocks.mlp.wi/layer_1" in metrics
        assert float(metrics["sparsity/overall"]) == pytest.approx(0.5)
    assert find_prune_state(optax.adam(1e-3).init(params)) is None
    with pytest.raises(ValueError, match="no PruneState"):
        sparsity_metrics(optax.adam(1e-3).init(params))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(sparsity=1.0), r"sparsity must be a fraction in \[0, 1\)"),
        (dict(sparsity=-0.2), r"sparsity must be a fraction in \[0, 1\)"),
        (dict(), "needs a sparsity"),
        (dict(kind="nm", n=4, m=4), "1 <= n < m"),
        (dict(kind="nm", n=5, m=4), "1 <= n < m"),
        (dict(sparsity=0.5, kind="blocks"), "kind must be one of"),
        (dict(sparsity=0.5, sr_ste_decay=1e-4), "needs ste=True"),
        (dict(sparsity=0.5, sr_ste_decay=-1.0, ste=True), "sr_ste_decay must be >= 0"),
        (dict(sparsity=0.5, ste=True, criterion="saliency"), "ste=True needs masks before the gradient"),
        (
            dict(sparsity=0.5, kind="heads", allocation="global"),
            'allocation="global" is for kind="unstructured"',
        ),
        (dict(sparsity=0.5, update_every=0), "update_every must be an integer >= 1"),
    ],
)
def test_prune_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        prune(optax.sgd(0.1), **kw)


def test_nm_axis_not_divisible_fails_at_init_or_update():
    _, params, _ = _split()
    tx = prune(optax.sgd(0.1), kind="nm", n=2, m=3)
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"stack\.blocks\.\w+\.w\w+: N:M 2:3 .*not divisible by m=3"):
        tx.update(params, state, params)


# -- with the repo's optimizer builder, train step, mesh and checkpointer -------------------------


def _setup(mesh, rules):
    opt = OptimConfig(lr=3e-3, warmup_steps=0, decay="constant", weight_decay=0.1)
    tx = gradual_pruning(build_optimizer(opt, 100), 0.5, begin_step=1, num_updates=2, update_every=2)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        state, setup = create_train_state(lambda: Transformer(GPT2, rngs=nnx.Rngs(0)), tx, mesh, rules)
        step = make_train_step(
            setup,
            lm_objective,
            metric_fns=[lambda s, g, u: sparsity_metrics(s.opt_state)],
            batch_sharding=batch_sharding(mesh, rules),
        )
    return state, setup, step


def test_train_step_mesh_and_orbax_round_trip(devices, tmp_path):
    mesh_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
    mesh, rules = make_mesh(mesh_cfg, devices), mesh_cfg.rules
    rng = np.random.default_rng(0)
    batches = [{"tokens": rng.integers(0, GPT2.vocab_size, (8, 9), dtype=np.int32)} for _ in range(8)]
    state, setup, step = _setup(mesh, rules)
    masks = get_masks(state.opt_state)
    pairs = _pairs(masks, state.params)
    assert pairs
    for m, p in pairs:  # each mask is sharded like its parameter (through optax.tree_map_params)
        assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
    assert sum(not p.sharding.is_fully_replicated for _, p in pairs) > len(pairs) // 2

    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        for b in batches[:4]:
            state, metrics = step(state, shard_batch(b, mesh, rules))
        assert float(metrics["sparsity/overall"]) == pytest.approx(0.5 * (1 - 0.5**3), abs=1e-3)  # t=3 update
        with Checkpointer(tmp_path, async_save=False) as ck:
            ck.save(4, state)
        expected = []
        for b in batches[4:]:
            state, metrics = step(state, shard_batch(b, mesh, rules))
            expected.append(float(metrics["loss"]))
        # the schedule ended at step 5 (t0 + n * dt): final sparsity, exact zeros, sharded masks
        assert float(metrics["sparsity/overall"]) == pytest.approx(0.5, abs=1e-4)
        assert float(metrics["sparsity/stack.blocks.attn.wo/layer_0"]) == pytest.approx(0.5, abs=1e-4)
        final_masks = get_masks(state.opt_state)
        for m, p in _pairs(final_masks, state.params):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim)

        fresh, _, step_b = _setup(mesh, rules)
        with Checkpointer(tmp_path) as ck:
            restored, _ = ck.restore(abstract_train_state(fresh))
        assert int(find_prune_state(restored.opt_state).count) == 4
        losses = []
        for b in batches[4:]:
            restored, metrics = step_b(restored, shard_batch(b, mesh, rules))
            losses.append(float(metrics["loss"]))
    np.testing.assert_array_equal(losses, expected)  # training continues identically
    for (a, _), (b, _) in zip(
        _pairs(get_masks(restored.opt_state), restored.params), _pairs(final_masks, state.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_one_shot_nm_and_head_pruning_in_the_transform():
    _, params, _ = _split()
    grads = jax.tree.map(lambda v: v.replace(jnp.cos(5.0 * v.get_value())), params, is_leaf=_is_var)
    # N:M switched on by a one-shot schedule at step 2; dense before
    tx = prune(optax.sgd(1e-2, momentum=0.9), one_shot_sparsity_schedule(0.5, step=2), kind="nm", n=2, m=4)
    state, p = tx.init(params), params
    update = jax.jit(tx.update)
    overall = []
    for _ in range(4):
        u, state = update(grads, state, p)
        p = optax.apply_updates(p, u)
        overall.append(float(sparsity_metrics(state)["sparsity/overall"]))
    assert overall == pytest.approx([0.0, 0.0, 0.5, 0.5])
    for m, w in _pairs(get_masks(state), p):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
    # whole heads, per layer
    tx = prune(optax.adamw(1e-2, weight_decay=0.1), 0.5, kind="heads")
    state, p = tx.init(params), params
    update = jax.jit(tx.update)
    for _ in range(3):
        u, state = update(grads, state, p)
        p = optax.apply_updates(p, u)
    wq = [w for m, w in _pairs(get_masks(state), p) if w.shape == (2, 32, 4, 8)][0]
    per_head = np.abs(np.asarray(wq)).sum(axis=(1, 3))  # [layers, heads]
    assert np.all((per_head == 0).sum(-1) == 2)


def test_unscanned_stacks_are_masked_per_block():
    cfg = ModelConfig.gpt2(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, scan_layers=False
    )
    _, params, _ = _split(cfg)
    tx = prune(optax.sgd(0.1), 0.25)
    grads = jax.tree.map(lambda v: v.replace(jnp.ones_like(v.get_value())), params, is_leaf=_is_var)
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    metrics = sparsity_metrics(state)
    assert {"sparsity/stack.blocks.0.attn.wq", "sparsity/stack.blocks.1.mlp.wo"} <= set(metrics)
    assert not any("layer_" in k for k in metrics)
    assert all(float(v) == pytest.approx(0.25) for v in metrics.values())
