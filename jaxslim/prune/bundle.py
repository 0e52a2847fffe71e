"""Gradual pruning's part in a training run: the masking optimizer wrapper of a ``PruneConfig``,
the straight-through parameter view, per-layer sparsity at logged steps, and masked weights for
the finished run's samples."""

from __future__ import annotations

from jaxslim.config import PruneConfig
from jaxslim.method import Method
from jaxslim.prune.transform import from_config, masked_params, sparsity_metrics, straight_through_params


class PruneMethod(Method):
    """Prunes the run's weights as ``cfg`` says (an enabled :class:`~jaxslim.config.PruneConfig`)."""

    name = "prune"

    def __init__(self, cfg: PruneConfig):
        if not cfg.enabled:
            raise ValueError("PruneMethod needs an enabled PruneConfig (prune.enabled=True)")
        self.cfg = cfg
        self.params_view = straight_through_params if cfg.ste else None
        self.log_fns = (lambda state: sparsity_metrics(state.opt_state),)

    def optimizer(self, tx, wrap_schedule):
        return from_config(self.cfg, tx)

    def sample_params(self, params, opt_state):
        return masked_params(params, opt_state) if self.cfg.ste else params

    def start(self, run):
        if not self.cfg.ste and self.cfg.end_step > run.cfg.steps:
            return (
                f"warning: the pruning schedule reaches sparsity {self.cfg.sparsity} at step "
                f"{self.cfg.end_step}, after the last step {run.cfg.steps} of this run",
            )
        return ()
