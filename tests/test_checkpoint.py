"""jaxslim.checkpoint: exact round trips, retention, async resume, resharding restore, config, errors."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxslim.checkpoint import (
    Checkpointer,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    NoCheckpointError,
    NonFiniteStateError,
    abstract_from_shardings,
    abstract_like,
)
from jaxslim.config import MeshConfig, ModelConfig
from jaxslim.engine.state import abstract_train_state, create_train_state
from jaxslim.models import Transformer
from jaxslim.sharding import make_mesh, state_shardings

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64)


def assert_bitwise_equal(a, b):
    """Same tree structure, and every leaf equal bit for bit (dtype and shape included)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
        name = jax.tree_util.keystr(path)
        if isinstance(x, (int, float)) and not isinstance(x, np.generic):
            assert type(x) is type(y) and x == y, name
            continue
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype, name
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name


def abstract_params(cfg: ModelConfig) -> nnx.State:
    """The model's ``nnx.Param`` state as ShapeDtypeStructs (no weights are computed)."""
    return nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)


def random_like(abstract, seed: int = 0):
    """Random arrays of ``abstract``'s shapes and dtypes, on one device (faster than an eager init)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), abstract)


def small_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32), "step": jnp.int32(seed)}


# -- round trip -----------------------------------------------------------------------------------


def test_round_trip_is_bitwise_exact(tmp_path, devices):
    mesh = make_mesh(MeshConfig(data=2, tensor=4))
    # nnx parameters sharded over the mesh (the Transformer's own state is covered by the mesh test)
    params = nnx.state(nnx.Linear(8, 16, rngs=nnx.Rngs(0)), nnx.Param)
    params = jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, P(*([None] * (x.ndim - 1)), "tensor"))), params
    )
    rng = np.random.default_rng(1)
    state = {
        "params": params,
        "opt_state": optax.adam(1e-3).init(params),
        "step": jnp.int32(7),
        "python_step": 7,
        "rng": jax.random.key_data(jax.random.key(3)),
        "typed_key": jax.random.key(4),
        "bf16": jnp.asarray(rng.standard_normal((8, 5)), jnp.bfloat16),
        "host": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
    }
    extra = {"data": {"epoch": 2, "position": 12345, "files": ["a", "b"]}, "lr": 3e-4, "flag": None}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(7, state, extra=extra)
    with Checkpointer(tmp_path) as ckpt:
        restored, restored_extra = ckpt.restore(abstract_like(state))
    assert_bitwise_equal(state, restored)
    assert restored_extra == extra
    assert isinstance(restored["params"], nnx.State)
    assert isinstance(restored["host"], np.ndarray)
    for want, got in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(restored["params"]), strict=True):
        assert got.sharding == want.sharding


# -- retention and save decisions ------------------------------------------------------------------


def test_keep_last_n_and_keep_every_k(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2, keep_every=5, async_save=False) as ckpt:
        for step in range(1, 13):
            assert ckpt.save(step, small_state(step))
        assert ckpt.all_steps() == [5, 10, 11, 12]
    on_disk = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert on_disk == [5, 10, 11, 12]
    with Checkpointer(tmp_path, max_to_keep=2, keep_every=5) as ckpt:
        assert ckpt.all_steps() == [5, 10, 11, 12]
        state, _ = ckpt.restore(abstract_like(small_state()), step=5)
    assert_bitwise_equal(state, small_state(5))


def test_keep_last_n_only(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for step in (10, 20, 30, 40, 50):
            ckpt.save(step, small_state(step))
        ckpt.wait()
        assert ckpt.all_steps() == [30, 40, 50]


def test_save_every_force_and_no_overwrite(tmp_path):
    with Checkpointer(tmp_path, save_every=3, async_save=False) as ckpt:
        assert not ckpt.save(1, small_state(1))
        assert ckpt.save(3, small_state(3))
        assert ckpt.save(4, small_state(4), force=True)
        # not newer than the latest step: skipped, and never overwritten, even when forced
        assert not ckpt.save(3, small_state(99))
        with pytest.raises(ValueError, match="already exists"):
            ckpt.save(4, small_state(99), force=True)
        assert ckpt.all_steps() == [3, 4]
        state, _ = ckpt.restore(abstract_like(small_state()), step=4)
    assert_bitwise_equal(state, small_state(4))


def test_non_finite_state_is_refused_and_good_checkpoints_kept(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=1, async_save=False) as ckpt:
        ckpt.save(1, small_state(1))
        bad = small_state(2)
        bad["w"] = bad["w"].at[0, 0].set(jnp.nan)
        with pytest.raises(NonFiniteStateError, match=r"step 2.*\['w'\].*\[1\] are kept"):
            ckpt.save(2, bad)
        assert ckpt.all_steps() == [1]
        state, _ = ckpt.restore(abstract_like(small_state()))
    assert_bitwise_equal(state, small_state(1))


# -- async and resume -----------------------------------------------------------------------------


def test_async_save_wait_and_resume_from_latest(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=5, async_save=True)
    assert ckpt.latest_step() is None
    for step in (100, 200):
        assert ckpt.save(step, small_state(step), extra={"data": {"pos": step}})
    ckpt.wait()
    assert (tmp_path / "200").is_dir()
    ckpt.close()

    # a new process would do exactly this: open the directory and resume from the latest step
    resumed = Checkpointer(tmp_path, max_to_keep=5)
    assert resumed.latest_step() == 200
    state, extra = resumed.restore(abstract_like(small_state()))
    assert_bitwise_equal(state, small_state(200))
    assert extra == {"data": {"pos": 200}}
    assert resumed.save(300, small_state(300))
    resumed.close()
    assert Checkpointer(tmp_path).all_steps() == [100, 200, 300]


# -- resharding restore ---------------------------------------------------------------------------


def _train_state(cfg: ModelConfig, mesh_cfg: MeshConfig):
    mesh = make_mesh(mesh_cfg)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
        return create_train_state(
            lambda: Transformer(cfg, rngs=nnx.Rngs(0)), optax.sgd(0.1, momentum=0.9), mesh, mesh_cfg.rules
        )


def _loss_and_step(setup, state, tokens):
    """One optimizer step of a tiny LM loss on the state's own mesh."""

    def loss_fn(params):
        model = nnx.merge(setup.graphdef, params, state.rest)
        logits = model(tokens[:, :-1]).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return loss, state._replace(params=params, opt_state=opt_state, step=state.step + 1)


