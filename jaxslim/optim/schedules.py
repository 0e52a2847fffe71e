"""Learning-rate schedules as optax schedules (warm-up followed by a decay shape)."""

from __future__ import annotations

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
