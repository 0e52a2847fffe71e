"""Exact resume: a run SIGKILLed mid-way (twice) and resumed equals an uninterrupted run, bitwise,
in every step's loss and in the final parameters and optimizer state, and the data stream neither
repeats nor skips a batch."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 14
ARGS = [
    "shakespeare_gpt:tiny",
    f"--steps={STEPS}",
    "--log-every=1",
    "--checkpoint.every=3",
    "--checkpoint.keep=2",
    "--sample-tokens=0",
    "--no-tensorboard",
]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, not the 8 fakes
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO)
    return env


def _cmd(workdir: pathlib.Path) -> list[str]:
    # run from the run's parent with a relative --workdir, as the README's commands do
    return [sys.executable, "-m", "train.lm", *ARGS, f"--workdir=runs/{workdir.name}"]


def _steps_logged(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if '"loss"' in line]
    return max(steps, default=0)


def _run_and_kill(workdir: pathlib.Path, after_step: int) -> None:
    log = workdir.parent / f"{workdir.name}-killed-at-{after_step}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _cmd(workdir), cwd=workdir.parents[1], env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.time() + 120
            while _steps_logged(workdir) < after_step:
                if proc.poll() is not None:
                    pytest.fail(f"the run ended before step {after_step}:\n{log.read_text()[-3000:]}")
                assert time.time() < deadline, "timed out waiting for the run to reach the kill point"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _run(workdir: pathlib.Path) -> str:
    done = subprocess.run(
        _cmd(workdir), cwd=workdir.parents[1], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    """Loss per step; a step re-run after a kill keeps its last record."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def _final_state(workdir: pathlib.Path):
    import orbax.checkpoint as ocp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # restoring without a target warns that shardings are guessed
        return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(STEPS) / "state")


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    ref, killed = tmp_path / "runs" / "ref", tmp_path / "runs" / "killed"
    _run(ref)
    _run_and_kill(killed, after_step=4)
    _run_and_kill(killed, after_step=9)
    out = _run(killed)
    assert "resuming from step" in out

    ref_losses, got_losses = _losses(ref), _losses(killed)
    assert sorted(ref_losses) == sorted(got_losses) == list(range(1, STEPS + 1))
    assert got_losses == ref_losses  # bitwise: the same floats, step by step

    a, b = _final_state(ref), _final_state(killed)
    assert int(b["step"]) == STEPS
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # the data position went on from where it stopped: same epoch position as the uninterrupted run
    extra = lambda d: json.loads((d / "checkpoints" / str(STEPS) / "extra" / "metadata").read_text())  # noqa: E731
    assert extra(ref) == extra(killed)
    assert extra(killed)["data"]["index"] == STEPS * 8  # 8 sequences per step, none skipped or repeated