@pytest.mark.slow
def test_restore_onto_another_mesh_and_continue(tmp_path, devices):
    cfg = ModelConfig.gpt2(**TINY)
    saved, setup_a = _train_state(cfg, MeshConfig(data=8))  # parameters replicated
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, saved, extra={"data": {"pos": 1}})

    # the target: same model, fresh shardings on a data x fsdp x tensor mesh
    mesh_b_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
    fresh_b, setup_b = _train_state(cfg, mesh_b_cfg)
    target = abstract_train_state(fresh_b)
    with Checkpointer(tmp_path) as ckpt:
        restored, extra = ckpt.restore(target)
    assert extra == {"data": {"pos": 1}}
    assert_bitwise_equal(saved, restored)
    for want, got in zip(jax.tree.leaves(target), jax.tree.leaves(restored), strict=True):
        assert got.sharding == want.sharding
    sharded = [x for x in jax.tree.leaves(restored.params) if x.sharding.spec != P()]
    assert sharded, "the new mesh should shard some parameters"
    assert all(x.sharding.mesh.shape == make_mesh(mesh_b_cfg).shape for x in sharded)

    # training continues on the new mesh exactly as it would have on the old one
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 9)), jnp.int32)
    loss_a, next_a = jax.jit(lambda s, t: _loss_and_step(setup_a, s, t))(saved, tokens)
    with jax.set_mesh(setup_b.mesh), nnx.logical_axis_rules(mesh_b_cfg.rules):
        loss_b, next_b = jax.jit(lambda s, t: _loss_and_step(setup_b, s, t))(restored, tokens)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(next_a.params), jax.tree.leaves(next_b.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(2, next_b)
        again, _ = ckpt.restore(abstract_train_state(next_b))
    assert_bitwise_equal(next_b, again)


def test_abstract_from_shardings_accepts_variable_level_shardings(tmp_path, devices):
    cfg = ModelConfig.llama(**TINY, n_kv_heads=2)
    mesh_cfg = MeshConfig(data=1, fsdp=4, tensor=2)
    mesh = make_mesh(mesh_cfg)
    abstract = abstract_params(cfg)
    saved = random_like(abstract)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, saved)
        shardings = state_shardings(abstract, mesh, mesh_cfg.rules)  # one NamedSharding per Variable
        restored, _ = ckpt.restore(abstract_from_shardings(abstract, shardings))
    assert_bitwise_equal(saved, restored)
    wq = restored["stack"]["blocks"]["attn"]["wq"]
    assert isinstance(wq.sharding, NamedSharding) and wq.sharding.spec == P(None, "fsdp", "tensor")


# -- incompatible restores ------------------------------------------------------------------------


def test_incompatible_model_names_every_mismatch(tmp_path):
    small = ModelConfig.gpt2(**TINY)
    wide = ModelConfig.gpt2(**{**TINY, "d_model": 48})
    config = {"model": {"d_model": 32, "n_layers": 2}, "steps": 10}
    with Checkpointer(tmp_path, config_json=config) as ckpt:
        ckpt.save(5, {"params": random_like(abstract_params(small))})
    target = {"params": abstract_params(wide)}
    new_config = {"model": {"d_model": 48, "n_layers": 2}, "steps": 10}
    with Checkpointer(tmp_path, config_json=new_config) as ckpt:
        with pytest.raises(IncompatibleCheckpointError) as info:
            ckpt.restore(abstract_like(target))
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(tmp_path) in msg and "step 5" in msg
    assert "params/embed/tokens/value: saved (64, 32) float32, expected (64, 48) float32" in msg
    assert "params/stack/blocks/mlp/wi/value: saved (2, 32, 64) float32, expected (2, 48, 64) float32" in msg
    assert "params/final_norm/scale/value" in msg
    assert "model.d_model: 32 -> 48" in msg


