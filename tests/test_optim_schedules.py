"""Schedules against their closed forms (float64, <= 1e-9), resumable from any step, and the
optimizer config's schedule choices; gradient noise statistics, masking and sharding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxslim.config import OptimConfig
from jaxslim.optim import (
    InfiniteSchedule,
    add_gradient_noise,
    branch_anneal,
    build_optimizer,
    build_schedule,
    infinite_schedule,
    noise_variance,
    repeated_cosine_schedule,
    wsd_schedule,
)

STEPS = list(range(0, 1201, 7)) + [0, 1, 99, 100, 101, 149, 150, 151, 799, 800, 801, 999, 1000, 1001, 5000]


def _close(schedule, closed_form):
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(STEPS, jnp.int64)), np.float64)
    want = np.array([closed_form(t) for t in STEPS])
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_wsd_closed_form(shape):
    peak, lo, total, warm, dec = 3e-3, 3e-5, 1000, 100, 200

    def f(t):
        if t < warm:
            return peak * t / warm
        if t < total - dec:
            return peak
        p = min((t - (total - dec)) / dec, 1.0)
        left = {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "sqrt": 1 - math.sqrt(p)}[shape]
        return lo + (peak - lo) * left

    _close(
        wsd_schedule(peak, total_steps=total, warmup_steps=warm, decay_steps=dec, final_lr=lo, decay=shape), f
    )


@pytest.mark.parametrize("cooldown", ["cosine", "linear", "inv_sqrt"])
def test_infinite_closed_form_and_branch_anneal(cooldown):
    peak, const, lo, warm, cd, alpha = 1.0, 0.25, 0.01, 100, 50, 10.0

    def f(t, anneal_at=None, anneal_steps=0):
        if t < warm:
            return peak * t / warm
        if t < warm + cd:
            p = (t - warm) / cd
            if cooldown == "cosine":
                return const + (peak - const) * 0.5 * (1 + math.cos(math.pi * p))
            if cooldown == "linear":
                return const + (peak - const) * (1 - p)
            h = lambda q: 1 / math.sqrt(1 + alpha * q) - 1  # noqa: E731
            return peak + (const - peak) * h(p) / h(1)
        if anneal_at is None or t < anneal_at:
            return const
        s = min(t - anneal_at, anneal_steps)
        return const * math.exp(-math.log(const / lo) * s / anneal_steps)

    sched = infinite_schedule(
        peak, const, warmup_steps=warm, cooldown_steps=cd, cooldown=cooldown, alpha=alpha
    )
    _close(sched, f)
    branched = branch_anneal(sched, 800, anneal_steps=200, final_lr=lo)
    _close(branched, lambda t: f(t, 800, 200))
    assert isinstance(branched, InfiniteSchedule) and branched.anneal_start == 800


def test_repeated_cosine_closed_form():
    peak, lo, cycle, warm = 2.0, 0.2, 300, 30

    def f(t):
        c = t % cycle
        if c < warm:
            return peak * c / warm
        p = (c - warm) / (cycle - warm)
        return lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * p))

    _close(repeated_cosine_schedule(peak, cycle_steps=cycle, warmup_steps=warm, final_lr=lo), f)


def test_schedules_resume_from_any_step():
    """An injected schedule resumed from a state saved at any step continues with the same rates."""
    sched = infinite_schedule(
        1e-2, 5e-3, warmup_steps=5, cooldown_steps=5, anneal_start=20, anneal_steps=10, final_lr=1e-4
    )
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=sched)
    params = {"w": jnp.ones(3)}
    step = jax.jit(lambda s: tx.update(params, s, params)[1])

    def rates(state, n):
        out = []
        for _ in range(n):
            state = step(state)
            out.append(float(state.hyperparams["learning_rate"]))
        return out, state

    full, _ = rates(tx.init(params), 40)
    for k in (1, 9, 10, 23):
        _, saved = rates(tx.init(params), k)
        restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), saved)  # as a checkpoint would
        resumed, _ = rates(restored, 40 - k)
        assert resumed == full[k:], k


@pytest.mark.parametrize(
    "build,match",
    [
        (
            lambda: wsd_schedule(-1.0, total_steps=10, warmup_steps=1, decay_steps=1),
            r"peak_lr must be a learning rate >= 0, got -1.0",
        ),
        (lambda: wsd_schedule(1.0, total_steps=10, warmup_steps=6, decay_steps=6), r"exceed total_steps=10"),
        (
            lambda: wsd_schedule(1.0, total_steps=10, warmup_steps=1, decay_steps=1, decay="exp"),
            r"decay must be one of",
        ),
        (
            lambda: infinite_schedule(
                1.0, 0.5, warmup_steps=10, cooldown_steps=10, anneal_start=5, anneal_steps=5, final_lr=0.1
            ),
            r"anneal_start=5 must be in the constant phase, which starts at step 20",
        ),
        (lambda: infinite_schedule(1.0, 0.5, cooldown="cubic"), r"cooldown must be one of"),
        (lambda: infinite_schedule(1.0, -0.5), r"constant_lr must be a learning rate >= 0, got -0.5"),
        (
            lambda: repeated_cosine_schedule(1.0, cycle_steps=10, warmup_steps=10),
            r"warmup_steps=10 must be < cycle_steps=10",
        ),
        (
            lambda: OptimConfig(trust_min=2.0, trust_max=1.0),
            r"OptimConfig.trust_min=2.0 must not exceed OptimConfig.trust_max=1.0",
        ),
        (lambda: OptimConfig(noise_eta=-0.1), r"OptimConfig.noise_eta must be a number >= 0, got -0.1"),
        (lambda: OptimConfig(name="adam"), r"OptimConfig.name must be one of"),
        (
            lambda: OptimConfig(decay="wsd", decay_shape="inv_sqrt"),
            r"OptimConfig.decay_shape must be one of \('', 'linear', 'cosine', 'sqrt'\)",
        ),
        (
            lambda: OptimConfig(decay="repeated_cosine", cycle_steps=0),
            r"OptimConfig.cycle_steps=0 must exceed warmup_steps=100",
        ),
        (
            lambda: OptimConfig(agvm_modules=("(",)),
            r"OptimConfig.agvm_modules: '\(' is not a regular expression",
        ),
        (lambda: add_gradient_noise(-0.01), r"gradient noise eta must be a number >= 0, got -0.01"),
    ],
)
def test_bad_schedule_and_config_values_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "kw",
    [
        dict(decay="wsd", decay_shape="sqrt", decay_fraction=0.25),
        dict(decay="infinite", cooldown_steps=20, decay_shape="inv_sqrt", decay_fraction=0.1),
        dict(decay="repeated_cosine", cycle_steps=40),
        dict(decay="cosine"),
    ],
)
def test_config_schedule_is_the_optimizers_learning_rate(kw):
    cfg = OptimConfig(name="lamb", lr=1e-2, warmup_steps=10, **kw)
    sched = build_schedule(cfg, 100)
    tx = build_optimizer(cfg, 100)
    params = {"w": jnp.ones((3, 3))}
    state = tx.init(params)
    step = jax.jit(lambda s: tx.update(params, s, params)[1])
    for t in range(100):
        state = step(state)  # the state after update t holds the rate that update used
        assert float(state.hyperparams["learning_rate"]) == pytest.approx(
            float(sched(t)), rel=1e-6, abs=1e-12
        ), t
    assert float(sched(99)) <= 1e-2 * (cfg.final_lr_ratio if kw["decay"] != "repeated_cosine" else 1.0) + 1e-3


# -- gradient noise -------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.01, 0.3, 1.0])
def test_noise_variance_matches_the_annealing(eta):
    gamma = 0.55
    n = 400_000
    tx = add_gradient_noise(eta, gamma, seed=3)
    zeros = {"a": jnp.zeros((n // 2,)), "b": jnp.zeros((n // 4, 2))}
    state = tx.init(zeros)
    update = jax.jit(tx.update)
    for t in range(60):
        u, state = update(zeros, state)
        if t in (0, 1, 9, 59):
            x = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(u)])
            want = eta / (1 + t) ** gamma
            assert float(noise_variance(eta, gamma, t)) == pytest.approx(want, rel=1e-6)
            # the sample variance of 4e5 normals has a relative standard error of 0.22 %
            assert np.var(x) == pytest.approx(want, rel=0.01), t
            assert abs(np.mean(x)) < 5 * math.sqrt(want / n)


def test_noise_mask_leaves_excluded_gradients_untouched():
    g = {"kernel": jnp.ones((64, 64)), "bias": jnp.ones((64,))}
    tx = add_gradient_noise(0.3, seed=0, mask={"kernel": True, "bias": False})
    u, _ = jax.jit(tx.update)(g, tx.init(g))
    np.testing.assert_array_equal(np.asarray(u["bias"]), np.ones(64))
    assert np.std(np.asarray(u["kernel"])) > 0.3
    with pytest.raises(ValueError, match="noise mask does not match the params"):
        add_gradient_noise(0.3, mask={"kernel": True}).init(g)


def test_noise_is_generated_sharded_without_gathers(devices):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    g = {"w": jax.device_put(jnp.zeros((64, 32)), sharding)}
    tx = add_gradient_noise(1.0, seed=0)
    state = tx.init(g)
    update = jax.jit(tx.update, out_shardings=(sharding, None))
    hlo = update.lower(g, state).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    u, _ = update(g, state)
    assert u["w"].sharding.is_equivalent_to(sharding, 2)
    # each device's shard is its own noise, not a copy of another's
    shards = [np.asarray(s.data) for s in u["w"].addressable_shards]
    assert all(not np.allclose(shards[0], s) for s in shards[1:])


@pytest.mark.parametrize(
    "kw",
    [
        dict(name="lamb", lamb_preset="apex"),
        dict(name="lamb", lamb_preset="deepspeed", trust_max=2.0),
        dict(name="lamb", trust_mask="all", bias_correction=False, trust_min=0.1, trust_max=5.0),
        dict(name="lars", b1=0.9, trust_coefficient=0.01),
        dict(name="adamw", noise_eta=0.01),
    ],
)
def test_every_config_optimizer_builds_and_steps(kw):
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, decay="constant", **kw)
    tx = build_optimizer(cfg, 10)
    params = {"w": 10 * jnp.ones((4, 3)), "b": jnp.zeros(3)}
    state = tx.init(params)
    u, state = jax.jit(tx.update)(params, state, params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(u))
    assert float(jnp.abs(u["w"]).max()) > 0
    if kw.get("trust_max") == 2.0:  # the config's clamp replaces DeepSpeed's [0.01, 10]
        from jaxslim.optim import trust_ratio_metrics

        assert float(trust_ratio_metrics(state)["trust_ratio/max"]) == pytest.approx(2.0)
