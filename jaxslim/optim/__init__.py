"""Optimizers and learning-rate schedules built from optax pieces."""

from jaxslim.optim.factory import build_optimizer, decay_mask
from jaxslim.optim.schedules import warmup_decay_schedule

__all__ = ["build_optimizer", "decay_mask", "warmup_decay_schedule"]
