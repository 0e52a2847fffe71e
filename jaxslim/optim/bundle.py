"""The optimizer's part in a training run: the base optimizer of an ``OptimConfig``, its step
metrics (trust ratios, AGVM multipliers) and AGVM's half-batch gradients."""

from __future__ import annotations

from collections.abc import Callable

import optax

from jaxslim.config import OptimConfig
from jaxslim.method import Method
from jaxslim.optim.factory import build_optimizer, optimizer_metric_fns


class OptimMethod(Method):
    """Builds the run's optimizer from ``cfg`` over ``total_steps`` (the schedule's length)."""

    name = "optim"

    def __init__(self, cfg: OptimConfig, total_steps: int):
        self.cfg, self.total_steps = cfg, total_steps
        self.metric_fns = optimizer_metric_fns(cfg)
        self.step_options = {"agvm_every": cfg.agvm_every, "agvm_start": cfg.agvm_start}

    def optimizer(self, tx, wrap_schedule: Callable) -> optax.GradientTransformation:
        if tx is not None:
            raise ValueError("OptimMethod builds the base optimizer: it must come first among the methods")
        return build_optimizer(self.cfg, self.total_steps, wrap_schedule=wrap_schedule)
