"""MoE models: placement, THOR views and inference modes, upcycling, expert sharding, bad configs."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.cli.presets import load_preset
from jaxslim.config import MeshConfig, ModelConfig, MoeConfig, TrainConfig
from jaxslim.engine.losses import causal_lm_loss
from jaxslim.engine.step import lm_objective
from jaxslim.grow import upcycle
from jaxslim.models import Transformer, stack_layers, unstack_layers
from jaxslim.moe import check_expert_mesh, consistency_objective, lm_positions, moe_loss_term
from jaxslim.sharding import create_sharded, make_mesh
from jaxslim.training import train

TINY = dict(vocab_size=64, d_model=16, n_layers=4, n_heads=2, d_ff=32, max_len=16)


def _gpt(moe=None, **kw):
    return ModelConfig.gpt2(**{**TINY, **kw}, moe=moe)


def _tokens(b=4, t=12, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 64, (b, t)), jnp.int32)


def test_experts_every_other_layer_and_scanned_groups():
    cfg = _gpt(MoeConfig(num_experts=4, every=2, offset=0))
    model = unstack_layers(Transformer(cfg, rngs=nnx.Rngs(0)))
    kinds = ["moe" if b.moe is not None else "mlp" for b in model.stack.blocks]
    assert kinds == ["moe", "mlp", "moe", "mlp"]
    assert model.stack.blocks[0].moe.wi.shape == (4, 16, 32)
    scanned = Transformer(cfg, rngs=nnx.Rngs(0))
    assert scanned.stack.blocks[0].moe.wi.shape == (2, 4, 16, 32)  # [groups, experts, d, f]
    assert scanned.stack.blocks[0].moe.wi.get_metadata()["out_sharding"] == ("layers", "exp", "embed", "mlp")


@pytest.mark.parametrize(
    "moe",
    [
        MoeConfig(num_experts=4, top_k=2, dispatch="capacity", jitter=0.1),
        MoeConfig(num_experts=4, top_k=1, dispatch="dropless", every=1),
        MoeConfig(num_experts=2, router="stochastic", granularity="token", every=2, offset=1),
    ],
    ids=["capacity", "dropless", "stochastic"],
)
def test_scanned_and_unscanned_stacks_agree(moe):
    scanned = Transformer(_gpt(moe), rngs=nnx.Rngs(0))
    unscanned = unstack_layers(scanned)
    key = jax.random.key(3)
    a, b = scanned(_tokens(), rng=key), unscanned(_tokens(), rng=key)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    for k in a.moe:
        np.testing.assert_allclose(a.moe[k], b.moe[k], atol=1e-6)
    again = stack_layers(unscanned)
    np.testing.assert_allclose(again(_tokens(), rng=key).logits, a.logits, atol=1e-6)


def _thor(**kw):
    moe = MoeConfig(num_experts=4, router="stochastic", dispatch="dropless", **kw)
    return Transformer(_gpt(moe), rngs=nnx.Rngs(1))


def test_thor_views_are_independent_draws():
    model, tokens = _thor(), _tokens()
    # batch-level draws: the load is one-hot, one expert per expert layer
    choices = jax.jit(lambda r: jnp.argmax(model(tokens, rng=r).moe["load"], -1))
    same, different = 0, 0
    for seed in range(48):
        k1, k2 = jax.random.split(jax.random.key(seed), 2)  # the two views' keys
        c1, c2 = np.asarray(choices(k1)), np.asarray(choices(k2))
        same += int(np.sum(c1 == c2))
        different += int(np.sum(c1 != c2))
    # 96 layer draws: independent uniform draws agree with probability 1/4 (24 expected)
    assert 10 <= same <= 40, (same, different)
    # each layer draws separately: layer 0 and layer 2 do not always agree
    layers = np.array([np.asarray(choices(jax.random.key(s))) for s in range(24)])
    assert np.mean(layers[:, 0] == layers[:, 1]) < 0.6


def test_consistency_objective_matches_direct_computation():
    model, tokens = _thor(), _tokens(t=13)
    batch = {"tokens": tokens}
    alpha = 5.0
    objective = consistency_objective(lm_objective, alpha, lm_positions)
    rng = jax.random.key(7)
    loss, metrics, _ = jax.jit(lambda r: objective(model, batch, r))(rng)
    k1, k2 = jax.random.split(rng, 2)
    l1 = model(tokens[:, :-1], rng=k1).logits
    l2 = model(tokens[:, :-1], rng=k2).logits
    ce1 = causal_lm_loss(l1, tokens[:, 1:])[0]
    ce2 = causal_lm_loss(l2, tokens[:, 1:])[0]
    p1 = jax.nn.softmax(np.asarray(l1, np.float64))
    p2 = jax.nn.softmax(np.asarray(l2, np.float64))
    kl = np.mean(0.5 * np.sum((p1 - p2) * (np.log(p1) - np.log(p2)), -1))
    assert kl > 0  # the draws differ for this key
    np.testing.assert_allclose(metrics["thor/consistency"], kl, rtol=1e-4)
    np.testing.assert_allclose(loss, float(ce1 + ce2) + alpha * kl, rtol=1e-5)
    # gradients flow through both views
    g = jax.grad(lambda m: objective(m, batch, rng)[0])(model)
    assert float(jnp.abs(g.stack.blocks[0].moe.wi[...]).sum()) > 0


def _layer_outputs(model, x):
    """Each expert's output for x at the first expert layer (eval mode 'fixed')."""
    layer = unstack_layers(model).stack.blocks[0].moe
    outs = []
    for e in range(layer.mcfg.num_experts):
        layer.mcfg = dataclasses.replace(layer.mcfg, eval_mode="fixed", eval_expert=e)
        layer.deterministic = True
        outs.append(np.asarray(layer(x)[0]))
    return layer, np.stack(outs)


