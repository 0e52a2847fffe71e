"""Two real processes joined by ``jax.distributed`` on CPU (Gloo collectives), two devices each.

Each process runs ``distributed_worker.py``: per-host data shards assembled into the global batch,
sharded train steps on a mesh spanning both processes, a checkpoint whose shards live on both
hosts, a restore checked bit for bit and one more step from it. The losses must equal the same
training run in this one process on four fake devices.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import distributed_worker as worker
import jax
import numpy as np
import pytest

WORKER = pathlib.Path(worker.__file__)
LOCAL_DEVICES = 2
PROCESSES = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(workdir: pathlib.Path, mesh_name: str) -> list[dict]:
    env = dict(os.environ)
    # each process sees only its own two devices (not the eight of this test process)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    env["JAX_PLATFORMS"] = "cpu"
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(PROCESSES), str(port), str(workdir), mesh_name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=240)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} failed (exit {p.returncode}):\n{out[-4000:]}"
    return [json.loads((workdir / f"result-{i}.json").read_text()) for i in range(PROCESSES)]


@pytest.mark.parametrize(
    "mesh_name, split",
    [
        ("fsdp", True),  # every weight sharded over all four devices, so across both hosts
        ("data_fsdp", False),  # data across the hosts, FSDP within each: each host holds whole weights
    ],
)
def test_two_processes_train_checkpoint_and_match_one_process(tmp_path, mesh_name, split):
    results = run_processes(tmp_path, mesh_name)
    ref_losses, ref_checksum = worker.reference_losses(
        worker.MESHES[mesh_name], jax.devices()[: PROCESSES * LOCAL_DEVICES]
    )
    for r in results:
        assert r["process_count"] == PROCESSES and r["global_devices"] == PROCESSES * LOCAL_DEVICES
        assert r["local_devices"] == LOCAL_DEVICES
        assert r["params_split_across_processes"] is split
        # each host reads half of the batch, and together they are the one-host batch
        assert r["local_batch_shape"][0] * PROCESSES == r["global_batch_shape"][0] == worker.GLOBAL_BATCH
        assert r["batches_match"]
        assert r["saved"] and r["steps_on_disk"] == [worker.STEPS_BEFORE_SAVE]
        assert r["restore_equal"] and r["restored_step"] == worker.STEPS_BEFORE_SAVE
        assert r["checksum_restored"] == r["checksum_saved"]
        np.testing.assert_allclose(r["losses"], ref_losses, rtol=1e-5)
        np.testing.assert_allclose(r["checksum_final"], ref_checksum, rtol=1e-5)
    # both processes saw the same replicated losses
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["losses"][-1] < results[0]["losses"][0]
