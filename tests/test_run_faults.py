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


def _start(cwd: pathlib.Path, workdir: str, steps: int) -> subprocess.Popen:
    """A training run in the background, its output captured as text."""
    return subprocess.Popen(
        _cmd(workdir, steps), cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_second_run_on_a_live_workdir_is_refused_and_touches_nothing(tmp_path):
    run = tmp_path / "runs" / "a"
    first = _start(tmp_path, "runs/a", 150)
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
    first = _start(tmp_path, "runs/k", 60)
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


# -- presets: a file runs only when named by its path ---------------------------------------------


def test_local_configs_folder_never_runs_by_name(tmp_path, monkeypatch, caplog):
    from jaxslim.cli.presets import PresetError

    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "ran"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "shakespeare_gpt.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('x')\n"
    )
    with caplog.at_level("WARNING"):
        cfg = load_preset("shakespeare_gpt:tiny")
    assert cfg.model.arch == "gpt2" and not sentinel.exists()
    assert "configs/shakespeare_gpt.py of the same name is not run" in caplog.text
    with pytest.raises(PresetError, match="get_config"):  # given as a path, the user asked for it
        load_preset("./configs/shakespeare_gpt.py")
    assert sentinel.exists()


# -- atomic outputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_interrupted_overwrite_keeps_the_old_output_whole(tmp_path, monkeypatch, fail_after):
    from jaxslim.paths import output_dir

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with output_dir("out") as tmp:
        for i in range(3):
            (tmp / f"shard-{i}").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with output_dir("out", overwrite=True) as tmp:
            for i in range(3):
                if i == fail_after:
                    raise KeyboardInterrupt  # as a Ctrl-C (or a kill) mid-write
                (tmp / f"shard-{i}").write_text("new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {f"shard-{i}": "old" for i in range(3)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left
    with output_dir("out", overwrite=True) as tmp:
        (tmp / "shard-0").write_text("new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"shard-0": "new"}
    with pytest.raises(FileExistsError, match="not empty; refusing to overwrite"):
        with output_dir("out"):
            pass


def _tiny_hf(path: pathlib.Path) -> pathlib.Path:
    """A tiny random Llama in Hugging Face layout."""
    from flax import nnx

    from jaxslim.config import ModelConfig
    from jaxslim.convert import save_hf
    from jaxslim.models import Transformer

    cfg = ModelConfig.llama(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    save_hf(Transformer(cfg, rngs=nnx.Rngs(0)), path)
    return path


@pytest.mark.slow
def test_convert_killed_mid_write_leaves_the_old_output(tmp_path):
    """A real SIGKILL while ``jaxslim-convert to-jax --overwrite`` writes: the old output is whole."""
    _tiny_hf(tmp_path / "hf")
    env = _env()
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "jaxslim.cli.convert", "to-jax", "hf", "jx", "--overwrite"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run().returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "jx").iterdir()}
    # kill the second conversion as soon as its partial folder appears
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxslim.cli.convert", "to-jax", "hf", "jx", "--overwrite"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob(".jx.partial-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    proc.kill()
    proc.wait(timeout=30)
    assert {p.name: p.read_bytes() for p in (tmp_path / "jx").iterdir()} == before


# -- exit codes ----------------------------------------------------------------------------------


def test_exit_codes_and_one_line_messages(tmp_path, monkeypatch, capsys):
    from jaxslim.cli import ckpt, convert, prune

    monkeypatch.chdir(tmp_path)

    def err() -> list[str]:
        return capsys.readouterr().err.strip().splitlines()

    # a workdir under a file: a filesystem error, exit 2, one line
    (tmp_path / "afile").write_text("x")
    assert main(["shakespeare_gpt:tiny", "--steps=2", "--workdir=afile/run"]) == 2
    lines = err()
    assert len(lines) == 1 and lines[0].startswith("jaxslim-train: error: [Errno 20] Not a directory")
    # decompress of a folder that is not a checkpoint: exit 2, nothing written
    (tmp_path / "notckpt").mkdir()
    assert ckpt.main(["decompress", "notckpt", "plain"]) == 2
    assert err() == [
        f"jaxslim-ckpt: error: {tmp_path / 'notckpt'} holds no checkpoint steps; nothing was written"
    ]
    assert not (tmp_path / "plain").exists()
    # values argparse refuses: exit 2 with the flag named
    for cli, argv in [
        (convert.main, ["to-hf", "a", "b", "--max-shard-gb", "inf"]),
        (prune.main, ["--flops", "0.5", "--out", "o", "--num-samples", "0"]),
        (prune.main, ["--flops", "0.5", "--out", "o", "--held-out", "0"]),
        (prune.main, ["--flops", "0.5", "--out", "o", "--batch-size", "0"]),
    ]:
        with pytest.raises(SystemExit) as e:
            cli(argv)
        assert e.value.code == 2
        assert argv[-2] in capsys.readouterr().err
    # a corrupt weights file: exit 2 naming it, not a traceback and not the "exceeds --atol" status
    hf = _tiny_hf(tmp_path / "hf")
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    assert convert.main(["check", "hf"]) == 2
    lines = err()
    assert (
        len(lines) == 1 and lines[0].startswith("jaxslim-convert: error:") and "model.safetensors" in lines[0]
    )
    # --debug shows the traceback instead
    with pytest.raises(ValueError, match="model.safetensors"):
        convert.main(["check", "hf", "--debug"])


def test_non_finite_weights_and_bad_utf8_samples_are_named(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from jaxslim.convert.io import read_tensors
    from jaxslim.prune import load_sentences

    w = np.ones((4, 4), np.float32)
    w[1, 2] = np.nan
    save_file(
        {"good": np.ones(3, np.float32), "bad.weight": w, "ids": np.arange(3)},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(ValueError, match=r"1 tensors hold NaN or Inf values: bad.weight \(1 of 16\)"):
        read_tensors(tmp_path)
    (tmp_path / "s.txt").write_bytes(b"a good line of words here\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=r"s.txt is not UTF-8 text \(byte 26"):
        load_sentences(str(tmp_path / "s.txt"), 1)


def test_compressed_run_resumed_without_compression_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["shakespeare_gpt:tiny", "--steps=4", "--sample-tokens=0", "--no-tensorboard", "--workdir=runs/c"]
    assert main([*args, "--checkpoint.compression=excp"]) == 0
    capsys.readouterr()
    assert main([*args[:-1], "--steps=6", "--workdir=runs/c"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert (
        "is a compressed checkpoint (mode 'excp')" in lines[0] and "--checkpoint.compression excp" in lines[0]
    )
