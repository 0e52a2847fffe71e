"""Attention kernels by backend: the splash (TPU Pallas) kernel, run in interpret mode on CPU, equals
the XLA path; ``auto`` picks the kernel of the mesh's platform; a causal model needs no mask.
(The TPU compile of splash inside a train step is in test_aot.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models import Transformer
from jaxslim.models.attention_kernels import dot_product_attention, resolve_backend


@pytest.mark.parametrize(
    "causal, padded, softcap", [(True, False, None), (True, True, 30.0), (False, True, None)]
)
def test_splash_equals_xla(causal, padded, softcap):
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (2, 128, 4, 128))
    k, v = (jax.random.normal(key, (2, 128, 2, 128)) for key in ks[1:])  # grouped-query: 2 kv heads
    mask = (jnp.arange(128)[None] < jnp.array([[128], [90]]))[:, None, None, :] if padded else None
    kw = dict(mask=mask, causal=causal, softcap=softcap, scale=0.1)
    want = dot_product_attention(q, k, v, backend="xla", **kw)
    got = dot_product_attention(q, k, v, backend="splash", interpret=True, **kw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def test_auto_follows_the_mesh_platform():
    assert resolve_backend("auto") == "xla"  # CPU
    tpu = jax.sharding.AbstractMesh((1,), ("x",))
    assert resolve_backend("cudnn") == "cudnn"
    with jax.sharding.use_abstract_mesh(tpu):
        assert resolve_backend("auto") == "xla"  # an abstract mesh without devices: default backend
    with pytest.raises(ValueError, match="attention backend must be one of"):
        resolve_backend("flash")


def test_causal_model_builds_no_square_mask_and_matches_explicit_causality():
    cfg = ModelConfig.llama(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    _, mask, _ = model.embed_inputs(tokens)
    assert mask is None  # causality is the kernel's flag, not a [t, t] mask
    logits = model(tokens).logits
    # the first 8 positions cannot see the last 8: the same logits from the first half alone
    np.testing.assert_allclose(np.asarray(model(tokens[:, :8]).logits), np.asarray(logits[:, :8]), atol=1e-5)
