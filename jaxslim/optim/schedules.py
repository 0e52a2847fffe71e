"""Learning-rate schedules as optax schedules, composed from optax's own pieces.

``warmup_decay_schedule`` (warm-up then one decay shape), ``wsd_schedule`` (warmup-stable-decay),
``InfiniteSchedule`` (warm-up, cooldown, constant, exponential anneal, with anneals branched from
constant-phase checkpoints) and ``repeated_cosine_schedule``. Each is a pure function of the step, so
a run resumed at any step sees the same rates as one that never stopped.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax


def warmup_decay_schedule(
    peak: float, *, warmup_steps: int, total_steps: int, decay: str = "cosine", final_ratio: float = 0.1
) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak`` then ``decay`` (``cosine``, ``linear`` or ``constant``)
    down to ``final_ratio * peak`` at ``total_steps``.

    Example:
        >>> s = warmup_decay_schedule(1.0, warmup_steps=10, total_steps=110, decay="linear", final_ratio=0.0)
        >>> float(s(5)), float(s(10)), float(s(60))
        (0.5, 1.0, 0.5)
    """
    if decay not in ("cosine", "linear", "constant"):
        raise ValueError(f"decay must be 'cosine', 'linear' or 'constant', got {decay!r}")
    warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    rest = max(total_steps - warmup_steps, 1)
    if decay == "cosine":
        tail = optax.cosine_decay_schedule(peak, rest, alpha=final_ratio)
    elif decay == "linear":
        tail = optax.linear_schedule(peak, peak * final_ratio, rest)
    else:
        tail = optax.constant_schedule(peak)
    if warmup_steps <= 0:
        return tail
    return optax.join_schedules([warmup, tail], [warmup_steps])


# -- warmup-stable-decay, infinite and repeated-cosine schedules -----------------------------------

DECAY_SHAPES = ("linear", "cosine", "sqrt")
COOLDOWN_SHAPES = ("cosine", "linear", "inv_sqrt")


def _check_steps(name: str, value, *, positive: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"{name} must be an integer {'> 0' if positive else '>= 0'}, got {value!r}")


def _check_rate(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
        raise ValueError(f"{name} must be a learning rate >= 0, got {value!r}")


def _decay(shape: str, start: float, end: float, steps: int) -> optax.Schedule:
    """``start -> end`` over ``steps`` with ``p = t / steps``: linear ``1 - p``, cosine
    ``(1 + cos(pi p)) / 2`` or sqrt ``1 - sqrt(p)`` as the fraction of ``start - end`` left."""
    if shape == "linear":
        return optax.linear_schedule(start, end, steps)
    if shape == "cosine":
        return optax.cosine_decay_schedule(start, steps, alpha=end / start if start else 0.0)
    frac = lambda t: jnp.clip(jnp.asarray(t) / steps, 0.0, 1.0)  # noqa: E731
    return lambda t: end + (start - end) * (1.0 - jnp.sqrt(frac(t)))


def wsd_schedule(
    peak_lr: float,
    *,
    total_steps: int,
    warmup_steps: int,
    decay_steps: int,
    final_lr: float = 0.0,
    decay: str = "linear",
) -> optax.Schedule:
    """Warmup-stable-decay (MiniCPM): linear warm-up ``0 -> peak_lr``, ``peak_lr`` until
    ``total_steps - decay_steps``, then ``decay`` (``"linear"``, ``"cosine"`` or ``"sqrt"``, the
    ``1 - sqrt(p)`` shape) down to ``final_lr`` at ``total_steps``, and ``final_lr`` after.

    Example:
        >>> s = wsd_schedule(1.0, total_steps=100, warmup_steps=10, decay_steps=20, final_lr=0.0)
        >>> [float(s(t)) for t in (5, 10, 80, 90, 100)]
        [0.5, 1.0, 1.0, 0.5, 0.0]

    Raises:
        ValueError: negative rates or steps, an unknown ``decay``, or warm-up plus decay longer than
            ``total_steps``.
    """
    _check_rate("peak_lr", peak_lr)
    _check_rate("final_lr", final_lr)
    _check_steps("total_steps", total_steps, positive=True)
    _check_steps("warmup_steps", warmup_steps)
    _check_steps("decay_steps", decay_steps)
    if decay not in DECAY_SHAPES:
        raise ValueError(f"decay must be one of {DECAY_SHAPES}, got {decay!r}")
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} + decay_steps={decay_steps} exceed total_steps={total_steps}"
        )
    stable_end = total_steps - decay_steps
    pieces = [optax.constant_schedule(peak_lr)]
    bounds = []
    if warmup_steps:
        pieces.insert(0, optax.linear_schedule(0.0, peak_lr, warmup_steps))
        bounds.append(warmup_steps)
    if decay_steps:
        pieces.append(_decay(decay, peak_lr, final_lr, decay_steps))
        bounds.append(stable_end)
    return optax.join_schedules(pieces, bounds) if bounds else pieces[0]


