"""Sharded construction and forward passes on 8 fake CPU devices, and the layer-axis helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxslim.config import MeshConfig, ModelConfig
from jaxslim.models import Transformer
from jaxslim.sharding import (
    create_sharded,
    layer_axis,
    logical_axes,
    logical_to_spec,
    make_mesh,
    map_layers,
    per_layer_reduce,
    shard_batch,
    shard_model,
    split_layers,
)

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64)
CONFIGS = {
    "bert": ModelConfig.bert(**TINY, head="mlm"),
    "gpt2": ModelConfig.gpt2(**TINY),
    "llama": ModelConfig.llama(**TINY, n_kv_heads=2),
}
MESHES = {
    "data8": MeshConfig(data=8),
    "data2_tensor4": MeshConfig(data=2, tensor=4),
    "fsdp4_tensor2": MeshConfig(data=1, fsdp=4, tensor=2),
}


def _forward(graphdef, state, tokens, mask):
    out = nnx.merge(graphdef, state)(tokens, attention_mask=mask)
    return out.hidden, out.logits


@pytest.mark.parametrize("mesh_name", MESHES)
@pytest.mark.parametrize("arch", CONFIGS)
def test_sharded_forward_equals_single_device(devices, arch, mesh_name):
    cfg, mesh_cfg = CONFIGS[arch], MESHES[mesh_name]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (8, 16)).astype(np.int32)
    mask = np.ones((8, 16), np.int32)
    mask[::3, -5:] = 0

    ref_model = Transformer(cfg, rngs=nnx.Rngs(0))
    ref = jax.jit(_forward)(*nnx.split(ref_model), tokens, mask)

    mesh = make_mesh(mesh_cfg)
    model = create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh, mesh_cfg.rules)
    graphdef, state = nnx.split(model)
    # every weight lives where its logical axes say
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata()["out_sharding"]
        want = logical_to_spec(axes, mesh_cfg.rules, mesh, var.shape)
        got = var.get_value().sharding
        assert got.mesh == mesh and got.spec == want, (path, got.spec, want)
    batch = shard_batch({"tokens": tokens, "mask": mask}, mesh, mesh_cfg.rules)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
        out = jax.jit(_forward)(graphdef, state, batch["tokens"], batch["mask"])
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_specs_follow_rules(devices):
    mesh_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
    mesh = make_mesh(mesh_cfg)
    rules = mesh_cfg.rules
    assert logical_to_spec(("layers", "embed", "heads", "head_dim"), rules, mesh) == P(None, "fsdp", "tensor")
    assert logical_to_spec(("batch", "length"), rules, mesh) == P(("data", "fsdp"))
    # BERT's vocabulary (30522) does not divide by 4 shards: that dimension is replicated instead
    mesh4 = make_mesh(MeshConfig(data=2, tensor=4))
    assert logical_to_spec(("vocab", "embed"), rules, mesh4, (30520, 384)) == P("tensor")
    assert logical_to_spec(("vocab", "embed"), rules, mesh4, (30522, 384)) == P()
    # a mesh axis serves one dimension only
    assert logical_to_spec(("mlp", "heads"), rules, mesh) == P("tensor")


def test_shard_model_places_an_existing_model(devices):
    cfg = CONFIGS["gpt2"]
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    mesh_cfg = MeshConfig(data=2, tensor=4)
    shard_model(model, make_mesh(mesh_cfg), mesh_cfg.rules)
    assert model.stack.blocks.mlp.wi.get_value().sharding.spec == P(None, None, "tensor")
    assert model.embed.tokens.get_value().sharding.spec == P("tensor")


def test_explicit_axis_type(devices):
    mesh = make_mesh(MeshConfig(data=4, tensor=2, axis_type="explicit"))
    assert all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)


def test_layer_axis_helpers_treat_a_scanned_stack_as_layers():
    model = Transformer(CONFIGS["gpt2"].replace(n_layers=3), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    axes = logical_axes(state)
    w = state["stack"]["blocks"]["mlp"]["wi"].get_value()
    w_axes = axes["stack"]["blocks"]["mlp"]["wi"]
    assert layer_axis(w_axes) == 0 and layer_axis(axes["embed"]["tokens"]) is None
    norms = map_layers(jnp.linalg.norm, w, w_axes)
    assert norms.shape == (3,)
    np.testing.assert_allclose(norms, [np.linalg.norm(w[i]) for i in range(3)], rtol=1e-6)
    scale = per_layer_reduce(jnp.linalg.norm, w, w_axes)
    assert scale.shape == (3, 1, 1)
    parts = split_layers(w, w_axes)
    assert len(parts) == 3 and parts[1].shape == w.shape[1:]
    # an unstacked weight is one layer
    emb = state["embed"]["tokens"].get_value()
    assert map_layers(jnp.linalg.norm, emb, axes["embed"]["tokens"]).shape == ()
    assert len(split_layers(emb, axes["embed"]["tokens"])) == 1
