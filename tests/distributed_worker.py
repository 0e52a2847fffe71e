"""One process of the two-process CPU training run driven by ``test_distributed.py``.

Usage: ``python distributed_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR [MESH]``.

Each process joins ``jax.distributed`` on ``127.0.0.1:PORT`` (CPU collectives over Gloo), sees its
own local CPU devices (the caller sets ``--xla_force_host_platform_device_count``) plus the other
process's, and with jaxslim's own API trains a tiny GPT-2 for a few steps on a mesh spanning both
processes, saves a checkpoint together with the other process, restores it, checks the restored
shards bit for bit and trains one more step from the restored state. It writes
``WORKDIR/result-<PROCESS_ID>.json`` (losses, a parameter checksum, the checks' outcomes).

The model, data and optimizer are defined here once, so the test can run the same training on
fake devices in its own process and compare the losses with the two-process run.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxslim.checkpoint import Checkpointer
from jaxslim.config import MeshConfig, ModelConfig, OptimConfig
from jaxslim.data import PackedSequences, TrainIterator
from jaxslim.engine.state import TrainSetup, TrainState, abstract_train_state, create_train_state
from jaxslim.engine.step import lm_objective, make_train_step
from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer
from jaxslim.sharding import batch_sharding, make_mesh, shard_batch
from jaxslim.training.distributed import maybe_initialize

VOCAB = 64
SEQ_LEN = 16
GLOBAL_BATCH = 8
SEED = 0
# Steps before the checkpoint; one more step runs from the restored state.
STEPS_BEFORE_SAVE = 3
TOTAL_STEPS = STEPS_BEFORE_SAVE + 1
# Mesh layouts the worker knows by name: "fsdp" shards every weight across both processes (the
# demanding case: cross-process all-gathers and a checkpoint whose shards live on two hosts);
# "data_fsdp" puts the data axis across processes and FSDP within each one.
MESHES: dict[str, MeshConfig] = {
    "fsdp": MeshConfig(data=1, fsdp=-1),
    "data_fsdp": MeshConfig(data=2, fsdp=-1),
}


def model_config() -> ModelConfig:
    return ModelConfig.gpt2(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=SEQ_LEN)


def corpus() -> PackedSequences:
    """A deterministic, learnable token stream (a noisy repeating pattern), so the loss falls within a
    few steps; pure noise would leave the losses too flat to check a decrease."""
    rng = np.random.default_rng(1234)
    period = rng.integers(0, VOCAB, size=23)
    n = GLOBAL_BATCH * TOTAL_STEPS * SEQ_LEN * 2 + 1
    tokens = np.resize(period, n)
    noise = rng.random(n) < 0.1
    tokens[noise] = rng.integers(0, VOCAB, size=int(noise.sum()))
    return PackedSequences(tokens.astype(np.int32), seq_len=SEQ_LEN)


def data_iterator(process_index: int, process_count: int) -> TrainIterator:
    return TrainIterator(
        corpus(),
        global_batch_size=GLOBAL_BATCH,
        seed=SEED,
        process_index=process_index,
        process_count=process_count,
    )


def build(
    mesh_cfg: MeshConfig, devices: list[jax.Device] | None = None
) -> tuple[Mesh, TrainState, TrainSetup, Callable]:
    """Mesh, initial train state, its setup and the jitted train step; call under the mesh and rules."""
    mesh = make_mesh(mesh_cfg, devices)
    rules = mesh_cfg.rules
    cfg = model_config()
    # warmup 0 and a cosine over the full run: the learning rate differs each step, so a restore that
    # lost the optimizer's step count would change the last loss.
    tx = build_optimizer(OptimConfig(lr=1e-2, warmup_steps=0), TOTAL_STEPS)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        state, setup = create_train_state(
            lambda: Transformer(cfg, rngs=nnx.Rngs(SEED)), tx, mesh, rules, seed=SEED
        )
        step = make_train_step(setup, lm_objective, batch_sharding=batch_sharding(mesh, rules))
    return mesh, state, setup, step


@jax.jit
def params_checksum(params: Any) -> jax.Array:
    """Sum of |w| over every parameter: one replicated scalar, readable on every process."""
    return sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(params))


def reference_losses(mesh_cfg: MeshConfig, devices: list[jax.Device]) -> tuple[list[float], float]:
    """The same run in one process: losses of every step (no checkpoint) and the final checksum."""
    mesh, state, _, step = build(mesh_cfg, devices)
    it = data_iterator(0, 1)
    losses = []
    with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
        for _ in range(TOTAL_STEPS):
            state, metrics = step(state, shard_batch(next(it), mesh, mesh_cfg.rules))
            losses.append(float(metrics["loss"]))
        return losses, float(params_checksum(state.params))


def shards_equal(a: TrainState, b: TrainState) -> bool:
    """Whether two states agree leaf by leaf on this process's shards: same sharding, same bits."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if x.shape != y.shape or x.dtype != y.dtype or x.sharding != y.sharding:
            return False
        ys = {s.device: s for s in y.addressable_shards}
        for sx in x.addressable_shards:
            sy = ys[sx.device]
            if sx.index != sy.index or not np.array_equal(np.asarray(sx.data), np.asarray(sy.data)):
                return False
    return True


