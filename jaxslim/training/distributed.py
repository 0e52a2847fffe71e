"""Multi-process start-up: ``jax.distributed.initialize()`` only when the environment asks for it."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

# Variables that describe a multi-process job (set by hand, by SLURM, or by the cloud TPU runtime).
_COORDINATOR_VARS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize() -> bool:
    """Initialises ``jax.distributed`` when several processes are described, else does nothing.

    A bare ``jax.distributed.initialize()`` raises on a single host without a coordinator, so it is
    called only when ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``)
    is set, under SLURM with more than one task, or on a TPU VM pod slice. Returns whether it ran.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator = next((env[v] for v in _COORDINATOR_VARS if env.get(v)), None)
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(env.get("JAX_NUM_PROCESSES", "1")),
            process_id=int(env.get("JAX_PROCESS_ID", "0")),
        )
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()
    else:
        return False
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True
