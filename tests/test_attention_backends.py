"""Attention kernels by backend: the splash (TPU Pallas) kernel, run in interpret mode on CPU, equals
the XLA path; ``auto`` picks the kernel of the mesh's platform; a causal model needs no mask.
(The TPU compile of splash inside a train step is in test_aot.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.config import MeshConfig, ModelConfig
from jaxslim.models import Transformer
from jaxslim.models.attention_kernels import dot_product_attention, resolve_backend
from jaxslim.sharding import make_mesh, step_context


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


def _chunked_inputs(padded: bool):
    ks = jax.random.split(jax.random.key(2), 3)
    q = jax.random.normal(ks[0], (2, 512, 4, 128))
    k, v = (jax.random.normal(key, (2, 512, 2, 128)) for key in ks[1:])
    mask = (jnp.arange(512)[None] < jnp.array([[512], [300]]))[:, None, None, :] if padded else None
    return q, k, v, mask


def test_splash_on_query_chunks_with_offset_masks_equals_xla():
    """Context parallelism's kernel: each chunk of 128 queries against all 512 keys, its causal
    mask offset by the chunk's start, gives the rows of the whole attention."""
    from jaxslim.models.attention_kernels import _splash_local

    q, k, v, _ = _chunked_inputs(padded=False)
    want = dot_product_attention(q, k, v, mask=None, causal=True, backend="xla", scale=1.0)
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    ids = jnp.ones((2, 512), jnp.int32)
    chunks = [
        _splash_local(
            qh[:, :, i : i + 128], kh, vh, ids, causal=True, softcap=None, interpret=True, q_offset=i
        )
        for i in range(0, 512, 128)
    ]
    got = jnp.swapaxes(jnp.concatenate(chunks, axis=2), 1, 2)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)
    # the offset is what makes it right: without it every chunk is masked as the first one
    wrong = _splash_local(qh[:, :, 128:256], kh, vh, ids, causal=True, softcap=None, interpret=True)
    assert not np.allclose(np.asarray(jnp.swapaxes(wrong, 1, 2)), np.asarray(want[:, 128:256]), atol=1e-3)


@pytest.mark.parametrize("causal, padded", [(True, False), (False, True)])
def test_context_parallel_splash_gives_each_device_its_chunk(devices, causal, padded):
    """Under a mesh with a context axis of 4 the queries stay split by chunk, the keys and values
    are gathered, and each device's kernel (in interpret mode) gets its chunk's offset: the
    single-device XLA result."""
    q, k, v, mask = _chunked_inputs(padded)
    want = dot_product_attention(q, k, v, mask=mask, causal=causal, backend="xla")
    mesh_cfg = MeshConfig(data=2, context=4)
    mesh, rules = make_mesh(mesh_cfg, devices), mesh_cfg.rules

    def attend(q, k, v, mask):
        with step_context(mesh, rules):
            return dot_product_attention(q, k, v, mask=mask, causal=causal, backend="splash", interpret=True)

    q, k, v, mask = jax.device_put(
        (q, k, v, mask), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    compiled = jax.jit(attend).lower(q, k, v, mask).compile()
    assert compiled.output_shardings.spec[1] == "context"  # the output stays split by chunk
    got = compiled(q, k, v, mask)
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
