"""Steps own their context: a train or eval step lowered with no ``jax.set_mesh`` /
``nnx.logical_axis_rules`` around it is the executable the training loop (which enters both) runs."""

import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxslim.config import MeshConfig, ModelConfig
from jaxslim.models import Transformer
from jaxslim.sharding import batch_sharding, make_mesh
from jaxslim.training import create_abstract_train_state, make_eval_step, make_train_step

COLLECTIVE = re.compile(r"= \S+ (all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)\(")


def _collectives(compiled) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in COLLECTIVE.findall(compiled.as_text()):
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _lowered(make_step, outer_context: bool):
    cfg = ModelConfig.llama(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
    mesh_cfg = MeshConfig(data=2, fsdp=4)
    mesh, rules = make_mesh(mesh_cfg), mesh_cfg.rules
    state, setup = create_abstract_train_state(
        lambda: Transformer(cfg, rngs=nnx.Rngs(0)), optax.adamw(1e-3), mesh, rules
    )
    bsh = batch_sharding(mesh, rules)
    batch = {"tokens": jax.ShapeDtypeStruct((8, 33), jnp.int32, sharding=bsh)}
    step = make_step(setup, batch_sharding=bsh)
    if outer_context:
        with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
            return step.lower(state, batch).compile()
    return step.lower(state, batch).compile()


def test_train_step_compiles_the_same_with_and_without_an_outer_context():
    inside = _collectives(_lowered(make_train_step, outer_context=True))
    bare = _collectives(_lowered(make_train_step, outer_context=False))
    assert inside == bare
    assert inside.get("all-gather", 0) > 0  # fsdp gathers weights: the counts are of a sharded step


def test_eval_step_compiles_the_same_with_and_without_an_outer_context():
    assert _collectives(_lowered(make_eval_step, outer_context=True)) == _collectives(
        _lowered(make_eval_step, outer_context=False)
    )
