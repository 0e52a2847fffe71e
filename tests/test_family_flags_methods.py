"""The methods work on every converted family: each family's ``ModelConfig`` flags (from a tiny
``config.json``, no torch) train (finite gradients of the LM loss), take Fisher masks, and slim
into a smaller model that computes exactly what the masked dense model does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslim.convert import config_from_hf
from jaxslim.convert.hf import model_from_flat, param_shapes
from jaxslim.prune.slim import slim
from jaxslim.prune.tune import tune_masks

pytestmark = pytest.mark.slow  # one compile per family: several seconds each

_DECODER = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=24,
    max_position_embeddings=16,
)
CONFIGS = {
    "llama3": dict(
        _DECODER,
        architectures=["LlamaForCausalLM"],
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8},
    ),
    "mistral": dict(_DECODER, architectures=["MistralForCausalLM"], sliding_window=5),
    "qwen2": dict(
        _DECODER,
        architectures=["Qwen2ForCausalLM"],
        use_sliding_window=True,
        sliding_window=5,
        max_window_layers=1,
    ),
    "qwen3": dict(_DECODER, architectures=["Qwen3ForCausalLM"], head_dim=8),
    "phi3": dict(_DECODER, architectures=["Phi3ForCausalLM"], partial_rotary_factor=0.5, pad_token_id=0),
    "gemma2": dict(_DECODER, architectures=["Gemma2ForCausalLM"], head_dim=8, sliding_window=5),
    "gemma3": dict(
        _DECODER, architectures=["Gemma3ForCausalLM"], head_dim=8, sliding_window=5, sliding_window_pattern=2
    ),
    "olmo2": dict(_DECODER, architectures=["Olmo2ForCausalLM"]),
    "neox": dict(_DECODER, architectures=["GPTNeoXForCausalLM"], rotary_pct=0.5, num_key_value_heads=4),
    "roberta": dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        max_position_embeddings=24,
        architectures=["RobertaForMaskedLM"],
    ),  # fmt: skip
    "modernbert": dict(
        _DECODER,  # layer 0 global, layer 1 local
        architectures=["ModernBertForMaskedLM"],
        local_attention=4,
        pad_token_id=0,
        norm_bias=True,
    ),
}


def _model(kind: str):
    cfg = config_from_hf(CONFIGS[kind], scan_layers=False)
    rng = np.random.default_rng(0)
    return model_from_flat(
        cfg, {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in param_shapes(cfg).items()}
    )


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_train_fisher_and_slim(kind):
    model = _model(kind)
    cfg = model.cfg
    tokens = jnp.asarray(np.random.default_rng(1).integers(2, 64, (2, 12)), jnp.int32)
    hm, nm = jnp.ones((cfg.n_layers, cfg.n_heads)), jnp.ones((cfg.n_layers, cfg.d_ff))

    def loss(model, hm, nm):
        logits = model(tokens, head_mask=hm, neuron_mask=nm).logits
        return -jnp.mean(jax.nn.log_softmax(logits[:, :-1]) * jax.nn.one_hot(tokens[:, 1:], cfg.vocab_size))

    from flax import nnx

    grads = nnx.grad(loss, argnums=(0, 1, 2))(model, hm, nm)
    leaves = jax.tree.leaves(nnx.state(grads[0], nnx.Param))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads[1]).sum()) > 0 and float(jnp.abs(grads[2]).sum()) > 0  # the Fisher signal
    # drop one query group of layer 0 and half the FFN units of layer 1
    group = cfg.n_heads // cfg.kv_heads
    hm = np.ones((cfg.n_layers, cfg.n_heads), np.float32)
    hm[0, :group] = 0
    nm = np.ones((cfg.n_layers, cfg.d_ff), np.float32)
    nm[1, ::2] = 0
    if cfg.qk_norm_scope == "layer":  # OLMo 2: the q/k norm spans all heads, so heads stay
        with pytest.raises(ValueError, match="q/k norm spans all heads"):
            slim(model, hm, nm)
        hm[:] = 1
        group = 0
    if cfg.post_norms or not cfg.input_norms or cfg.parallel_residual:
        with pytest.raises(ValueError, match="jaxslim-prune --no-tune"):
            tune_masks(model, [{"tokens": np.asarray(tokens)}], hm, nm)
    small = slim(model, hm, nm)
    assert small.cfg.layer_heads == (cfg.n_heads - group, cfg.n_heads)
    want = model(tokens, head_mask=jnp.asarray(hm), neuron_mask=jnp.asarray(nm)).logits
    np.testing.assert_allclose(small(tokens).logits, want, atol=1e-5, rtol=0)
