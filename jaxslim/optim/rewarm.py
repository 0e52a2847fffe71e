"""The learning-rate schedule across a growth: jump to the larger model's step, then re-warm.

Staged training (Shen et al. 2022) continues a grown model at ``restart_step``: the step at which
the larger model trained from scratch would have reached the loss the small model had when it was
grown. Its optimizer schedule is evaluated from that step on, and the learning rate is re-warmed
linearly over ``rewarm_steps`` from 0 to the base schedule's value at ``restart_step +
rewarm_steps``::

    lr(t) = base(R + W) * (t - R) / W    for R <= t < R + W
    lr(t) = base(t)                      otherwise

The reference sets the grown run's step to ``R + 1``, so its first update already has a non-zero
rate; :func:`grown_schedule_step` gives that step.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def _check_steps(restart_step, rewarm_steps) -> None:
    for name, v in (("restart_step", restart_step), ("rewarm_steps", rewarm_steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")


def rewarm_schedule(base: optax.Schedule, restart_step: int, rewarm_steps: int) -> optax.Schedule:
    """``base`` with a linear re-warm-up of ``rewarm_steps`` from ``restart_step`` (formula above).

    Example:
        >>> s = rewarm_schedule(lambda t: 1.0 - t / 100, restart_step=40, rewarm_steps=10)
        >>> [round(float(s(t)), 4) for t in (39, 40, 45, 50, 60)]
        [0.61, 0.0, 0.25, 0.5, 0.4]
    """
    _check_steps(restart_step, rewarm_steps)
    if rewarm_steps == 0:
        return base
    peak = base(restart_step + rewarm_steps)

    def schedule(count):
        ramp = peak * (count - restart_step) / rewarm_steps
        inside = (count >= restart_step) & (count < restart_step + rewarm_steps)
        return jnp.where(inside, ramp, base(count))

    return schedule


def grown_schedule_step(restart_step: int) -> int:
    """The schedule step of the grown model's first update (the reference's ``R + 1``)."""
    _check_steps(restart_step, 0)
    return restart_step + 1
