"""The compressed checkpointer finds weights and Adam moments by structure, whatever the keys."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxslim.checkpoint import CodecConfig, CompressedCheckpointer
from jaxslim.checkpoint.codec import MOMENT, RAW, WEIGHT, Codec
from jaxslim.checkpoint.roles import find_weights

CODEC = CodecConfig(mode="excp", min_size=1024)


def _params_and_opt(tx=None, d=64):
    rng = np.random.default_rng(0)
    params = {
        "dense": {"kernel": jnp.asarray(rng.normal(size=(d, d)), jnp.float32), "bias": jnp.zeros(d)},
        "head": {"kernel": jnp.asarray(rng.normal(size=(d, 32)), jnp.float32)},
    }
    tx = tx or optax.adam(1e-2)
    opt = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    _, opt = tx.update(grads, opt, params)
    return params, opt


def _kinds(state):
    return [p.kind for p in Codec(CODEC).plan(state)]


def _size(directory) -> int:
    return sum(f.stat().st_size for f in pathlib.Path(directory).rglob("*") if f.is_file())


def test_weights_found_whatever_the_key():
    params, opt = _params_and_opt()
    reference = _kinds({"params": params, "opt_state": opt, "step": jnp.int32(3)})
    assert reference.count(WEIGHT) == 2 and reference.count(MOMENT) == 4
    for state in (
        {"model": params, "optimizer": opt, "step": jnp.int32(3)},
        {"a": {"b": params}, "z": opt, "step": jnp.int32(3)},
    ):
        assert sorted(_kinds(state)) == sorted(reference)
    assert _kinds((params, opt)).count(WEIGHT) == 2


def test_momentum_trace_beside_adam_is_not_taken_for_the_weights():
    params, opt = _params_and_opt(optax.chain(optax.trace(0.9), optax.scale_by_adam()))
    state = {"w": params, "opt": opt}
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    weights, mus, _ = find_weights(paths, [np.shape(x) for x in jax.tree.leaves(state)])
    assert sorted(weights) == sorted(mus) == [("dense", "bias"), ("dense", "kernel"), ("head", "kernel")]
    # the weights are the "w" tree, not the trace that mirrors them inside the optimizer state
    assert {jax.tree_util.keystr(paths[i][:1]) for i in weights.values()} == {"['w']"}


def test_nnx_training_state_under_own_keys_is_coded():
    model = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    state = {"net": nnx.state(model, nnx.Param), "optimizer": nnx.state(opt, nnx.Not(nnx.Param))}
    kinds = _kinds(state)
    assert kinds.count(WEIGHT) == 1 and kinds.count(MOMENT) == 2


def _record_bytes(state) -> int:
    codec = Codec(CODEC)
    plan = codec.plan(state)
    enc = codec.encode(plan, jax.tree.leaves(state), None, keyframe=True)
    return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(enc.records))


@pytest.mark.slow
def test_a_state_without_params_key_is_as_small_as_with_it(tmp_path):
    # large enough that OCDBT's file overhead (it splits the same bytes into a varying number of
    # files, ~1-3 kB) is small beside the data
    params, opt = _params_and_opt(d=384)
    with_key = {"params": params, "opt_state": opt}
    without = {"model": params, "optimizer": opt}
    # what the codec stores is the same, byte for byte in size
    assert (
        _record_bytes(without)
        == _record_bytes(with_key)
        < 0.5 * sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(with_key))
    )
    sizes = {}
    for name, state in (("params", with_key), ("model", without)):
        with CompressedCheckpointer(tmp_path / name, CODEC, async_save=False) as ckpt:
            ckpt.save(1, state)
        sizes[name] = _size(tmp_path / name)
    with pytest.warns(UserWarning, match="found no weight to code"):
        with CompressedCheckpointer(
            tmp_path / "raw", CodecConfig(mode="excp", min_size=10**9), async_save=False
        ) as c:
            c.save(1, with_key)
    raw = _size(tmp_path / "raw")
    # on disk: the same up to Orbax's layout-dependent file overhead (key names, manifests)
    assert abs(sizes["model"] - sizes["params"]) <= 0.05 * sizes["params"], sizes
    assert sizes["model"] < 0.6 * raw, (sizes, raw)


def test_codec_that_codes_nothing_warns():
    state = {"w": jnp.ones((64, 64)), "count": jnp.int32(0)}  # no optimizer moments, no 'params'
    with pytest.warns(UserWarning, match=r"found no weight to code among 2 leaves"):
        kinds = _kinds(state)
    assert kinds == [RAW, RAW]