@dataclasses.dataclass(frozen=True)
class InfiniteSchedule:
    """The infinite learning-rate schedule (Ibrahim et al. 2024) as an optax schedule.

    Phases: linear warm-up ``0 -> peak_lr`` over ``warmup_steps``; cooldown ``peak_lr ->
    constant_lr`` over ``cooldown_steps`` (``"cosine"``, ``"linear"`` or ``"inv_sqrt"`` with
    timescale ``alpha``); ``constant_lr`` for as long as training goes on; and, from
    ``anneal_start`` (if set), an exponential anneal ``constant_lr -> final_lr`` over
    ``anneal_steps``, then ``final_lr``. :meth:`branch_anneal` gives the schedule of an anneal
    branched from any constant-phase checkpoint.

    Example:
        >>> s = InfiniteSchedule(1.0, 0.5, warmup_steps=10, cooldown_steps=10, cooldown="linear")
        >>> [float(s(t)) for t in (5, 15, 20, 1000)]
        [0.5, 0.75, 0.5, 0.5]
        >>> a = s.branch_anneal(100, anneal_steps=10, final_lr=0.005)
        >>> round(float(a(105)), 6), round(float(a(110)), 6), float(a(99))
        (0.05, 0.005, 0.5)
    """

    peak_lr: float
    constant_lr: float
    warmup_steps: int = 0
    cooldown_steps: int = 0
    cooldown: str = "cosine"
    alpha: float = 10.0
    anneal_start: int | None = None
    anneal_steps: int = 0
    final_lr: float = 0.0

    def __post_init__(self):
        _check_rate("peak_lr", self.peak_lr)
        _check_rate("constant_lr", self.constant_lr)
        _check_rate("final_lr", self.final_lr)
        _check_steps("warmup_steps", self.warmup_steps)
        _check_steps("cooldown_steps", self.cooldown_steps)
        _check_steps("anneal_steps", self.anneal_steps)
        if self.cooldown not in COOLDOWN_SHAPES:
            raise ValueError(f"cooldown must be one of {COOLDOWN_SHAPES}, got {self.cooldown!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"alpha must be a number > 0, got {self.alpha!r}")
        if self.anneal_start is not None:
            _check_steps("anneal_start", self.anneal_start)
            if self.anneal_start < self.constant_start:
                raise ValueError(
                    f"anneal_start={self.anneal_start} must be in the constant phase, which starts at step "
                    f"{self.constant_start} (warmup_steps + cooldown_steps)"
                )
            if self.anneal_steps == 0:
                raise ValueError("anneal_steps must be > 0 when anneal_start is set")
            if self.final_lr <= 0 or self.constant_lr <= 0:
                raise ValueError(
                    f"an exponential anneal needs constant_lr > 0 and final_lr > 0, got "
                    f"constant_lr={self.constant_lr!r}, final_lr={self.final_lr!r}"
                )

    @property
    def constant_start(self) -> int:
        """The first step of the constant phase."""
        return self.warmup_steps + self.cooldown_steps

    def _cooldown(self) -> optax.Schedule:
        hi, lo, n = self.peak_lr, self.constant_lr, self.cooldown_steps
        if self.cooldown != "inv_sqrt":
            return _decay(self.cooldown, hi, lo, n)
        a = self.alpha
        h = lambda p: 1.0 / jnp.sqrt(1.0 + a * p) - 1.0  # noqa: E731
        return lambda t: hi + (lo - hi) * h(jnp.clip(jnp.asarray(t) / n, 0.0, 1.0)) / h(1.0)

    def _anneal(self) -> optax.Schedule:
        rate = self.final_lr / self.constant_lr
        return optax.exponential_decay(self.constant_lr, self.anneal_steps, rate, end_value=self.final_lr)

    def __call__(self, count):
        pieces, bounds = [], []
        if self.warmup_steps:
            pieces.append(optax.linear_schedule(0.0, self.peak_lr, self.warmup_steps))
            bounds.append(self.warmup_steps)
        if self.cooldown_steps:
            pieces.append(self._cooldown())
            bounds.append(self.constant_start)
        pieces.append(optax.constant_schedule(self.constant_lr))
        if self.anneal_start is not None:
            pieces.append(self._anneal())
            bounds.append(self.anneal_start)
        return optax.join_schedules(pieces, bounds)(count) if bounds else pieces[0](count)

    def branch_anneal(self, at_step: int, *, anneal_steps: int, final_lr: float) -> InfiniteSchedule:
        """The same schedule with an exponential anneal starting at ``at_step``, the step of a
        constant-phase checkpoint: resume that checkpoint with this schedule to get a deployable
        model, while the main run goes on at ``constant_lr``.

        Raises:
            ValueError: ``at_step`` is before the constant phase, or a bad ``anneal_steps`` /
                ``final_lr``.
        """
        return dataclasses.replace(self, anneal_start=at_step, anneal_steps=anneal_steps, final_lr=final_lr)


def infinite_schedule(
    peak_lr: float,
    constant_lr: float,
    *,
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
    cooldown: str = "cosine",
    alpha: float = 10.0,
    anneal_start: int | None = None,
    anneal_steps: int = 0,
    final_lr: float = 0.0,
) -> InfiniteSchedule:
    """An :class:`InfiniteSchedule` (warm-up, cooldown, constant, optional exponential anneal)."""
    return InfiniteSchedule(
        peak_lr,
        constant_lr,
        warmup_steps,
        cooldown_steps,
        cooldown,
        alpha,
        anneal_start,
        anneal_steps,
        final_lr,
    )


def branch_anneal(schedule: InfiniteSchedule, at_step: int, *, anneal_steps: int, final_lr: float):
    """:meth:`InfiniteSchedule.branch_anneal` as a function."""
    return schedule.branch_anneal(at_step, anneal_steps=anneal_steps, final_lr=final_lr)


def repeated_cosine_schedule(
    peak_lr: float, *, cycle_steps: int, warmup_steps: int = 0, final_lr: float = 0.0
) -> optax.Schedule:
    """Cosine cycles repeated forever: each ``cycle_steps`` long, re-warming linearly from 0 over
    ``warmup_steps`` and decaying with a cosine to ``final_lr`` (optax's
    ``warmup_cosine_decay_schedule`` evaluated at ``t mod cycle_steps``).

    Example:
        >>> s = repeated_cosine_schedule(1.0, cycle_steps=10, warmup_steps=0)
        >>> [round(float(s(t)), 6) for t in (0, 5, 10, 15)]
        [1.0, 0.5, 1.0, 0.5]
    """
    _check_rate("peak_lr", peak_lr)
    _check_rate("final_lr", final_lr)
    _check_steps("cycle_steps", cycle_steps, positive=True)
    _check_steps("warmup_steps", warmup_steps)
    if warmup_steps >= cycle_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be < cycle_steps={cycle_steps}")
    if warmup_steps:
        cycle = optax.warmup_cosine_decay_schedule(
            0.0, peak_lr, warmup_steps, cycle_steps, end_value=final_lr
        )
    else:
        cycle = _decay("cosine", peak_lr, final_lr, cycle_steps)
    return lambda t: cycle(jnp.mod(jnp.asarray(t), cycle_steps))
