"""Compressed checkpoints through Orbax: chains, retention, corruption, other meshes, the CLI,
and a training run that resumes from them."""

import dataclasses
import gc
import json
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.checkpoint import (
    Checkpointer,
    Codec,
    CodecConfig,
    CompressedCheckpointer,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    MissingReferenceError,
    abstract_like,
)
from jaxslim.checkpoint import codec as codec_module
from jaxslim.config import MeshConfig, ModelConfig, OptimConfig
from jaxslim.engine.state import abstract_train_state, create_train_state
from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer
from jaxslim.sharding import make_mesh

TINY = dict(vocab_size=96, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=16)

# A damaged step holds many arrays: when some fail to read, Orbax closes its event loop while
# TensorStore still completes the others, which then raise "Event loop is closed" (and leave
# unclosed TensorStore handles) as unraisable exceptions in Orbax's threads, whenever the garbage
# collector gets to them, which may be during a later test of this module. That is noise after the
# errors these tests check, not a failure, so only that warning class is let through here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(mesh_cfg: MeshConfig, n_devices: int, **model):
    mesh = make_mesh(mesh_cfg, jax.devices()[:n_devices])
    tx = build_optimizer(OptimConfig(lr=1e-3), 10)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
        return create_train_state(
            lambda: Transformer(ModelConfig.gpt2(**{**TINY, **model}), rngs=nnx.Rngs(0)),
            tx,
            mesh,
            mesh_cfg.rules,
        )


