"""A small training loop for methods that train a model as one of their steps.

:func:`fit` runs a train step over host batches for a fixed number of steps and returns the final
state and the per-step losses; it stops at the first non-finite loss with the step named. The
full training loop (:func:`jaxslim.training.train`) adds checkpoints, evaluation, logging and
method hooks on top of the same step factories; methods such as prune-then-distill
(:func:`jaxslim.prune.distill`) need only this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
from jax.sharding import Mesh

from jaxslim.engine.state import TrainState
from jaxslim.sharding import Rules, shard_batch

Step = Callable[[TrainState, Mapping], tuple[TrainState, dict]]


def fit(
    step_fn: Step,
    state: TrainState,
    batches: Iterable[Mapping] | Iterator[Mapping],
    *,
    steps: int,
    mesh: Mesh,
    rules: Rules,
    prepare: Callable[[Mapping], Mapping] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[TrainState, list[float]]:
    """Runs ``steps`` steps of ``step_fn`` over ``batches`` (cycled when shorter than ``steps``).

    Args:
        step_fn: from :func:`~jaxslim.engine.step.make_train_step`.
        state: the initial train state, placed in the step's shardings.
        batches: host batches (dicts of arrays); a sequence is cycled, an iterator read once.
        steps: number of steps (>= 0).
        mesh / rules: where each batch is placed (:func:`~jaxslim.sharding.shard_batch`).
        prepare: host-side ``batch -> batch`` applied before placement (e.g. adding targets).
        progress: called with ``(step, loss)`` after every step.

    Returns:
        The final state and the loss of every step.

    Raises:
        FloatingPointError: a step's loss is NaN or Inf; the message names the step.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"fit: steps must be an integer >= 0, got {steps!r}")
    pool = batches if isinstance(batches, (list, tuple)) else None
    it = iter(batches)
    if pool is not None and steps and not pool:
        raise ValueError("fit: no batches to train on")
    losses: list[float] = []
    for i in range(steps):
        batch = pool[i % len(pool)] if pool is not None else next(it)
        if prepare is not None:
            batch = prepare(batch)
        state, metrics = step_fn(state, shard_batch(batch, mesh, rules))
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} at step {i}")
        losses.append(loss)
        if progress is not None:
            progress(i + 1, loss)
    return state, losses