def test_inference_modes():
    model = _thor()
    x = jax.random.normal(jax.random.key(0), (6, 10, 16))
    layer, per_expert = _layer_outputs(model, x)
    assert not np.allclose(per_expert[0], per_expert[1], atol=1e-4)
    layer.mcfg = dataclasses.replace(layer.mcfg, eval_mode="mean")
    np.testing.assert_allclose(layer(x)[0], per_expert.mean(0), atol=1e-6)

    def which(y):  # [b, t] index of the expert each token's output came from
        err = np.abs(np.asarray(y)[None] - per_expert).max(-1)
        assert np.all(err.min(0) < 1e-5)
        return err.argmin(0)

    layer.mcfg = dataclasses.replace(layer.mcfg, eval_mode="random_sequence")
    seq = which(layer(x, rng=jax.random.key(1))[0])
    assert all(len(set(row)) == 1 for row in seq) and len(set(seq[:, 0])) > 1
    layer.mcfg = dataclasses.replace(layer.mcfg, eval_mode="random_token")
    tok = which(layer(x, rng=jax.random.key(1))[0])
    assert all(len(set(row)) > 1 for row in tok)
    # without a key, evaluation is reproducible (key 0)
    np.testing.assert_array_equal(layer(x)[0], layer(x)[0])
    # model.eval() / model.train() switch every expert layer
    model.eval()
    assert model.stack.blocks[0].moe.deterministic  # the scanned group's expert block
    np.testing.assert_array_equal(model(_tokens()).logits, model(_tokens()).logits)
    model.train()
    assert not model.stack.blocks[0].moe.deterministic
    with pytest.raises(ValueError, match="rng"):
        model(_tokens())


