"""Relative paths and failed saves, the way users meet them.

Every test here runs from a relative working directory (``monkeypatch.chdir``) with relative
paths, as ``make demo`` does: Orbax needs absolute directories and reported relative ones only from
its background threads, so a run kept training with no checkpoint written. A save that fails in
Orbax's background threads (injected by ``tests/fault_driver.py``: a full disk while writing, an
I/O error at the final rename) must stop the run at the next step or save point with exit status
2 and a one-line error, and keep every checkpoint written before it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from jaxslim.checkpoint import (
    Checkpointer,
    CheckpointSaveError,
    CodecConfig,
    CompressedCheckpointer,
    abstract_like,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "fault_driver.py"


def _state(step: int) -> dict:
    # w is large enough (>= the codec's min_size) for the lossy codec to code it
    return {
        "params": {"w": jnp.full((64, 128), float(step)), "b": jnp.arange(8.0) + step},
        "step": jnp.int32(step),
    }


@pytest.mark.parametrize("kind", ["plain", "excp"])
def test_relative_directory_saves_async_and_restores(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    make = {
        "plain": lambda: Checkpointer("runs/r/checkpoints", max_to_keep=3),
        "excp": lambda: CompressedCheckpointer("runs/r/checkpoints", CodecConfig(), max_to_keep=3),
    }[kind]
    with make() as ckpt:
        assert ckpt.directory.is_absolute()
        for step in (1, 2):
            assert ckpt.save(step, _state(step), extra={"n": step})
            ckpt.check()
        ckpt.wait()
    # the files are where the relative path says, and a new checkpointer reads them
    assert sorted(p.name for p in (tmp_path / "runs/r/checkpoints").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
    ]
    with make() as again:
        restored, extra = again.restore(abstract_like(_state(0)))
    assert extra == {"n": 2}
    np.testing.assert_allclose(np.asarray(restored["params"]["b"]), np.arange(8.0) + 2, atol=1e-6)


@pytest.mark.parametrize("phase", ["serialize", "commit"])
def test_failed_background_save_is_reported_and_sticks(tmp_path, monkeypatch, phase):
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer("ck", max_to_keep=2)
    assert ckpt.save(1, _state(1))
    ckpt.wait()
    _install_undoable(monkeypatch, phase, first_bad_step=2)
    assert ckpt.save(2, _state(2))  # returns: the failure happens in a background thread
    deadline = time.time() + 60
    with pytest.raises(CheckpointSaveError) as err:
        while time.time() < deadline:
            ckpt.check()
            time.sleep(0.01)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"saving checkpoint step 2 to {tmp_path / 'ck'} failed: OSError" in msg
    assert "(injected)" in msg and "the checkpoints [1] already saved are kept" in msg
    # sticky: no later save pretends the run is checkpointed, and close reports it too
    with pytest.raises(CheckpointSaveError):
        ckpt.save(3, _state(3))
    with pytest.raises(CheckpointSaveError):
        ckpt.close()
    # step 1 is intact; step 2 was never committed
    with Checkpointer("ck", read_only=True) as reader:
        assert reader.all_steps() == [1]
        restored, _ = reader.restore(abstract_like(_state(0)))
    assert int(restored["step"]) == 1


def _install_undoable(monkeypatch, phase: str, first_bad_step: int) -> None:
    """``fault_driver.install`` (the injection the CLI tests run in a subprocess), with every patched
    attribute restored at the end of the test."""
    import fault_driver
    from orbax.checkpoint._src.handlers import json_checkpoint_handler
    from orbax.checkpoint._src.path import atomicity

    monkeypatch.setattr(
        json_checkpoint_handler.JsonCheckpointHandler,
        "_save_fn",
        json_checkpoint_handler.JsonCheckpointHandler._save_fn,
    )
    monkeypatch.setattr(
        atomicity.AtomicRenameTemporaryPath, "finalize", atomicity.AtomicRenameTemporaryPath.finalize
    )
    fault_driver.install(phase, first_bad_step)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    return env


TRAIN = [
    "shakespeare_gpt:tiny",
    "--steps=12",
    "--log-every=1",
    "--checkpoint.every=3",
    "--sample-tokens=0",
    "--no-tensorboard",
    "--workdir=runs/demo",
]


@pytest.mark.slow
@pytest.mark.parametrize("phase,compression", [("serialize", "none"), ("commit", "excp")])
def test_training_stops_with_exit_2_when_a_save_fails(tmp_path, phase, compression):
    args = [*TRAIN, f"--checkpoint.compression={compression}"]
    done = subprocess.run(
        [sys.executable, str(DRIVER), phase, "6", *args],
        cwd=tmp_path,  # relative workdir, as in the README
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxslim-train: error: saving checkpoint step 6 to ")
    assert "runs/demo/checkpoints failed: OSError" in last and "kept" in last
    assert "Traceback" not in done.stderr
    run = tmp_path / "runs" / "demo"
    logged = [
        json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    # stopped at the next step or, at the latest, at the next save point (step 9); never finished
    assert 6 <= max(logged) <= 9
    assert "validation loss" not in done.stdout
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3]
    # the kept checkpoint is whole: a rerun without the fault resumes from it and finishes
    again = subprocess.run(
        [sys.executable, "-m", "jaxslim.cli.train", *args],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 3" in again.stdout
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 12
