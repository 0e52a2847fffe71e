"""Module contract of the transformer family: shapes, layouts, masks, dtypes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models import Transformer, stack_layers, unstack_layers

TINY = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, d_ff=48)
CONFIGS = {
    "bert": ModelConfig.bert(**TINY, head="mlm"),
    "gpt2": ModelConfig.gpt2(**TINY),
    "llama": ModelConfig.llama(**TINY, n_kv_heads=2),
}


def _inputs(b=2, t=8, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, vocab, (b, t)), jnp.int32)
    mask = np.ones((b, t), np.int32)
    mask[1, -3:] = 0
    return tokens, jnp.asarray(mask)


@pytest.mark.parametrize("arch", CONFIGS)
def test_shapes_and_finiteness(arch):
    cfg = CONFIGS[arch]
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens, mask = _inputs()
    out = model(tokens, attention_mask=mask)
    assert out.hidden.shape == (2, 8, 32)
    assert out.logits.shape == (2, 8, 64) and out.logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out.logits)))
    assert (out.pooled is not None) == (arch == "bert")


@pytest.mark.parametrize("arch", CONFIGS)
def test_scanned_and_unscanned_layouts_agree(arch):
    scanned = Transformer(CONFIGS[arch], rngs=nnx.Rngs(1))
    unscanned = unstack_layers(scanned)
    assert not unscanned.cfg.scan_layers
    assert unscanned.stack.blocks[2].attn.wq.shape == (32, 4, 8)
    tokens, mask = _inputs()
    a = scanned(tokens, attention_mask=mask).logits
    b = unscanned(tokens, attention_mask=mask).logits
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # and back again: the weights survive the round trip exactly
    restacked = stack_layers(unscanned)
    leaves_a = jax.tree.leaves(nnx.state(scanned, nnx.Param))
    leaves_c = jax.tree.leaves(nnx.state(restacked, nnx.Param))
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_c, strict=True))


def test_stack_layers_rejects_per_layer_widths():
    cfg = CONFIGS["gpt2"].replace(scan_layers=False, layer_heads=(4, 2, 4), layer_ffn=(48, 16, 0))
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs scan_layers=False"):
        stack_layers(model)


@pytest.mark.parametrize("arch", CONFIGS)
def test_masks_of_ones_change_nothing(arch):
    cfg = CONFIGS[arch]
    model = Transformer(cfg, rngs=nnx.Rngs(2))
    tokens, mask = _inputs()
    ref = model(tokens, attention_mask=mask).logits
    out = model(
        tokens,
        attention_mask=mask,
        head_mask=jnp.ones((cfg.n_layers, cfg.n_heads)),
        neuron_mask=jnp.ones((cfg.n_layers, cfg.d_ff)),
    ).logits
    np.testing.assert_array_equal(ref, out)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_mask_gradients_are_the_fisher_signal(arch):
    cfg = CONFIGS[arch]
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(3)))
    tokens, mask = _inputs()

    @jax.jit
    def grads(hm, nm):
        model = nnx.merge(graphdef, state)

        def loss(hm, nm):
            return jnp.mean(model(tokens, attention_mask=mask, head_mask=hm, neuron_mask=nm).logits ** 2)

        return jax.grad(loss, argnums=(0, 1))(hm, nm)

    g_head, g_neuron = grads(jnp.ones((cfg.n_layers, cfg.n_heads)), jnp.ones((cfg.n_layers, cfg.d_ff)))
    assert g_head.shape == (3, 4) and g_neuron.shape == (3, 48)
    assert bool(jnp.all(g_head != 0)) and float(jnp.mean(g_neuron != 0)) > 0.9


def test_slimmed_model_with_per_layer_widths_runs_and_matches_its_mask():
    """A per-layer-width model equals the full model with the removed heads/neurons masked."""
    cfg = CONFIGS["llama"].replace(scan_layers=False)
    full = Transformer(cfg, rngs=nnx.Rngs(4))
    keep_heads = [[0, 1, 2, 3], [2, 3], []]  # query groups of 2 (GQA 4:2) stay whole
    keep_ffn = [list(range(48)), [1, 5, 9], []]
    slim_cfg = cfg.replace(layer_heads=tuple(map(len, keep_heads)), layer_ffn=tuple(map(len, keep_ffn)))
    slim = Transformer(slim_cfg, rngs=nnx.Rngs(0))
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(full)))
    for i, (heads, ffn) in enumerate(zip(keep_heads, keep_ffn, strict=False)):
        blk = pure["stack"]["blocks"][i]
        heads, ffn = np.asarray(heads, int), np.asarray(ffn, int)
        kv = np.asarray(sorted({h // 2 for h in heads}), int)
        blk["attn"]["wq"] = blk["attn"]["wq"][:, heads]
        blk["attn"]["wo"] = blk["attn"]["wo"][heads]
        blk["attn"]["wk"] = blk["attn"]["wk"][:, kv]
        blk["attn"]["wv"] = blk["attn"]["wv"][:, kv]
        for name in ("wi", "wu"):
            blk["mlp"][name] = blk["mlp"][name][:, ffn]
        blk["mlp"]["wo"] = blk["mlp"]["wo"][ffn]
    nnx.update(slim, pure)
    head_mask = np.zeros((3, 4), np.float32)
    neuron_mask = np.zeros((3, 48), np.float32)
    for i, (heads, ffn) in enumerate(zip(keep_heads, keep_ffn, strict=False)):
        head_mask[i, heads] = 1
        neuron_mask[i, ffn] = 1
    tokens, mask = _inputs()
    ref = full(tokens, attention_mask=mask, head_mask=head_mask, neuron_mask=neuron_mask).logits
    out = slim(tokens, attention_mask=mask).logits
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", CONFIGS)
def test_bf16_compute_with_fp32_params(arch):
    cfg = CONFIGS[arch]
    ref_model = Transformer(cfg, rngs=nnx.Rngs(5))
    model = Transformer(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(5))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tokens, mask = _inputs()
    out = model(tokens, attention_mask=mask)
    assert out.hidden.dtype == jnp.bfloat16
    ref = ref_model(tokens, attention_mask=mask).logits
    np.testing.assert_allclose(out.logits, ref, atol=0.1 * float(jnp.abs(ref).max()))


def test_causal_models_do_not_look_ahead():
    model = Transformer(CONFIGS["llama"], rngs=nnx.Rngs(6))
    tokens, _ = _inputs()
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 64)
    a, b = model(tokens).logits, model(changed).logits
    np.testing.assert_array_equal(a[:, :-1], b[:, :-1])
    assert not np.array_equal(a[:, -1], b[:, -1])


def test_bad_inputs_get_clear_errors():
    model = Transformer(CONFIGS["bert"].replace(max_len=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="sequence length 9 exceeds the model's max_len=8"):
        model(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match=r"head_mask must have shape \(3, 4\), got \(3, 5\)"):
        model(jnp.zeros((1, 4), jnp.int32), head_mask=jnp.ones((3, 5)))
    with pytest.raises(ValueError, match=r"neuron_mask must have shape \(3, 48\), got \(48,\)"):
        model(jnp.zeros((1, 4), jnp.int32), neuron_mask=jnp.ones((48,)))