@pytest.mark.parametrize(
    "moe",
    [
        MoeConfig(num_experts=4, top_k=2, renormalize=True, dispatch="dropless"),
        MoeConfig(num_experts=4, top_k=2, renormalize=True, dispatch="capacity", train_capacity_factor=4.0),
        MoeConfig(num_experts=3, router="stochastic", granularity="token", every=1, dispatch="dropless"),
        MoeConfig(num_experts=2, router="stochastic", granularity="batch", consistency_alpha=5.0),
    ],
    ids=["topk-dropless", "topk-capacity", "thor-token", "thor-batch"],
)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_upcycling_preserves_the_function(moe, arch):
    make = ModelConfig.gpt2 if arch == "gpt2" else ModelConfig.llama
    dense = Transformer(make(**TINY), rngs=nnx.Rngs(0))
    tokens = _tokens(t=13)
    batch = {"tokens": tokens}
    up = upcycle(dense, moe, seed=1)
    assert up.cfg.moe == moe and up.cfg.scan_layers
    rng = jax.random.key(5)
    dense_loss = lm_objective(dense, batch, rng)[0]
    moe_loss = lm_objective(up, batch, rng)[0]
    assert abs(float(moe_loss) - float(dense_loss)) <= 1e-6
    # unscanned models upcycle too, into the same layout
    up2 = upcycle(unstack_layers(dense), moe, seed=1)
    assert not up2.cfg.scan_layers
    assert abs(float(lm_objective(up2, batch, rng)[0]) - float(dense_loss)) <= 1e-6


def test_upcycling_noise_and_drop_upcycling_break_symmetry():
    dense = unstack_layers(Transformer(_gpt(), rngs=nnx.Rngs(0)))
    moe = MoeConfig(num_experts=4, top_k=2, renormalize=True, dispatch="dropless")
    w = np.asarray(dense.stack.blocks[0].mlp.wi[...])
    noisy = upcycle(dense, moe, noise=1e-3).stack.blocks[0].moe.wi[...]
    diff = np.asarray(noisy) - w[None]
    assert 0.5e-3 < diff.std() < 2e-3 and not np.allclose(noisy[0], noisy[1])
    dropped = upcycle(dense, moe, drop_fraction=0.25).stack.blocks[0].moe
    changed = np.any(np.asarray(dropped.wi[...]) != w[None], axis=1)  # [E, f] re-drawn units
    assert np.all(changed.sum(-1) == 8)  # 25% of 32 units in every expert
    assert not np.array_equal(changed[0], changed[1])  # a different subset per expert
    wo_changed = np.any(
        np.asarray(dropped.wo[...]) != np.asarray(dense.stack.blocks[0].mlp.wo[...])[None], -1
    )
    np.testing.assert_array_equal(wo_changed, changed)  # the same units in wo
    with pytest.raises(ValueError, match="already has experts"):
        upcycle(Transformer(_gpt(moe), rngs=nnx.Rngs(0)), moe)
    with pytest.raises(ValueError, match="d_ff"):
        upcycle(dense, dataclasses.replace(moe, d_ff=64))


MESHES = {
    "single": None,
    "expert2_data4": MeshConfig(data=4, expert=2),
    "expert8": MeshConfig(data=1, expert=8),
}


@pytest.mark.parametrize(
    "moe",
    [
        MoeConfig(num_experts=8, top_k=2, dispatch="capacity", z_loss_coef=1e-3),
        MoeConfig(num_experts=8, top_k=2, dispatch="dropless", z_loss_coef=1e-3),
        MoeConfig(num_experts=8, router="stochastic", granularity="token", dispatch="capacity"),
    ],
    ids=["capacity", "dropless", "stochastic"],
)
def test_loss_is_the_same_on_expert_parallel_meshes(devices, moe):
    cfg = _gpt(moe, n_layers=2)
    tokens = _tokens(b=8, t=13)
    term = moe_loss_term(0.01, 1e-3)

    def loss(model, tokens):
        task, _, out = lm_objective(model, {"tokens": tokens}, jax.random.key(2))
        return task + term(out, None)[0]

    losses, grads = {}, {}
    for name, mesh_cfg in MESHES.items():
        if mesh_cfg is None:
            model = Transformer(cfg, rngs=nnx.Rngs(0))
            val, g = jax.jit(jax.value_and_grad(loss))(model, tokens)
        else:
            mesh = make_mesh(mesh_cfg)
            with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
                model = create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh, mesh_cfg.rules)
                wi = model.stack.blocks[0].moe.wi.get_value()
                # experts are split over the expert axis: each device holds E / expert of them
                assert wi.sharding.spec[1] == "expert"  # [groups, experts, d, f]
                assert wi.addressable_shards[0].data.shape[1] == 8 // mesh_cfg.expert
                val, g = jax.jit(jax.value_and_grad(loss))(model, tokens)
        losses[name] = float(val)
        grads[name] = np.asarray(g.stack.blocks[0].moe.wi[...])
    for name in MESHES:
        assert abs(losses[name] - losses["single"]) <= 1e-5 * abs(losses["single"]), losses
        np.testing.assert_allclose(grads[name], grads["single"], atol=1e-6)