def test_missing_unexpected_and_dtype_mismatches_are_listed(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"a": jnp.zeros((2,)), "b": jnp.zeros((3,), jnp.int32), "old": jnp.zeros(())})
        target = {"a": jnp.zeros((2,)), "b": jnp.zeros((3,), jnp.float32), "new": jnp.zeros((4,))}
        with pytest.raises(IncompatibleCheckpointError) as info:
            ckpt.restore(target)
    msg = str(info.value)
    assert "b: saved (3,) int32, expected (3,) float32" in msg
    assert "expected but not in the checkpoint (1):\n    new" in msg
    assert "in the checkpoint but not expected (1):\n    old" in msg
    assert "a:" not in msg


# -- config beside the checkpoints ----------------------------------------------------------------


def test_config_json_written_beside_and_never_clobbered(tmp_path, caplog):
    first = {"model": {"d_model": 32}, "optim": {"lr": 3e-4}, "steps": 100}
    with Checkpointer(tmp_path, config_json=json.dumps(first)) as ckpt:
        ckpt.save(1, small_state(1))
    assert json.loads((tmp_path / "config.json").read_text()) == first
    assert json.loads((tmp_path / "1" / "config" / "metadata").read_text()) == first

    # the same config again: nothing changes
    with Checkpointer(tmp_path, config_json=first) as ckpt:
        assert ckpt.config(1) == first
    assert not list(tmp_path.glob("config.previous-*.json"))

    # a resumed run with other settings: the old file is kept, the new one written, a warning logged
    second = {**first, "steps": 200}
    with caplog.at_level("WARNING", logger="jaxslim.checkpoint.manager"):
        with Checkpointer(tmp_path, config_json=second) as ckpt:
            ckpt.save(2, small_state(2))
            assert ckpt.config(1) == first and ckpt.config() == second
    assert "steps: 100 -> 200" in caplog.text and "config.previous-1.json" in caplog.text
    assert json.loads((tmp_path / "config.json").read_text()) == second
    assert json.loads((tmp_path / "config.previous-1.json").read_text()) == first
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_config_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="config_json is not valid JSON"):
        Checkpointer(tmp_path, config_json="{not json")
    with pytest.raises(TypeError, match="config_json must be JSON-serialisable"):
        Checkpointer(tmp_path, config_json={"x": object()})


# -- errors ---------------------------------------------------------------------------------------


def test_restore_from_empty_or_missing_directory(tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(NoCheckpointError, match=r"no checkpoint to restore in .*empty"):
            ckpt.restore(small_state())
        assert ckpt.config() is None
    with pytest.raises(NoCheckpointError, match="does not exist"):
        Checkpointer(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


def test_restore_unknown_step_lists_available(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, small_state(3))
        with pytest.raises(NoCheckpointError, match=r"step 4 .* available steps: \[3\]"):
            ckpt.restore(small_state(), step=4)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be a positive integer or None, got 0"):
        Checkpointer(tmp_path, max_to_keep=0)
    with pytest.raises(ValueError, match="keep_every"):
        Checkpointer(tmp_path, keep_every=-5)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(TypeError, match="extra must be JSON-serialisable"):
            ckpt.save(1, small_state(), extra={"pos": np.arange(2)})
        assert ckpt.all_steps() == []


def test_corrupt_checkpoint_is_named_and_fallback_is_opt_in(tmp_path):
    # One array per state: when several arrays of a damaged step fail to read at once, Orbax's
    # event loop closes while TensorStore still completes the others, which then report
    # "RuntimeError: Event loop is closed" as unraisable exceptions (an Orbax quirk, not ours).
    def state(seed):
        return {"w": jnp.full((4, 3), float(seed))}

    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state(1), extra={"pos": 1})
        ckpt.save(2, state(2), extra={"pos": 2})
    for f in (tmp_path / "2" / "state" / "d").iterdir():
        f.write_bytes(b"damaged")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CorruptCheckpointError, match=r"step 2 in .* could not be read"):
            ckpt.restore(state(0))
        restored, extra = ckpt.restore(state(0), fallback=True)
        assert extra == {"pos": 1}
        assert_bitwise_equal(restored, state(1))
        # damaged metadata is reported the same way
        (tmp_path / "2" / "state" / "_METADATA").write_text("{not json")
        with pytest.raises(CorruptCheckpointError, match=r"step 2 in .* could not be read \(metadata\)"):
            ckpt.restore(state(0), step=2)
        # with every step unreadable, fallback gives up naming each one
        (tmp_path / "1" / "state" / "_METADATA").write_text("{not json")
        with pytest.raises(CorruptCheckpointError, match=r"no readable checkpoint.*\nstep 2: .*\nstep 1: "):
            ckpt.restore(state(0), fallback=True)


def test_read_only_restores_and_never_writes(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, small_state(1))
    before = sorted(p.name for p in tmp_path.iterdir())
    with Checkpointer(tmp_path, read_only=True, config_json={"other": 1}) as ckpt:
        state, _ = ckpt.restore(small_state())
        assert not ckpt.save(2, small_state(2))
    assert_bitwise_equal(state, small_state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
