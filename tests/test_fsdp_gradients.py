"""FSDP gradients (weight gradients constrained to the weights' sharding, the embedding lookup's
custom gradient, the chunked LM loss) equal the plain single-device gradients and come out in the
weights' own sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxslim.config import MeshConfig, ModelConfig
from jaxslim.engine.step import lm_objective
from jaxslim.models import Transformer
from jaxslim.sharding import batch_sharding, make_mesh, step_context
from jaxslim.training import create_train_state


def _grad_fn(graphdef, rest):
    def loss(params, tokens):
        return lm_objective(nnx.merge(graphdef, params, rest), {"tokens": tokens}, None)[0]

    return jax.grad(loss)


@pytest.mark.parametrize(
    "mesh_cfg", [MeshConfig(data=2, fsdp=4), MeshConfig(data=2, fsdp=2, context=2)], ids=["fsdp", "context"]
)
def test_sharded_gradients_equal_single_device(devices, monkeypatch, mesh_cfg):
    import jaxslim.engine.step as step_mod

    # a logits budget of 8 positions per device: the loss runs in pieces too
    monkeypatch.setattr(step_mod, "LM_LOSS_LOGITS_BYTES", 8 * 128 * 4)
    monkeypatch.setattr(step_mod, "LM_LOSS_WHOLE_BYTES", 0)
    cfg = ModelConfig.llama(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
    make = lambda: Transformer(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    tokens = jax.random.randint(jax.random.key(1), (8, 17), 0, 128)
    want = _grad_fn(*nnx.split(make(), nnx.Param, ...)[::2])(nnx.split(make(), nnx.Param, ...)[1], tokens)

    mesh, rules = make_mesh(mesh_cfg, devices), mesh_cfg.rules
    state, setup = create_train_state(make, optax.sgd(0.1), mesh, rules)
    grad = _grad_fn(setup.graphdef, state.rest)

    def sharded(params, tokens):
        with step_context(mesh, rules):
            return grad(params, tokens)

    got = jax.jit(sharded)(state.params, jax.device_put(tokens, batch_sharding(mesh, rules)))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=1e-6)
    # the gradients come out in the weights' own (FSDP) sharding
    for g, s in zip(jax.tree.leaves(got), jax.tree.leaves(setup.shardings.params), strict=True):
        assert g.sharding.is_equivalent_to(s, g.ndim)
    assert jnp.isfinite(sum(jnp.sum(x) for x in jax.tree.leaves(got)))


def test_chunked_lm_loss_equals_the_whole_loss_and_its_gradient():
    """Scoring every 4th position at a time (4 strided pieces) gives the loss and the gradient of
    all 16 positions at once."""
    from jaxslim.engine.losses import causal_lm_loss, chunked_causal_lm_loss

    ks = jax.random.split(jax.random.key(3), 3)
    hidden = jax.random.normal(ks[0], (2, 16, 8))
    w = jax.random.normal(ks[1], (8, 32))
    targets = jax.random.randint(ks[2], (2, 16), 0, 32)
    weights = jnp.ones((2, 16)).at[1, 11:].set(0.0)  # padding at the end of one row

    def whole(w):
        return causal_lm_loss(hidden @ w, targets, weights)[0]

    def chunked(w):
        return chunked_causal_lm_loss(lambda h: h @ w, hidden, targets, weights, chunk=4)[0]

    np.testing.assert_allclose(float(chunked(w)), float(whole(w)), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jax.grad(chunked)(w)), np.asarray(jax.grad(whole)(w)), rtol=1e-5, atol=1e-6
    )


def test_loss_pieces_are_the_fewest_that_fit_the_logits_budget(devices):
    from jaxslim.engine.step import loss_pieces

    # Llama-3-8B's vocabulary, one sequence of 8192 tokens: 4.2 GB of float32 logits on one device
    assert loss_pieces(1, 8192, 128256, 512 * 2**20) == 8
    assert loss_pieces(1, 8192, 128256, 2**40) == 1
    assert loss_pieces(1, 7, 128256, 1) == 7  # nothing fits: one position at a time
    # under a mesh only each device's share counts: 8 sequences over data x fsdp = 4 and the
    # length over a context axis of 2, so 4x fewer pieces than on one device... and a piece's
    # length must still split over the context axis
    mesh_cfg = MeshConfig(data=2, fsdp=2, context=2)
    mesh, rules = make_mesh(mesh_cfg, devices), mesh_cfg.rules
    with step_context(mesh, rules):
        assert loss_pieces(8, 64, 1000, 2 * 32 * 1000 * 4) == 1
        assert loss_pieces(8, 64, 1000, 2 * 8 * 1000 * 4) == 4
        assert loss_pieces(8, 64, 1000, 1) == 32  # pieces of 2 positions, one per context device
    assert loss_pieces(8, 64, 1000, 2 * 8 * 1000 * 4) == 32