def test_bad_configs_are_named():
    with pytest.raises(
        ValueError, match=r"MoeConfig.top_k must be an integer in \[1, num_experts=2\], got 3"
    ):
        MoeConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="train_capacity_factor"):
        MoeConfig(train_capacity_factor=0)
    with pytest.raises(ValueError, match="eval_capacity_factor"):
        MoeConfig(eval_capacity_factor=-1.0)
    with pytest.raises(ValueError, match="top_k must be 1 for router='stochastic'"):
        MoeConfig(router="stochastic", top_k=2)
    with pytest.raises(ValueError, match="offset"):
        MoeConfig(every=2, offset=2)
    with pytest.raises(ValueError, match="consistency_alpha needs router='stochastic'"):
        MoeConfig(consistency_alpha=1.0)
    with pytest.raises(ValueError, match="must\ndivide|must divide n_layers"):
        _gpt(MoeConfig(every=3))
    with pytest.raises(ValueError, match="per-layer widths"):
        _gpt(MoeConfig(), scan_layers=False, layer_ffn=(32, 16, 32, 32))
    base = load_preset("switch_shakespeare:tiny")
    with pytest.raises(ValueError, match="mesh.expert=3 must divide model.moe.num_experts=4"):
        dataclasses.replace(base, mesh=MeshConfig(data=-1, expert=3))
    mesh = make_mesh(MeshConfig(data=1, expert=8))
    with pytest.raises(ValueError, match="expert axis \\(8 devices\\) must divide"):
        check_expert_mesh(base.model, mesh)
    model = Transformer(_gpt(MoeConfig(num_experts=4, group_size=5)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="group_size=5 must divide the 48 tokens"):
        model(_tokens())
    with pytest.raises(ValueError, match="neuron_mask"):
        model(_tokens(), neuron_mask=jnp.ones((4, 32)))
    assert isinstance(base, TrainConfig)


@pytest.mark.parametrize("preset", ["switch_shakespeare:tiny", "thor_shakespeare:tiny"])
def test_training_logs_routing_metrics_every_step(tmp_path, preset):
    cfg = load_preset(preset)
    cfg = cfg.replace(workdir=str(tmp_path / "run"), tensorboard=False, sample_tokens=0, log_every=1, steps=6)
    result = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "step" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for r in steps:
        assert {"moe/load_max/0", "moe/load_min/0", "moe/dropped/0"} <= set(r)
        loads = [r[f"moe/load/0/{e}"] for e in range(cfg.model.moe.num_experts)]
        assert sum(loads) == pytest.approx(1.0, abs=1e-5)
        assert max(loads) * len(loads) == pytest.approx(r["moe/load_max/0"], rel=1e-5)
        assert np.isfinite(r["loss"])
    if cfg.model.moe.router == "topk":
        assert all("moe/aux_loss" in r and "moe/router_entropy/0" in r for r in steps)
        assert any(r["moe/dropped/0"] > 0 for r in steps)  # capacity 1.25 drops some tokens
    else:
        assert all("thor/consistency" in r for r in steps)
        # the logged loss is the two views' CE plus alpha * consistency
        for r in steps:
            assert r["loss"] == pytest.approx(2 * r["thor/ce"] + 5.0 * r["thor/consistency"], rel=1e-5)
    assert np.isfinite(result.eval_metrics["eval_loss"])


def test_capacity_dispatch_is_two_all_to_alls_per_expert_layer(devices):
    """Expert parallelism through sharding constraints: tokens go to their experts' devices and
    back with one all-to-all each way; the expert weights are never gathered."""
    import re

    moe = MoeConfig(num_experts=8, top_k=2, dispatch="capacity", every=1)
    cfg = _gpt(moe, n_layers=2, d_model=32, d_ff=64)
    mesh_cfg = MeshConfig(data=1, expert=8)
    mesh = make_mesh(mesh_cfg)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
        model = create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh, mesh_cfg.rules)
        graphdef, state = nnx.split(model)
        fwd = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t).logits.sum())
        hlo = fwd.lower(state, _tokens(b=8, t=16)).compile().as_text()
    all_to_all = re.findall(r"all-to-all(?:-start)?\(", hlo)
    # one scanned group body holds the expert layer; the scan runs it n_layers times
    assert len(all_to_all) == 2, all_to_all
    gathered = [line for line in hlo.splitlines() if re.search(r"all-gather(?:-start)?\(", line)]
    assert not any("[8,32,64]" in line or "[2,8,32,64]" in line for line in gathered), gathered


