"""A save killed half-way (SIGKILL, no clean-up) never damages earlier checkpoints.

A child process saves step 1, then starts saving step 2 and is killed with SIGKILL, either with
every file written and only the commit rename missing ("commit": Orbax's rename is held back so the
kill lands exactly there) or while the array data is being written ("writing": killed as soon as the
first data file of step 2 appears). A new checkpointer on the directory must then list step 1
only, restore it bit for bit, clean the partial step away and save over it.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxslim
from jaxslim.checkpoint import Checkpointer, abstract_like

CHILD = r"""
import asyncio, os, sys
import numpy as np
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jaxslim.checkpoint import Checkpointer

directory, marker, mode, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def state(seed):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.standard_normal(size, np.float32)), "step": jnp.int32(seed)}

# max_to_keep=1: once step 2 commits, step 1 is due for deletion, so a kill must not get that far.
ckpt = Checkpointer(directory, max_to_keep=1, async_save=True)
ckpt.save(1, state(1), extra={"pos": 1})
ckpt.wait()

if mode == "commit":
    async def hold_commit(self):
        open(marker, "w").close()
        await asyncio.sleep(3600)

    ocp.path.atomicity.AtomicRenameTemporaryPath.finalize = hold_commit

ckpt.save(2, state(2), extra={"pos": 2})
if mode == "writing":
    open(marker, "w").close()  # the save is issued; its files are being written in the background
ckpt.wait()
print("finished", flush=True)
"""


def state(seed: int, size: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": jax.numpy.asarray(rng.standard_normal(size, np.float32)), "step": jax.numpy.int32(seed)}


def data_being_written(directory: pathlib.Path) -> bool:
    """Whether a data file of step 2 exists yet (inside its uncommitted temporary directory)."""
    return any(p.parent.name == "d" for p in directory.glob("2.orbax-checkpoint-tmp/**/*"))


def run_and_kill(directory: pathlib.Path, mode: str, size: int) -> list[str] | None:
    """Runs the child to the kill point, SIGKILLs it and returns the directory listing at that moment.

    Returns None when, in "writing" mode, the save committed before the kill could land.
    """
    marker = directory.parent / f"{mode}.marker"
    env = dict(os.environ)
    repo = str(pathlib.Path(jaxslim.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(marker), mode, str(size)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and (mode == "commit" or data_being_written(directory))):
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace")
                if mode == "writing" and proc.returncode == 0 and "finished" in out:
                    return None
                pytest.fail(f"child exited with {proc.returncode} before the kill:\n{out[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child never reached the kill point")
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        listing = sorted(p.name for p in directory.iterdir())
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return listing


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,size",
    [("commit", 1 << 20), ("writing", 1 << 24)],  # 4 MB; 64 MB, so that writing takes a while
)
def test_killed_save_never_damages_earlier_checkpoints(tmp_path, mode, size):
    directory = tmp_path / "ckpt"
    listing = run_and_kill(directory, mode, size)
    if listing is None:
        pytest.skip("the save committed before the kill could land (a very fast disk); nothing to check")

    # step 2 lives only in a temporary directory that was never renamed to "2"
    assert "1" in listing and "2" not in listing, listing
    assert any(name.startswith("2.orbax-checkpoint-tmp") for name in listing), listing

    with Checkpointer(directory, max_to_keep=1) as ckpt:
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        restored, extra = ckpt.restore(abstract_like(state(0, size)))
        np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state(1, size)["w"]))
        assert int(restored["step"]) == 1 and extra == {"pos": 1}
        # the partial step is cleaned away on open, and the run saves over it
        assert not [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
        assert ckpt.save(2, state(2, size), extra={"pos": 2})
        ckpt.wait()
        assert ckpt.all_steps() == [2]
        restored, _ = ckpt.restore(abstract_like(state(0, size)))
        np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state(2, size)["w"]))
