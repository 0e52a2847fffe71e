"""Optimizers and learning-rate schedules built from optax pieces.

LAMB / LARS with trust ratios per layer of a scanned stack and per expert (:mod:`.trust`,
:mod:`.lamb`), reference presets, AGVM (:mod:`.agvm`), annealed gradient noise (:mod:`.noise`),
warmup-stable-decay, infinite and repeated-cosine schedules (:mod:`.schedules`), and the builder
that turns an :class:`~jaxslim.config.OptimConfig` into an optax transformation (:mod:`.factory`).
"""

from jaxslim.optim.agvm import AgvmState, agvm, agvm_metric_fn, agvm_metrics, find_agvm_state, module_labels
from jaxslim.optim.factory import build_optimizer, build_schedule, optimizer_metric_fns
from jaxslim.optim.lamb import PRESETS, adam_step_size_correction, lamb, lamb_preset, lars, scale_by_adam
from jaxslim.optim.masks import checked_mask, decay_mask, exclude_mask, param_names
from jaxslim.optim.noise import add_gradient_noise, noise_variance
from jaxslim.optim.rewarm import grown_schedule_step, rewarm_schedule
from jaxslim.optim.schedules import (
    InfiniteSchedule,
    branch_anneal,
    infinite_schedule,
    repeated_cosine_schedule,
    warmup_decay_schedule,
    wsd_schedule,
)
from jaxslim.optim.trust import (
    LayerTrustRatioState,
    find_trust_ratio_states,
    group_norm,
    scale_by_layer_trust_ratio,
    trust_ratio_metric_fn,
    trust_ratio_metrics,
)

__all__ = [
    "PRESETS",
    "AgvmState",
    "InfiniteSchedule",
    "LayerTrustRatioState",
    "adam_step_size_correction",
    "add_gradient_noise",
    "agvm",
    "agvm_metric_fn",
    "agvm_metrics",
    "branch_anneal",
    "build_optimizer",
    "build_schedule",
    "checked_mask",
    "decay_mask",
    "exclude_mask",
    "find_agvm_state",
    "find_trust_ratio_states",
    "group_norm",
    "grown_schedule_step",
    "infinite_schedule",
    "lamb",
    "lamb_preset",
    "lars",
    "module_labels",
    "noise_variance",
    "optimizer_metric_fns",
    "param_names",
    "repeated_cosine_schedule",
    "rewarm_schedule",
    "scale_by_adam",
    "scale_by_layer_trust_ratio",
    "trust_ratio_metric_fn",
    "trust_ratio_metrics",
    "warmup_decay_schedule",
    "wsd_schedule",
]