def test_training_upcycles_a_dense_model_from_init_from(tmp_path):
    from jaxslim.convert import save_jaxslim
    from jaxslim.data import TextData
    from jaxslim.engine.state import merge_model

    dense_cfg = load_preset("shakespeare_gpt:tiny").replace(
        workdir=str(tmp_path / "dense"), tensorboard=False, sample_tokens=0, steps=4
    )
    dense = train(dense_cfg, progress=False)
    dense_model = merge_model(dense.setup, dense.state)
    save_jaxslim(dense_model, tmp_path / "dense_model")
    moe = MoeConfig(num_experts=4, top_k=2, renormalize=True, dispatch="dropless", aux_loss_coef=0.0)
    cfg = dense_cfg.replace(
        model=dense.config.model.replace(moe=moe),
        workdir=str(tmp_path / "moe"),
        init_from=str(tmp_path / "dense_model"),
        log_every=1,
        steps=2,
    )
    train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "moe" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r.get("step") == 1 and "loss" in r)
    batch = next(TextData(cfg.data).train_iterator())  # the batch of the upcycled run's first step
    dense_loss = float(lm_objective(dense_model, {"tokens": jnp.asarray(batch["tokens"])}, None)[0])
    assert first["loss"] == pytest.approx(dense_loss, abs=1e-5)
    with pytest.raises(ValueError, match="d_model: 64 in .* 32 in the config"):
        train(
            cfg.replace(model=cfg.model.replace(d_model=32), workdir=str(tmp_path / "bad")),
            progress=False,
        )


@pytest.mark.parametrize("per", ["token", "sequence"])
def test_folded_views_for_per_token_and_per_sequence_draws(per):
    """Per-token / per-sequence draws run both views as one doubled batch (no vmap of ragged_dot)."""
    moe = MoeConfig(num_experts=4, router="stochastic", granularity=per, dispatch="dropless")
    model = Transformer(_gpt(moe), rngs=nnx.Rngs(1))
    tokens = _tokens(t=13)
    objective = consistency_objective(lm_objective, 5.0, lm_positions, fold_views=True)
    rng = jax.random.key(4)
    (loss, metrics), grads = jax.jit(
        jax.value_and_grad(lambda m: objective(m, {"tokens": tokens}, rng)[:2], has_aux=True)
    )(model)
    logits = model(jnp.concatenate([tokens, tokens])[:, :-1], rng=rng).logits
    l1, l2 = jnp.split(logits, 2)
    ce = causal_lm_loss(logits, jnp.concatenate([tokens, tokens])[:, 1:])[0]
    p1, p2 = (jax.nn.softmax(np.asarray(a, np.float64)) for a in (l1, l2))
    kl = np.mean(0.5 * np.sum((p1 - p2) * (np.log(p1) - np.log(p2)), -1))
    assert kl > 0
    np.testing.assert_allclose(loss, 2 * float(ce) + 5.0 * kl, rtol=1e-5)
    assert float(metrics["count"]) == tokens.shape[0] * (tokens.shape[1] - 1)  # one view's tokens
    assert float(jnp.abs(grads.stack.blocks[0].moe.wi[...]).sum()) > 0
