"""Compressed saves in the background: what ``save`` blocks for, failures and kills in each phase
(encode, host copy, write), and retention while saves are in flight."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslim.checkpoint import (
    CheckpointSaveError,
    Codec,
    CodecConfig,
    CompressedCheckpointer,
    abstract_like,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
CFG = CodecConfig(keyframe_every=3)


def _state(step: int) -> dict:
    """A weight with Adam moments, moving a little each step (deterministic in ``step``)."""
    rng = np.random.default_rng(step)
    w = np.linspace(-1, 1, 64 * 128, dtype=np.float32).reshape(64, 128) + 1e-2 * step
    w = w + 1e-3 * rng.standard_normal(w.shape).astype(np.float32)
    m = 1e-3 * rng.standard_normal(w.shape).astype(np.float32)
    v = 1e-6 * rng.standard_normal(w.shape).astype(np.float32) ** 2
    return {
        "params": {"w": jnp.asarray(w), "b": jnp.arange(8.0) + step},
        "opt": {
            "mu": {"w": jnp.asarray(m), "b": jnp.zeros(8)},
            "nu": {"w": jnp.asarray(v), "b": jnp.zeros(8)},
        },
        "step": jnp.int32(step),
    }


def _expected(steps: list[int], cfg: CodecConfig = CFG) -> dict:
    """What each step restores to, from the codec alone (keyframe every ``keyframe_every`` saves)."""
    codec, ref, out = Codec(cfg), None, {}
    for n, step in enumerate(steps):
        s = _state(step)
        plan = codec.plan(s)
        enc = codec.encode(plan, jax.tree.leaves(s), ref, keyframe=n % cfg.keyframe_every == 0)
        leaves = [enc.recon.get(i, x) for i, x in enumerate(jax.tree.leaves(s))]
        out[step] = jax.tree.unflatten(jax.tree.structure(s), leaves)
        ref = enc.recon
    return out


def _same(a, b) -> bool:
    return all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


class SlowCodec(Codec):
    """The real codec, after a pause (a slow encoder), optionally failing at one save."""

    def __init__(self, cfg, delay: float, fail_at: int | None = None):
        super().__init__(cfg)
        self.delay, self.fail_at, self.calls = delay, fail_at, 0

    def encode(self, *args, **kwargs):
        self.calls += 1
        time.sleep(self.delay)
        if self.calls == self.fail_at:
            raise RuntimeError("encoder failed (injected)")
        return super().encode(*args, **kwargs)


def test_save_blocks_for_the_snapshot_not_the_encode(tmp_path):
    delay = 3.0
    with CompressedCheckpointer(tmp_path, CFG, max_to_keep=None) as ck:
        ck.save(1, _state(1))  # compiles the snapshot and finiteness programs
        ck.wait()
        ck.codec = SlowCodec(CFG, delay)
        blocked = []
        for step in (2, 3):
            state = _state(step)
            t = time.perf_counter()
            assert ck.save(step, state, extra={"n": step})
            blocked.append(time.perf_counter() - t)
            # the caller reuses (here: deletes) its arrays at once, as a donating train step does
            for x in jax.tree.leaves(state):
                x.delete()
            assert ck.latest_step() == step  # in flight, already listed
        ck.wait()
        # step 2 returned long before its encode ended; step 3 waited for step 2's
        assert blocked[0] < delay / 3, blocked
        assert blocked[1] > delay / 2, blocked
        got, extra = ck.restore(abstract_like(_state(0)), 3)
    assert extra == {"n": 3}
    assert _same(got, _expected([1, 2, 3])[3])


def test_a_failed_background_encode_is_reported_at_the_next_check_and_sticks(tmp_path):
    ck = CompressedCheckpointer(tmp_path, CFG, max_to_keep=None)
    ck.codec = SlowCodec(CFG, 0.2, fail_at=3)
    for step in (1, 2):
        ck.save(step, _state(step))
    ck.wait()
    assert ck.save(3, _state(3))  # returns: the encode fails in the background
    deadline = time.time() + 60
    with pytest.raises(CheckpointSaveError, match=r"step 3 .* failed: RuntimeError: encoder failed"):
        while time.time() < deadline:
            ck.check()
            time.sleep(0.02)
    with pytest.raises(CheckpointSaveError, match="the checkpoints \\[1, 2\\] already saved are kept"):
        ck.save(4, _state(4))
    with pytest.raises(CheckpointSaveError):
        ck.close()
    with CompressedCheckpointer(tmp_path, CFG, read_only=True) as reader:
        assert reader.all_steps() == [1, 2]
        got, _ = reader.restore(abstract_like(_state(0)))
    assert _same(got, _expected([1, 2])[2])


def test_retention_never_deletes_a_dependency_of_saves_in_flight(tmp_path):
    with CompressedCheckpointer(tmp_path, CFG, max_to_keep=1) as ck:
        for step in range(1, 7):  # no wait between saves
            ck.save(step, _state(step))
            ck.check()
        ck.wait()
        # keyframes at 1 and 4: the latest (6) needs 5 and 4; 1..3 are no longer needed
        assert ck.all_steps() == [4, 5, 6] and ck.chain(6) == [4, 5, 6]
        got, _ = ck.restore(abstract_like(_state(0)))
    assert _same(got, _expected(list(range(1, 7)))[6])


# The child saves steps 1 and 2, then is killed (os._exit, no cleanup) in one phase of step 3.
_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_ckpt_async import CFG, _state
    from jaxslim.checkpoint import CompressedCheckpointer, Codec, Checkpointer
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    phase = sys.argv[1]
    ck = CompressedCheckpointer("ck", CFG, max_to_keep=None)
    for step in (1, 2):
        ck.save(step, _state(step))
    ck.wait()

    def die(*a, **k):
        os._exit(9)

    async def die_async(*a, **k):
        os._exit(9)

    if phase == "encode":
        ck.codec.encode = die
    elif phase == "copy":  # as the compressed arrays are handed to Orbax for the host copy
        ocp.CheckpointManager.save = die
    else:  # "write": Orbax's background threads are writing the step's files
        json_checkpoint_handler.JsonCheckpointHandler._save_fn = die_async
    ck.save(3, _state(3))
    ck.wait()
    print("survived")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["encode", "copy", "write"])
def test_a_kill_in_any_phase_leaves_the_chain_restorable(tmp_path, phase):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    code = _CHILD.format(tests=str(REPO / "tests"))
    done = subprocess.run(
        [sys.executable, "-c", code, phase],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 9, done.stdout[-2000:] + done.stderr[-3000:]
    target = abstract_like(_state(0))
    with CompressedCheckpointer(tmp_path / "ck", CFG, max_to_keep=None) as ck:
        assert ck.all_steps() == [1, 2]  # the partial step 3 is gone (its temporary files removed)
        got, _ = ck.restore(target)
        assert _same(got, _expected([1, 2])[2])
        # the chain goes on from the restored step as if step 3 had never been tried
        ck.save(3, _state(3))
        ck.wait()
        assert ck.chain(3) == [1, 2, 3]
        again, _ = ck.restore(target, 3)
    assert _same(again, _expected([1, 2, 3])[3])
