"""Growth operators on models: width x k and depth growth keep the logits; copies and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.config import ModelConfig, MoeConfig
from jaxslim.grow import deepen_plan, grow_depth, grow_width
from jaxslim.models import Transformer, unstack_layers

TINY = dict(vocab_size=64, d_model=16, n_layers=2, n_heads=4, d_ff=32, max_len=16)
FAMILIES = {
    "gpt2": ModelConfig.gpt2(**TINY),
    "llama-gqa": ModelConfig.llama(**TINY, n_kv_heads=2),
    "bert": ModelConfig.bert(**TINY, head="mlm"),
    "llama-moe": ModelConfig.llama(**TINY, moe=MoeConfig(num_experts=4, top_k=2, dispatch="dropless")),
}
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 11)), jnp.int32)


def _logits(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s: nnx.merge(graphdef, s)(TOKENS).logits)(state)


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unscanned"])
@pytest.mark.parametrize("family", FAMILIES)
def test_width_growth_keeps_the_logits(family, scan):
    small = Transformer(FAMILIES[family].replace(scan_layers=scan), rngs=nnx.Rngs(0))
    ref = _logits(small)
    for k in (2, 3):
        big = grow_width(small, k)
        cfg = big.cfg
        assert (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_ff) == (
            16 * k,
            4 * k,
            small.cfg.kv_heads * k,
            32 * k,
        )
        assert cfg.head_dim_ == small.cfg.head_dim_ and cfg.scan_layers == scan
        np.testing.assert_allclose(_logits(big), ref, atol=1e-5)


def test_width_growth_is_block_diagonal():
    small = unstack_layers(Transformer(FAMILIES["gpt2"], rngs=nnx.Rngs(0)))
    big = grow_width(small, 2)
    w = np.asarray(small.stack.blocks[0].mlp.wi[...])
    W = np.asarray(big.stack.blocks[0].mlp.wi[...])
    np.testing.assert_array_equal(W[:16, :32], w)
    np.testing.assert_array_equal(W[16:, 32:], w)
    assert not W[:16, 32:].any() and not W[16:, :32].any()
    np.testing.assert_array_equal(big.embed.tokens[...], np.concatenate([small.embed.tokens[...]] * 2, 1))
    np.testing.assert_allclose(
        big.final_norm.scale[...], np.concatenate([small.final_norm.scale[...]] * 2) / 2
    )


@pytest.mark.parametrize("placement", ["interleave", "append"])
@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unscanned"])
@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_identity_depth_growth_keeps_the_logits(family, scan, placement):
    small = Transformer(FAMILIES[family].replace(scan_layers=scan), rngs=nnx.Rngs(0))
    deep = grow_depth(small, mode="identity", placement=placement)
    assert deep.cfg.n_layers == 4 and deep.cfg.scan_layers == scan
    np.testing.assert_allclose(_logits(deep), _logits(small), atol=1e-5)


def test_copy_depth_growth_stacks_trained_blocks():
    small = unstack_layers(Transformer(FAMILIES["gpt2"], rngs=nnx.Rngs(0)))
    deep = grow_depth(small, mode="copy", placement="interleave")
    plan = deepen_plan(2, "interleave")
    for pos, (src, _) in enumerate(plan):
        a = nnx.to_pure_dict(nnx.state(deep.stack.blocks[pos]))
        b = nnx.to_pure_dict(nnx.state(small.stack.blocks[src]))
        jax.tree.map(np.testing.assert_array_equal, a, b)
    # documented: copying is not loss-preserving (every block now runs twice)
    assert float(jnp.abs(_logits(deep) - _logits(small)).max()) > 1e-3
    # appended copies of the last block (not every layer)
    appended = grow_depth(small, mode="copy", placement="append", n_new=1)
    assert appended.cfg.n_layers == 3
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(appended.stack.blocks[2])),
        nnx.to_pure_dict(nnx.state(small.stack.blocks[1])),
    )


def test_growth_errors_are_named():
    gpt = Transformer(FAMILIES["gpt2"], rngs=nnx.Rngs(0))
    for k in (1, 1.5, True):
        with pytest.raises(ValueError, match="integer >= 2"):
            grow_width(gpt, k)
    slim_cfg = FAMILIES["gpt2"].replace(scan_layers=False, layer_ffn=(32, 16))
    with pytest.raises(ValueError, match="per-layer widths"):
        grow_width(Transformer(slim_cfg, rngs=nnx.Rngs(0)), 2)
    with pytest.raises(ValueError, match="needs a pre-norm model"):
        grow_depth(Transformer(FAMILIES["bert"], rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="mixture of experts"):
        grow_depth(Transformer(FAMILIES["llama-moe"], rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="placement"):
        grow_depth(gpt, placement="middle")
    with pytest.raises(ValueError, match="mode"):
        grow_depth(gpt, mode="zeros")
    with pytest.raises(ValueError, match="n_new must be 2"):
        deepen_plan(2, "interleave", 1)
