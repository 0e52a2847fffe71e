"""Sparsity schedules for gradual pruning, as optax-style functions of the (traced) step.

:func:`cubic_sparsity_schedule` is Zhu & Gupta (2017): from ``initial_sparsity`` (``s_i``) at
``begin_step`` (``t0``) to ``final_sparsity`` (``s_f``) after ``num_updates`` (``n``) mask updates
``update_every`` (``dt``) steps apart::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3     for t0 <= t <= t0 + n * dt

with ``s_i`` before ``t0`` and ``s_f`` after. Masks change only on update steps
(:func:`is_update_step`: ``t0, t0 + dt, ..., t0 + n * dt``), where the schedule is evaluated.
Sparsities are fractions in ``[0, 1)``, not percent.

Example:
    >>> s = cubic_sparsity_schedule(0.8, begin_step=100, num_updates=10, update_every=50)
    >>> [round(float(s(t)), 4) for t in (0, 100, 350, 600, 1000)]
    [0.0, 0.0, 0.7, 0.8, 0.8]
    >>> bool(is_update_step(150, begin_step=100, end_step=600, update_every=50))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[jax.Array | int], jax.Array]


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float, np.number)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def cubic_sparsity_schedule(
    final_sparsity: float,
    *,
    initial_sparsity: float = 0.0,
    begin_step: int = 0,
    num_updates: int = 1,
    update_every: int = 1,
    power: float = 3.0,
) -> Schedule:
    """Zhu & Gupta's gradual schedule (``power=3``; other powers give the polynomial family).

    Args:
        final_sparsity: ``s_f`` in ``[0, 1)``.
        initial_sparsity: ``s_i``, ``0 <= s_i <= s_f``.
        begin_step: ``t0``, the first mask update.
        num_updates: ``n >= 1``; the schedule reaches ``s_f`` at ``t0 + n * dt``.
        update_every: ``dt >= 1``, steps between mask updates.
        power: the exponent (3 in the paper), ``> 0``.

    Returns:
        ``schedule(step) -> float32 sparsity``, jit-able.

    Raises:
        ValueError: on any argument out of range (the message names it).
    """
    _check_fraction("final_sparsity", final_sparsity)
    _check_fraction("initial_sparsity", initial_sparsity)
    if initial_sparsity > final_sparsity:
        raise ValueError(
            f"initial_sparsity ({initial_sparsity}) must not exceed final_sparsity ({final_sparsity})"
        )
    _check_int("begin_step", begin_step, 0)
    _check_int("num_updates", num_updates, 1)
    _check_int("update_every", update_every, 1)
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power!r}")
    s_i, s_f = float(initial_sparsity), float(final_sparsity)
    span = float(num_updates * update_every)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        frac = jnp.clip((t - begin_step) / span, 0.0, 1.0)
        return jnp.asarray(s_f + (s_i - s_f) * (1.0 - frac) ** power, jnp.float32)

    return schedule


def constant_sparsity_schedule(sparsity: float) -> Schedule:
    """The same sparsity at every step."""
    _check_fraction("sparsity", sparsity)
    value = float(sparsity)
    return lambda step: jnp.full((), value, jnp.float32)


def one_shot_sparsity_schedule(sparsity: float, step: int = 0) -> Schedule:
    """No sparsity before ``step``, ``sparsity`` from ``step`` on (prune once)."""
    _check_fraction("sparsity", sparsity)
    _check_int("step", step, 0)
    value = float(sparsity)
    return lambda t: jnp.where(jnp.asarray(t) >= step, value, 0.0).astype(jnp.float32)


def is_update_step(
    step: jax.Array | int, *, begin_step: int = 0, end_step: int | None = None, update_every: int = 1
) -> jax.Array:
    """True on mask-update steps: ``begin_step + k * update_every``, up to ``end_step`` (inclusive;
    ``None`` = forever). Jit-able."""
    _check_int("begin_step", begin_step, 0)
    _check_int("update_every", update_every, 1)
    if end_step is not None:
        _check_int("end_step", end_step, begin_step)
    t = jnp.asarray(step, jnp.int32)
    ok = (t >= begin_step) & ((t - begin_step) % update_every == 0)
    if end_step is not None:
        ok = ok & (t <= end_step)
    return ok


def cubic_update_window(*, begin_step: int = 0, num_updates: int = 1, update_every: int = 1) -> dict:
    """The ``begin_step`` / ``end_step`` / ``update_every`` keywords matching a cubic schedule, for
    :func:`is_update_step` or :func:`jaxslim.prune.transform.prune`."""
    _check_int("num_updates", num_updates, 1)
    _check_int("update_every", update_every, 1)
    return {
        "begin_step": begin_step,
        "end_step": begin_step + num_updates * update_every,
        "update_every": update_every,
    }
