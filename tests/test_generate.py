"""Text generation: the compiled sampling loop against a plain Python loop over full forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models import Transformer
from jaxslim.models.generate import generate, sample_logits


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    kw = dict(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=8)
    cfg = ModelConfig.gpt2(**kw) if request.param == "gpt2" else ModelConfig.llama(n_kv_heads=2, **kw)
    return Transformer(cfg, rngs=nnx.Rngs(3))


def _greedy_reference(model, prompt, n, window):
    ids = list(prompt)
    for _ in range(n):
        ctx = ids[-window:]
        logits = model(jnp.asarray([ctx], jnp.int32)).logits[0, -1]
        ids.append(int(jnp.argmax(logits)))
    return ids[len(prompt) :]


@pytest.mark.parametrize("n", [3, 12])  # 12 tokens slide past the 8-token window
def test_greedy_matches_step_by_step_forward(model, n):
    prompt = [5, 9, 1]
    got = generate(model, prompt, n, rng=jax.random.key(0), temperature=0, window=8)
    assert got.tolist() == _greedy_reference(model, prompt, n, 8)


def test_sampling_is_seeded_and_respects_top_k():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.05, 0.4]] * 2000))
    draws = sample_logits(logits, jax.random.key(1), temperature=1.0, top_k=2)
    assert set(np.unique(draws).tolist()) == {1, 3}
    frac = float(jnp.mean(draws == 1))
    assert abs(frac - 0.5 / 0.9) < 0.04
    again = sample_logits(logits, jax.random.key(1), temperature=1.0, top_k=2)
    np.testing.assert_array_equal(draws, again)


def test_generate_rejects_bad_input(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3, rng=jax.random.key(0))
    bert = Transformer(
        ModelConfig.bert(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32), rngs=nnx.Rngs(0)
    )
    with pytest.raises(ValueError, match="causal LM"):
        generate(bert, [1], 3, rng=jax.random.key(0))
