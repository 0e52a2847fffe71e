"""Routers, dispatch and router losses: hand-built capacity cases, formulas, dispatch-path equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslim.moe import (
    ExpertWeights,
    Routing,
    buffer_positions,
    capacity_moe,
    dropless_moe,
    expert_capacity,
    load_balance_loss,
    priority_order,
    random_routing,
    router_z_loss,
    routing_metrics,
    top_k_routing,
)

E, D, F = 4, 8, 12


def _weights(seed=0, gated=True, bias=True):
    k = jax.random.split(jax.random.key(seed), 6)
    n = lambda i, s: 0.3 * jax.random.normal(k[i], s)  # noqa: E731
    return ExpertWeights(
        wi=n(0, (E, D, F)),
        wo=n(1, (E, F, D)),
        wu=n(2, (E, D, F)) if gated else None,
        bi=n(3, (E, F)) if bias else None,
        bu=n(4, (E, F)) if bias and gated else None,
        bo=n(5, (E, D)) if bias else None,
    )


def _naive(x, routing, w):
    """Token by token: sum over chosen experts of gate * FFN_e(x)."""
    x, experts, gates = np.asarray(x, np.float64), np.asarray(routing.experts), np.asarray(routing.gates)
    ww = {k: None if v is None else np.asarray(v, np.float64) for k, v in w._asdict().items()}
    out = np.zeros_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        for j in range(experts.shape[-1]):
            e = experts[idx + (j,)]
            h = x[idx] @ ww["wi"][e] + ww["bi"][e]
            h = h / (1 + np.exp(-h))  # silu
            h = h * (x[idx] @ ww["wu"][e] + ww["bu"][e])
            out[idx] += gates[idx + (j,)] * (h @ ww["wo"][e] + ww["bo"][e])
    return out


def test_buffer_positions_top1_before_top2():
    # one group of 4 tokens, top-2; expert 0 is everyone's first choice except token 2
    experts = jnp.array([[[0, 1], [0, 2], [1, 0], [0, 1]]])
    pos = np.asarray(buffer_positions(experts, E))
    # first choices of expert 0 in token order: tokens 0, 1, 3 -> slots 0, 1, 2; token 2's second
    # choice of expert 0 comes after all first choices -> slot 3
    assert pos[0, :, 0].tolist() == [0, 1, 0, 2]  # token 2's first choice is expert 1, slot 0
    assert pos[0, :, 1].tolist() == [1, 0, 3, 2]  # expert 1: token 2 (1st) then 0, 3; expert 2: 0


def test_capacity_drops_follow_priority():
    experts = jnp.array([[[0, 1], [0, 2], [1, 0], [0, 1]]])
    gates = jnp.full((1, 4, 2), 0.5)
    w = _weights()
    x = jax.random.normal(jax.random.key(1), (1, 4, D))
    out, kept = capacity_moe(x, Routing(experts, gates), w, jax.nn.silu, capacity=2)
    # capacity 2: expert 0 keeps tokens 0 and 1 (first choices); token 3's first choice and token
    # 2's second choice are dropped; expert 1 keeps token 2 (first) and token 0 (second)
    assert np.asarray(kept)[0].tolist() == [[True, True], [True, True], [True, False], [False, False]]
    # the output of token 3 is zero (fully dropped: passes through the residual)
    np.testing.assert_allclose(np.asarray(out)[0, 3], 0.0, atol=1e-7)
    # token 2 kept only its first choice
    half = Routing(experts[:, 2:3, :1], gates[:, 2:3, :1])
    np.testing.assert_allclose(out[0, 2], _naive(x[:, 2:3], half, w)[0, 0], rtol=1e-5, atol=1e-6)


def test_batch_prioritized_routing_keeps_confident_tokens():
    # 4 tokens all want expert 0, capacity 2; token 3 and 1 are the most confident
    experts = jnp.zeros((1, 4, 1), jnp.int32)
    gates = jnp.array([[[0.3], [0.8], [0.5], [0.9]]])
    r = Routing(experts, gates)
    plain = np.asarray(buffer_positions(experts, E))[0, :, 0] < 2
    bpr = np.asarray(buffer_positions(experts, E, priority_order(r)))[0, :, 0] < 2
    assert plain.tolist() == [True, True, False, False]
    assert bpr.tolist() == [False, True, False, True]


def test_expert_capacity_formula():
    assert expert_capacity(64, 8, 1.25, 4) == 10  # round(1.25 * 64 / 8)
    assert expert_capacity(16, 8, 1.0, 4) == 4  # min capacity
    assert expert_capacity(16, 2, 4.0, 4) == 16  # never more than the group


@pytest.mark.parametrize("k", [1, 2])
def test_infinite_capacity_equals_dropless_and_naive(k):
    w = _weights()
    x = jax.random.normal(jax.random.key(2), (3, 10, D))
    router = jax.random.normal(jax.random.key(3), (D, E))
    r = top_k_routing(x, router, k=k, renormalize=k > 1)
    full, kept = capacity_moe(x, r, w, jax.nn.silu, capacity=10)
    assert bool(jnp.all(kept))
    dropless = dropless_moe(x, r, w, jax.nn.silu)
    np.testing.assert_allclose(full, dropless, atol=1e-5)
    np.testing.assert_allclose(dropless, _naive(x, r, w), rtol=1e-4, atol=1e-5)


def test_dispatch_gradients_agree():
    x = jax.random.normal(jax.random.key(4), (2, 8, D))
    router = jax.random.normal(jax.random.key(5), (D, E))

    def loss(w, x, router, path):
        r = top_k_routing(x, router, k=2)
        if path == "capacity":
            y, _ = capacity_moe(x, r, w, jax.nn.silu, capacity=8)
        else:
            y = dropless_moe(x, r, w, jax.nn.silu)
        return jnp.sum(jnp.sin(y))

    g_cap = jax.grad(loss, argnums=(0, 1, 2))(_weights(), x, router, "capacity")
    g_drop = jax.grad(loss, argnums=(0, 1, 2))(_weights(), x, router, "dropless")
    for a, b in zip(jax.tree.leaves(g_cap), jax.tree.leaves(g_drop), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(g_cap[2]).max()) > 0  # the router learns through the gates


def test_top_k_routing_is_float32_and_renormalises():
    x = jax.random.normal(jax.random.key(6), (1, 5, D)).astype(jnp.bfloat16)
    router = jax.random.normal(jax.random.key(7), (D, E)).astype(jnp.bfloat16)
    r = top_k_routing(x, router, k=2, renormalize=True)
    assert r.probs.dtype == jnp.float32 and r.gates.dtype == jnp.float32
    np.testing.assert_allclose(jnp.sum(r.gates, -1), 1.0, rtol=1e-6)
    expect = jax.nn.softmax(x.astype(jnp.float32) @ router.astype(jnp.float32))
    np.testing.assert_allclose(r.probs, expect, rtol=1e-6)
    assert np.all(np.asarray(r.experts[..., 0]) == np.argmax(expect, -1))


def test_jitter_needs_rng_and_perturbs_inputs():
    x = jax.random.normal(jax.random.key(8), (1, 6, D))
    router = jax.random.normal(jax.random.key(9), (D, E))
    with pytest.raises(ValueError, match="rng"):
        top_k_routing(x, router, k=1, jitter=0.1)
    a = top_k_routing(x, router, k=1, jitter=0.1, rng=jax.random.key(0))
    b = top_k_routing(x, router, k=1)
    assert not np.allclose(a.logits, b.logits)
    # multiplicative noise within 1 +- 0.1: logits move by at most 0.1 * sum |x_i w_i|
    bound = 0.1 * (jnp.abs(x) @ jnp.abs(router))
    assert bool(jnp.all(jnp.abs(a.logits - b.logits) <= bound + 1e-6))


def test_load_balance_and_z_loss_formulas():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, E)), jnp.float32)
    probs = jax.nn.softmax(logits, -1)
    gates, experts = jax.lax.top_k(probs, 2)
    r = Routing(experts, gates, logits, probs)
    # Switch: E * sum_e f_e P_e per group (f: fraction of tokens choosing e among their top-k), mean
    ex, pr = np.asarray(experts), np.asarray(probs)
    per_group = []
    for g in range(2):
        f = np.array([np.mean([(ex[g, s] == e).any() for s in range(6)]) for e in range(E)])
        per_group.append(E * np.sum(f * pr[g].mean(0)))
    np.testing.assert_allclose(load_balance_loss(r, E), np.mean(per_group), rtol=1e-6)
    lse = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
    np.testing.assert_allclose(router_z_loss(logits), np.mean(lse**2), rtol=1e-6)
    m = routing_metrics(r, jnp.ones((2, 6, 2), bool), E)
    np.testing.assert_allclose(m["load"].sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(m["router_confidence"], pr.max(-1).mean(), rtol=1e-6)
    np.testing.assert_allclose(m["router_entropy"], -(pr * np.log(pr)).sum(-1).mean(), rtol=1e-5)
    assert float(m["dropped"]) == 0.0


def test_random_routing_granularities():
    key = jax.random.key(3)
    tok = np.asarray(random_routing(key, (4, 64), E, per="token").experts)[..., 0]
    seq = np.asarray(random_routing(key, (4, 64), E, per="sequence").experts)[..., 0]
    batch = np.asarray(random_routing(key, (4, 64), E, per="batch").experts)[..., 0]
    assert len(np.unique(tok)) == E  # 256 uniform draws cover 4 experts
    assert all(len(np.unique(row)) == 1 for row in seq) and len(np.unique(seq)) > 1
    assert len(np.unique(batch)) == 1
    with pytest.raises(ValueError, match="token"):
        random_routing(key, (4, 64), E, per="layer")