def _chain_of_states(state, n: int, seed: int = 0):
    """``n`` states drifting like training: small weight updates, fresh Adam-like moments."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):

        def move(path, x):
            if not jnp.issubdtype(x.dtype, jnp.floating):
                return x
            noise = jnp.asarray(rng.standard_normal(x.shape), x.dtype)
            name = jax.tree_util.keystr(path)
            if ".nu" in name:
                return jax.device_put(1e-6 * noise**2, x.sharding)
            if ".mu" in name:
                return jax.device_put(1e-3 * noise, x.sharding)
            return jax.device_put(x + 1e-3 * noise, x.sharding)

        state = jax.tree_util.tree_map_with_path(move, state)
        out.append(state)
    return out


def _bitwise(a, b) -> bool:
    return all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def single():
    state, setup = _state(MeshConfig(data=1), 1)
    return _chain_of_states(state, 6), setup


def _expected(states, cfg: CodecConfig):
    """What each step must restore to, recomputed with the codec alone (keyframe every K saves)."""
    codec = Codec(cfg)
    plan = codec.plan(states[0])
    out, ref = [], None
    for n, s in enumerate(states):
        keyframe = n % cfg.keyframe_every == 0
        enc = codec.encode(plan, jax.tree.leaves(s), ref, keyframe=keyframe)
        leaves = [enc.recon[i] if i in enc.recon else x for i, x in enumerate(jax.tree.leaves(s))]
        out.append(jax.tree.unflatten(jax.tree.structure(s), leaves))
        ref = enc.recon
    return out


@pytest.mark.parametrize("mode", ["lossless", "excp"])
def test_every_step_of_keyframe_delta_chains_restores(tmp_path, single, mode):
    states, _ = single
    cfg = CodecConfig(mode=mode, keyframe_every=3, outlier_fraction=1e-3)  # exact outliers too
    with CompressedCheckpointer(tmp_path, cfg, max_to_keep=None) as ck:
        for step, s in enumerate(states, 1):
            assert ck.save(step, s, extra={"data": {"index": step}})
        ck.wait()
        assert [ck.metadata(s)["keyframe"] for s in range(1, 7)] == [True, False, False, True, False, False]
        if mode == "excp":
            assert all(e.get("outliers", 0) >= 1 for e in ck.metadata(2)["leaves"] if e["kind"] == "weight")
    expected = _expected(states, cfg)
    # a fresh process: every step restores, through at most keyframe_every - 1 residuals
    with CompressedCheckpointer(tmp_path, CodecConfig(mode=mode), read_only=True) as ck:
        for step in range(6, 0, -1):
            assert len(ck.chain(step)) <= 3
            got, extra = ck.restore(abstract_like(states[0]), step)
            assert extra == {"data": {"index": step}}
            assert _bitwise(got, expected[step - 1])
            if mode == "lossless":
                assert _bitwise(got, states[step - 1])
            else:
                assert not _bitwise(got, states[step - 1])


@pytest.mark.parametrize("mode", ["lossless", "excp"])
def test_a_restored_state_can_be_donated_and_the_chain_goes_on(tmp_path, single, mode):
    """Training donates the restored state to its next step; the next save is a residual against
    the restored reconstruction, which the checkpointer must still hold."""
    states, _ = single
    cfg = CodecConfig(mode=mode, keyframe_every=4)
    with CompressedCheckpointer(tmp_path, cfg, max_to_keep=None) as ck:
        ck.save(1, states[0])
        ck.wait()
        restored, _ = ck.restore(abstract_like(states[0]), 1)
        donate = jax.jit(lambda t: jax.tree.map(lambda x: x, t), donate_argnums=0)
        jax.block_until_ready(donate(restored))
        assert ck.save(2, states[1])
        ck.wait()
        assert ck.metadata(2)["keyframe"] is False and ck.chain(2) == [1, 2]
        got, _ = ck.restore(abstract_like(states[0]), 2)
    assert _bitwise(got, _expected(states[:2], cfg)[1])


def test_retention_keeps_the_steps_kept_deltas_depend_on(tmp_path, single):
    states, _ = single
    with CompressedCheckpointer(tmp_path, CodecConfig(keyframe_every=4), max_to_keep=1) as ck:
        for step, s in enumerate(states, 1):
            ck.save(step, s)
            ck.wait()
        # keyframes at 1 and 5: the latest (6) needs 5; 1..4 are no longer needed
        assert ck.all_steps() == [5, 6]
        assert ck.chain(6) == [5, 6]
    with CompressedCheckpointer(tmp_path, CodecConfig(keyframe_every=4), max_to_keep=2) as ck:
        assert ck.all_steps() == [5, 6]
    with CompressedCheckpointer(tmp_path / "b", CodecConfig(keyframe_every=6), max_to_keep=1) as ck:
        for step, s in enumerate(states[:4], 1):
            ck.save(step, s)
            ck.wait()
        assert ck.all_steps() == [1, 2, 3, 4]  # one chain: everything is a dependency of step 4
        ck.restore(abstract_like(states[0]), 4)


def _damage(path: pathlib.Path, how: str) -> None:
    data = sorted(
        (f for f in path.rglob("*") if f.is_file() and f.stat().st_size > 1000),
        key=lambda f: -f.stat().st_size,
    )
    target = data[0]
    raw = bytearray(target.read_bytes())
    if how == "truncate":
        target.write_bytes(bytes(raw[: len(raw) // 2]))
    else:  # flip bits in the middle of the largest file
        for i in range(len(raw) // 2, len(raw) // 2 + 64):
            raw[i] ^= 0x5A
        target.write_bytes(bytes(raw))


def _flat(tree, prefix=()) -> dict:
    """``{path: array}`` of a tree in Orbax's serialised form; empty nodes (``None``, ``{}``, an
    empty list or optax ``EmptyState``) vanish."""
    if tree is None:
        return {}
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    return {k: v for key, sub in items for k, v in _flat(sub, (*prefix, str(key))).items()}


def _snapshot(root: pathlib.Path) -> dict:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_compressed_checkpoint_is_reported_and_nothing_is_lost(tmp_path, single, how):
    states, _ = single
    with CompressedCheckpointer(tmp_path, CodecConfig(keyframe_every=2), max_to_keep=None) as ck:
        for step, s in enumerate(states[:4], 1):
            ck.save(step, s)
    _damage(tmp_path / "3", how)  # a keyframe that step 4 depends on
    before = _snapshot(tmp_path)
    target = abstract_like(states[0])
    with CompressedCheckpointer(tmp_path, CodecConfig(keyframe_every=2)) as ck:
        with pytest.raises(CorruptCheckpointError, match=r"step 3 in .* (could not be read|is corrupt)"):
            ck.restore(target, 4)
        # the older chain is intact and fallback finds it
        got, _ = ck.restore(target, 4, fallback=True)
        ref, _ = ck.restore(target, 2)
        assert _bitwise(got, ref)
    assert _snapshot(tmp_path) == before  # nothing was deleted or rewritten
    gc.collect()  # Orbax's leftovers of the failed reads surface here, not in a later module


def test_resume_moves_a_damaged_chain_aside_and_saves_it_again(tmp_path, single, monkeypatch):
    """What training does on resume: steps that cannot be rebuilt (a damaged keyframe and the delta
    that needs it) go to quarantine/, the older chain is restored, and those steps are saved anew."""
    states, _ = single
    monkeypatch.chdir(tmp_path)
    with CompressedCheckpointer("ck", CodecConfig(keyframe_every=2), max_to_keep=None) as ck:
        for step, s in enumerate(states[:4], 1):
            ck.save(step, s)
    _damage(tmp_path / "ck" / "3", "truncate")
    target = abstract_like(states[0])
    with CompressedCheckpointer("ck", CodecConfig(keyframe_every=2), max_to_keep=None) as ck:
        got, _ = ck.restore(target, fallback=True, quarantine=True)
        ref, _ = ck.restore(target, 2)
        assert _bitwise(got, ref)
        assert ck.all_steps() == [1, 2]
        moved = sorted(p.name.split("-")[0] for p in (tmp_path / "ck" / "quarantine").iterdir())
        assert moved == ["3", "4"]  # kept, not deleted
        for step, s in zip((3, 4), states[2:4], strict=True):
            assert ck.save(step, s)
    with CompressedCheckpointer("ck", CodecConfig(), read_only=True) as ck:
        again, _ = ck.restore(target, 4)
    with CompressedCheckpointer(tmp_path / "quarantine-free", CodecConfig(keyframe_every=2)) as ck:
        for step, s in enumerate(states[:4], 1):
            ck.save(step, s)
        clean, _ = ck.restore(target, 4)
    assert _bitwise(again, clean)  # the re-saved chain equals one that was never damaged
    gc.collect()


def test_missing_keyframe_and_other_shapes_give_clear_errors(tmp_path, single):
    states, _ = single
    with CompressedCheckpointer(tmp_path, CodecConfig(keyframe_every=3), max_to_keep=None) as ck:
        for step, s in enumerate(states[:3], 1):
            ck.save(step, s)
    import shutil

    shutil.rmtree(tmp_path / "1")
    with CompressedCheckpointer(tmp_path, CodecConfig()) as ck:
        with pytest.raises(
            MissingReferenceError, match=r"residual of step 1 \(keyframe step 1\), which is missing"
        ):
            ck.restore(abstract_like(states[0]), 3)
        other, _ = _state(MeshConfig(data=1), 1, d_ff=128)
        with pytest.raises(
            IncompatibleCheckpointError,
            match=r"mlp'\]\['wi'\]\.value: saved \(2, 64, 256\) float32, expected \(2, 64, 128\)",
        ):
            ck.restore(abstract_like(other), 3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "3"]


def test_sharded_save_restores_onto_another_mesh(tmp_path, devices):
    state_a, setup_a = _state(MeshConfig(data=2, tensor=4), 8)
    states = _chain_of_states(state_a, 2, seed=3)
    # a large min_size keeps two weight shapes compressed (fewer programs to compile)
    with CompressedCheckpointer(tmp_path, CodecConfig(weight_bits=3, min_size=16384), max_to_keep=None) as ck:
        for step, s in enumerate(states, 1):
            ck.save(step, s)
        ck.wait()
        on_a, _ = ck.restore(abstract_train_state(states[0]), 2)
    state_b, _ = _state(MeshConfig(data=1, fsdp=4, tensor=2), 8)
    target = abstract_train_state(state_b)
    with CompressedCheckpointer(tmp_path, CodecConfig(), read_only=True) as ck:
        on_b, _ = ck.restore(target, 2)
    assert _bitwise(on_a, on_b)  # same values, whatever mesh they land on
    for want, got in zip(jax.tree.leaves(target), jax.tree.leaves(on_b), strict=True):
        assert got.sharding == want.sharding


def test_a_delta_saved_with_the_default_codec_has_measured_resume_figures(tmp_path, single):
    """``jaxslim-ckpt inspect`` quotes the benchmark's loss change at the step's exact settings: a
    default changed without being measured would leave the defaults without figures."""
    from jaxslim.checkpoint.resume_cost import describe, measured

    states, _ = single
    with CompressedCheckpointer(tmp_path, CodecConfig(), max_to_keep=None) as ck:
        for step, s in enumerate(states[:2], 1):
            ck.save(step, s)
        ck.wait()
        keyframe, delta = ck.metadata(1), ck.metadata(2)
    assert {"gpt 200 steps", "minilm 200 steps"} <= set(measured(delta))
    assert measured(keyframe) is None  # 8-bit weights: not what the figures were measured on
    assert any("measured at these settings" in line for line in describe(delta))
    assert measured({**delta, "alpha": 3e-5}) is None


def test_cli_compress_inspect_decompress(tmp_path, single, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    from jaxslim.checkpoint.compressed import numbered_tree
    from jaxslim.cli.ckpt import main

    states, setup = single
    monkeypatch.chdir(tmp_path)  # the CLI gets relative paths, as a user types them
    plain = tmp_path / "run" / "checkpoints"
    with Checkpointer(
        plain, max_to_keep=None, config_json={"model": {"scan_layers": True, "n_layers": 2}}
    ) as ck:
        for step, s in enumerate(states[:3], 1):
            ck.save(step, s, extra={"data": {"index": step}})
    assert (
        main(["compress", "run/checkpoints", "small", "--weight-bits", "3", "--no-momentum-gain", "-v"]) == 0
    )
    out = capsys.readouterr().out
    assert "keyframe" in out and "delta" in out and "total" in out and "x" in out
    assert "['params']['stack']['blocks']['mlp']['wi']['value']" in out
    assert main(["inspect", "small"]) == 0
    out = capsys.readouterr().out
    assert "restore chain [1, 2, 3]" in out and "m kept" in out
    assert "expected resume error" in out and "Adam's v filled (factored)" in out
    assert main(["decompress", "small", "back"]) == 0
    # the decompressed checkpoint restores into the training state like any plain one
    with Checkpointer(tmp_path / "back", read_only=True) as ck:
        got, extra = ck.restore(abstract_train_state(states[0]), 3)
    with CompressedCheckpointer(tmp_path / "small", CodecConfig(), read_only=True) as ck:
        leaves, _, meta = ck.restore_leaves(3)
    assert (meta["residual_gain"], meta["momentum_gain"], meta["outlier_fraction"]) == (True, False, 1e-4)
    assert extra == {"data": {"index": 3}}
    want = _flat(numbered_tree(meta["tree"], leaves))
    have = _flat(ocp.tree.serialize_tree(got, keep_empty_nodes=True))
    assert sorted(want) == sorted(have) and len(want) > 20
    assert all(np.array_equal(np.asarray(want[k]), np.asarray(have[k])) for k in want)
    # bad input: a clear message and a non-zero exit
    assert main(["compress", str(plain), str(tmp_path / "bad"), "--weight-bits", "9"]) == 2
    assert "CodecConfig.weight_bits must be an integer in [2, 8], got 9" in capsys.readouterr().err


@pytest.mark.slow
def test_training_resumes_from_compressed_checkpoints(tmp_path, monkeypatch):
    """A run whose last checkpoint is lost resumes from the previous compressed one: bit-exactly
    in the lossless mode (same final state as the run that never stopped), and from the lossy
    reconstruction with ExCP."""
    import importlib.util
    import shutil

    from jaxslim.training import train

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shakespeare_gpt.py"
    spec = importlib.util.spec_from_file_location("preset", path)
    preset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preset)
    base = preset.get_config("tiny")

    def run(workdir, compression):
        codec = CodecConfig(mode=compression, keyframe_every=2)
        ck = dataclasses.replace(base.checkpoint, every=4, keep=3, codec=codec, async_save=False)
        cfg = dataclasses.replace(base, workdir=workdir, steps=12, checkpoint=ck, sample_tokens=0)
        return train(dataclasses.replace(cfg, tensorboard=False), progress=False)

    monkeypatch.chdir(tmp_path)  # relative run directories, as the README's commands use
    for compression in ("lossless", "excp"):
        workdir = f"runs/{compression}"
        first = run(workdir, compression)
        assert first.resumed_from is None
        meta = json.loads((tmp_path / workdir / "checkpoints" / "8" / "codec" / "metadata").read_text())
        assert meta["mode"] == compression and meta["reference_step"] == 4 and not meta["keyframe"]
        shutil.rmtree(tmp_path / workdir / "checkpoints" / "12")  # as if killed before step 12 committed
        again = run(workdir, compression)
        assert again.resumed_from == 8 and int(again.state.step) == 12
        if compression == "lossless":
            assert _bitwise(first.state, again.state)
        else:
            assert np.isfinite(again.last_metrics["loss"])
            assert not _bitwise(first.state, again.state)  # resumed from the lossy reconstruction


@pytest.mark.parametrize("version", [1, 2])
def test_checkpoints_of_older_format_versions_still_restore(tmp_path, single, monkeypatch, version):
    """Versions 1 and 2 stored v's codes absolute (version 1 had no exact outliers either); their
    chains restore as they were written, and an unknown version is refused by name."""
    states, _ = single
    cfg = CodecConfig(keyframe_every=3, outlier_fraction=0.0)
    # what an earlier release wrote: v's codes as they are, not relative to m's mask
    monkeypatch.setattr(codec_module, "_relative", lambda codes, mask: codes)
    codec_module._weight_codes.cache_clear()
    try:
        with CompressedCheckpointer(tmp_path, cfg, max_to_keep=None) as ck:
            for step, s in enumerate(states[:2], 1):
                ck.save(step, s)
    finally:
        monkeypatch.undo()
        codec_module._weight_codes.cache_clear()
    for step in (1, 2):
        path = tmp_path / str(step) / "codec" / "metadata"
        meta = json.loads(path.read_text())
        assert meta["version"] == codec_module.FORMAT_VERSION == 3
        assert not any("outliers" in e for e in meta["leaves"])
        path.write_text(json.dumps({**meta, "version": version}))
    expected = _expected(states[:2], cfg)
    with CompressedCheckpointer(tmp_path, CodecConfig(), read_only=True) as ck:
        assert ck.metadata(2)["version"] == version
        got, _ = ck.restore(abstract_like(states[0]), 2)
    assert _bitwise(got, expected[1])
    path = tmp_path / "2" / "codec" / "metadata"
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 3}))
    with CompressedCheckpointer(tmp_path, CodecConfig(), read_only=True) as ck:  # read as relative: wrong
        got, _ = ck.restore(abstract_like(states[0]), 2)
    assert not _bitwise(got, expected[1])
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 4}))
    with CompressedCheckpointer(tmp_path, CodecConfig(), read_only=True) as ck:
        with pytest.raises(CorruptCheckpointError, match="version 4, expected .* version 1 or 2 or 3"):
            ck.restore(abstract_like(states[0]), 2)
