"""Sharded training: the same steps on 1 device and on 8-device meshes, optimizer-state placement,
restoring a checkpoint onto another mesh, gradient accumulation and the eval step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxslim.checkpoint import Checkpointer
from jaxslim.config import MeshConfig, ModelConfig, OptimConfig
from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer
from jaxslim.sharding import batch_sharding, make_mesh, shard_batch
from jaxslim.training import (
    abstract_train_state,
    create_train_state,
    lm_objective,
    make_eval_step,
    make_train_step,
)

MODEL = ModelConfig.gpt2(vocab_size=96, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
OPTIM = OptimConfig(lr=1e-3, warmup_steps=0, decay="constant")
STEPS = 5


def _batches(n=STEPS, batch=8, width=17, seed=0, repeat=False):
    rng = np.random.default_rng(seed)
    out = [{"tokens": rng.integers(0, MODEL.vocab_size, (batch, width), dtype=np.int32)} for _ in range(n)]
    # one batch seen again and again: its loss must fall at every step
    return [out[0]] * n if repeat else out


def _setup(mesh_cfg, devices, *, accum_steps=1, model=MODEL):
    mesh = make_mesh(mesh_cfg, devices)
    rules = mesh_cfg.rules
    tx = build_optimizer(OPTIM, 100)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        state, setup = create_train_state(lambda: Transformer(model, rngs=nnx.Rngs(0)), tx, mesh, rules)
        step = make_train_step(
            setup, lm_objective, accum_steps=accum_steps, batch_sharding=batch_sharding(mesh, rules)
        )
    return mesh, rules, state, setup, step


def _run(mesh_cfg, devices, batches, **kw):
    mesh, rules, state, setup, step = _setup(mesh_cfg, devices, **kw)
    losses = []
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        for b in batches:
            state, metrics = step(state, shard_batch(b, mesh, rules))
            losses.append(float(metrics["loss"]))
    return np.array(losses), state


@pytest.fixture(scope="module")
def single_device(devices):
    return _run(MeshConfig(data=1), devices[:1], _batches(repeat=True))


@pytest.mark.parametrize(
    "mesh_cfg",
    [MeshConfig(data=8), MeshConfig(data=2, fsdp=2, tensor=2)],
    ids=["data8", "data2-fsdp2-tensor2"],
)
def test_sharded_losses_match_one_device(devices, single_device, mesh_cfg):
    ref_losses, ref_state = single_device
    losses, state = _run(mesh_cfg, devices, _batches(repeat=True))
    assert np.all(np.diff(ref_losses) < 0), ref_losses  # it trains
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def test_optimizer_state_is_sharded_like_the_parameters(devices):
    _, _, state, _, _ = _setup(MeshConfig(data=2, fsdp=2, tensor=2), devices)
    params = jax.tree.leaves(state.params)
    moments = [
        v for name in ("mu", "nu") for _, v in optax.tree_utils.tree_get_all_with_path(state.opt_state, name)
    ]
    assert len(moments) == 2  # Adam's first and second moments
    for moment in moments:
        leaves = jax.tree.leaves(moment)
        assert len(leaves) == len(params)
        for m, p in zip(leaves, params, strict=True):
            assert m.shape == p.shape
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
    # meaningful only if most weights are split across devices
    assert sum(not p.sharding.is_fully_replicated for p in params) > len(params) // 2


def test_checkpoint_restores_onto_another_mesh_and_training_continues(devices, tmp_path):
    batches = _batches(n=4)
    mesh_a, rules, state, setup, step = _setup(MeshConfig(data=8), devices)
    with jax.set_mesh(mesh_a), nnx.logical_axis_rules(rules):
        for b in batches[:2]:
            state, _ = step(state, shard_batch(b, mesh_a, rules))
        with Checkpointer(tmp_path, async_save=True) as ck:
            ck.save(2, state, extra={"data": {"position": 2}})
        expected = []
        for b in batches[2:]:
            state, m = step(state, shard_batch(b, mesh_a, rules))
            expected.append(float(m["loss"]))

    mesh_b, rules, fresh, setup_b, step_b = _setup(MeshConfig(data=2, fsdp=2, tensor=2), devices)
    with jax.set_mesh(mesh_b), nnx.logical_axis_rules(rules):
        with Checkpointer(tmp_path) as ck:
            restored, extra = ck.restore(abstract_train_state(fresh))
        assert extra == {"data": {"position": 2}}
        assert int(restored.step) == 2
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(setup_b.shardings), strict=True):
            assert got.sharding.is_equivalent_to(want, got.ndim)
        losses = []
        for b in batches[2:]:
            restored, m = step_b(restored, shard_batch(b, mesh_b, rules))
            losses.append(float(m["loss"]))
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-5)


def test_gradient_accumulation_equals_one_big_batch(devices):
    batches = _batches(n=2)
    ref, _ = _run(MeshConfig(data=1), devices[:1], batches)
    acc, _ = _run(MeshConfig(data=1), devices[:1], batches, accum_steps=4)
    np.testing.assert_allclose(acc, ref, rtol=0, atol=1e-5)


def test_eval_step_ignores_padding_rows(devices):
    mesh, rules, state, setup, _ = _setup(MeshConfig(data=1), devices[:1])
    tokens = _batches(n=1, batch=4)[0]["tokens"]
    weights = np.zeros((4, 16), np.float32)
    weights[:2] = 1.0
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        ev = make_eval_step(setup, lm_objective)
        full = ev(state, {"tokens": tokens[:2], "weights": weights[:2]})
        padded = ev(state, {"tokens": np.concatenate([tokens[:2], tokens[:2] * 0]), "weights": weights})
    assert float(padded["count"]) == float(full["count"]) == 32
    np.testing.assert_allclose(float(padded["loss_sum"]), float(full["loss_sum"]), rtol=1e-6)


def test_nonfinite_step_is_not_applied(devices):
    mesh, rules, state, setup, _ = _setup(MeshConfig(data=1), devices[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        step = make_train_step(
            setup, lm_objective, loss_terms=[lambda out, batch: (jnp.float32(jnp.nan), {})]
        )
        before = jax.tree.map(np.asarray, state.params)
        state, m = step(state, _batches(n=1)[0])
    assert int(m["nonfinite"]) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
