"""Runs that survive their users: one run per workdir, damaged checkpoints replaced, foreign
folders untouched. Every test runs from a relative working directory with relative paths, as the
README's commands do."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jaxslim.checkpoint import Checkpointer
from jaxslim.cli.presets import load_preset
from jaxslim.cli.train import main
from jaxslim.training import RunDirectory, RunDirectoryError, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO)
    return env


def _cmd(workdir: str, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxslim.cli.train",
        "shakespeare_gpt:tiny",
        f"--steps={steps}",
        "--log-every=1",
        "--checkpoint.every=50",
        "--sample-tokens=0",
        "--no-tensorboard",
        f"--workdir={workdir}",
    ]


def _logged_steps(run: pathlib.Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if '"loss"' in x]


def _wait_for(cond, proc, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_on_a_live_workdir_is_refused_and_touches_nothing(tmp_path):
    run = tmp_path / "runs" / "a"
    first = subprocess.Popen(
        _cmd("runs/a", 150),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: len(_logged_steps(run)) >= 2, first, "the first run's second step")
        second = subprocess.run(
            _cmd("runs/a", 150), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2, second.stderr[-2000:]
        err = second.stderr.strip().splitlines()[-1]
        assert err.startswith(f"jaxslim-train: error: the run directory {run} is in use by another run")
        assert f"pid {first.pid}" in err and "Traceback" not in second.stderr
        out, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=30)
    assert first.returncode == 0, out[-3000:]
    steps = _logged_steps(run)
    assert steps == list(range(1, 151))  # one record per logged step: nothing interleaved
    assert json.loads((run / "config.json").read_text())["steps"] == 150


@pytest.mark.slow
def test_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path):
    run = tmp_path / "runs" / "k"
    first = subprocess.Popen(
        _cmd("runs/k", 60),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: len(_logged_steps(run)) >= 3, first, "step 3")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=30)
    holder = json.loads((run / "run.lock").read_text())
    assert holder["pid"] == first.pid
    again = subprocess.run(
        _cmd("runs/k", 60), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "taking over the run directory" in again.stderr and f"pid {first.pid}" in again.stderr
    assert (run / "run.lock").read_text() == ""  # released at the end


def _tiny(workdir: str, **changes):
    cfg = load_preset("shakespeare_gpt:tiny")
    ck = dataclasses.replace(cfg.checkpoint, every=4, keep=3, async_save=False)
    return dataclasses.replace(
        cfg, workdir=workdir, steps=8, checkpoint=ck, sample_tokens=0, tensorboard=False, **changes
    )


# Orbax's reads of damaged files leave TensorStore callbacks that report on a closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_newest_checkpoint_is_moved_aside_and_saved_again(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = _tiny("runs/t")
    first = train(cfg, progress=False)
    ckpts = tmp_path / "runs" / "t" / "checkpoints"
    data_files = [f for f in (ckpts / "8" / "state").rglob("*") if f.is_file() and f.stat().st_size > 1000]
    assert data_files
    for f in data_files:  # truncated, as by a full disk or a copy cut short
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])

    again = train(cfg, progress=False)
    assert again.resumed_from == 4 and int(again.state.step) == 8
    moved = list((ckpts / "quarantine").iterdir())
    assert [p.name.split("-")[0] for p in moved] == ["8"]  # kept, not deleted
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [4, 8]
    with Checkpointer(ckpts, read_only=True) as ck:  # the new step 8 reads back
        state, _ = ck.restore_as_saved(8)
    assert int(state["step"]) == 8
    assert _equal_params(first.state.params, again.state.params)  # same data and steps, same result

    capsys.readouterr()
    third = train(cfg, progress=False)
    assert third.resumed_from == 8
    assert "already at step 8 of 8" in capsys.readouterr().out


def _equal_params(a, b) -> bool:
    import jax
    import numpy as np

    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_model_folder_as_workdir_is_refused_and_left_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "my_model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "model.safetensors").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    assert main(["shakespeare_gpt:tiny", "--steps=2", "--workdir=my_model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"jaxslim-train: error: {model} is not a jaxslim run directory"
    )
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    # a file where the run directory should be: the same
    (tmp_path / "afile").write_text("x")
    assert main(["shakespeare_gpt:tiny", "--steps=2", "--workdir=afile"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


def test_run_directory_lock_in_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with RunDirectory("r"):
        holder = json.loads((tmp_path / "r" / "run.lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(RunDirectoryError, match=rf"in use by another run \(host .*, pid {os.getpid()}"):
            RunDirectory("r").__enter__()
    with RunDirectory("r"):  # released on exit: the next run takes it without a warning
        pass
    assert (tmp_path / "r" / "jaxslim-run.json").exists()