def holds_whole_array(x: jax.Array) -> bool:
    """Whether this process's shards of ``x`` together cover every element (replicated or not)."""
    covered = np.zeros(x.shape, dtype=bool)
    for shard in x.addressable_shards:
        covered[shard.index] = True
    return bool(covered.all())


def all_processes(flag: bool) -> bool:
    """``flag`` AND-ed over every process, so both report the same verdict."""
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


def run(process_id: int, num_processes: int, port: int, workdir: pathlib.Path, mesh_name: str) -> dict:
    from jax.experimental import multihost_utils

    t0 = time.perf_counter()
    # Gloo is the default in this JAX, but naming it keeps the run independent of that default.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    # the environment a launcher (SLURM, a job script) would set; jaxslim's start-up reads it
    os.environ.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(num_processes),
        JAX_PROCESS_ID=str(process_id),
    )
    assert maybe_initialize()
    assert jax.process_index() == process_id and jax.process_count() == num_processes
    mesh_cfg = MESHES[mesh_name]
    rules = mesh_cfg.rules
    mesh, state, setup, step = build(mesh_cfg)
    it = data_iterator(jax.process_index(), jax.process_count())
    single_host = data_iterator(0, 1)  # the global batches, to check the per-host assembly
    losses: list[float] = []
    batches_match = True
    result: dict[str, Any] = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "mesh": dict(mesh.shape),
    }
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        # some weight must be split across the processes for the checkpoint to be a real multi-host one
        result["params_split_across_processes"] = any(
            not holds_whole_array(x) for x in jax.tree.leaves(state.params)
        )
        for _ in range(STEPS_BEFORE_SAVE):
            local = next(it)
            batch = shard_batch(local, mesh, rules)
            whole = multihost_utils.process_allgather(batch["tokens"], tiled=True)
            batches_match &= bool(np.array_equal(whole, next(single_host)["tokens"]))
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        result["local_batch_shape"] = list(local["tokens"].shape)
        result["global_batch_shape"] = list(batch["tokens"].shape)
        result["checksum_saved"] = float(params_checksum(state.params))

        ck = Checkpointer(workdir / "ckpt", max_to_keep=2, async_save=False)
        saved = ck.save(STEPS_BEFORE_SAVE, state, extra={"data": it.get_state()})
        ck.wait()
        restored, extra = ck.restore(abstract_train_state(state))
        result["saved"] = bool(saved)
        result["steps_on_disk"] = ck.all_steps()
        result["restore_equal"] = all_processes(shards_equal(state, restored))
        result["restored_step"] = int(restored.step)
        result["checksum_restored"] = float(params_checksum(restored.params))

        # continue from the restored state and the restored data position, as a resumed run does
        resumed = data_iterator(jax.process_index(), jax.process_count())
        resumed.set_state(extra["data"])
        batch = shard_batch(next(resumed), mesh, rules)
        whole = multihost_utils.process_allgather(batch["tokens"], tiled=True)
        batches_match &= bool(np.array_equal(whole, next(single_host)["tokens"]))
        restored, metrics = step(restored, batch)
        losses.append(float(metrics["loss"]))
        result["checksum_final"] = float(params_checksum(restored.params))
        ck.close()
    result["losses"] = losses
    result["batches_match"] = all_processes(batches_match)
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str]) -> int:
    process_id, num_processes, port = (int(a) for a in argv[:3])
    workdir = pathlib.Path(argv[3])
    mesh_name = argv[4] if len(argv) > 4 else "fsdp"
    result = run(process_id, num_processes, port, workdir, mesh_name)
    out = workdir / f"result-{process_id}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)  # the test never reads a half-written file
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
