"""Pruning: masks as pytrees, gradual pruning as an optax transform, post-training structured
pruning (Kwon et al.) and physical slimming.

Masks (:mod:`jaxslim.prune.masks`) have the structure and sharding of the parameters they mask:
unstructured (magnitude, random, saliency; per-layer or global), N:M on the contraction axis, and
structured (heads, neurons, channels). :func:`prune` / :func:`gradual_pruning` wrap any optax
optimizer and keep the masks in its state; pruned weights stay exactly zero.

Post-training, no retraining: per-example mask gradients (:func:`mask_gradients`) give a diagonal
Fisher per head and FFN neuron; :func:`search_flops` / :func:`search_latency` pick what to keep under
a budget; :func:`rearrange` improves each layer's choice with its block-diagonal Fisher;
:func:`tune_masks` rescales the kept units by layer-wise least squares; :func:`slim` turns the masks
into a smaller, faster model. :func:`prune_post_training` runs the whole pipeline.
:func:`prune_distill` goes further (SlimSAM): residual channels, then heads and neurons, each
followed by distillation from the dense teacher.

A worked example of the whole post-training pipeline is in :mod:`jaxslim.prune.posttrain`.
"""

from jaxslim.prune.distill import (
    PruneDistillResult,
    channel_scores,
    distill,
    prune_distill,
    slim_channels,
)
from jaxslim.prune.export import export_hf, fold_masks
from jaxslim.prune.fisher import (
    MaskGradients,
    classification_loss,
    distill_loss,
    lm_loss,
    mask_gradients,
)
from jaxslim.prune.flops import CostModel, cost_model
from jaxslim.prune.latency import LatencyModel, LinearFit, fit_piecewise, measure_latency, model_latency
from jaxslim.prune.masks import (
    apply_masks,
    compute_masks,
    compute_scores,
    mask_counts,
    mask_template,
    nm_masks,
    sparsity_summary,
    structured_masks,
    summary_table,
    unstructured_masks,
)
from jaxslim.prune.posttrain import PruneResult, prune_post_training
from jaxslim.prune.rearrange import rearrange
from jaxslim.prune.samples import bucket_batches, embed_sentences, load_sentences, tokenize
from jaxslim.prune.schedule import (
    constant_sparsity_schedule,
    cubic_sparsity_schedule,
    one_shot_sparsity_schedule,
)
from jaxslim.prune.search import BudgetError, search_flops, search_latency
from jaxslim.prune.slim import slim
from jaxslim.prune.transform import (
    PruneState,
    find_prune_state,
    from_config,
    get_masks,
    gradual_pruning,
    keep_masks,
    masked_params,
    params_sparsity,
    prune,
    sparsity_metrics,
    straight_through_params,
)
from jaxslim.prune.tune import TuneReport, tune_masks

__all__ = [
    "BudgetError",
    "CostModel",
    "LatencyModel",
    "LinearFit",
    "MaskGradients",
    "PruneDistillResult",
    "PruneResult",
    "PruneState",
    "TuneReport",
    "apply_masks",
    "bucket_batches",
    "embed_sentences",
    "channel_scores",
    "classification_loss",
    "compute_masks",
    "compute_scores",
    "constant_sparsity_schedule",
    "cost_model",
    "cubic_sparsity_schedule",
    "distill",
    "distill_loss",
    "export_hf",
    "find_prune_state",
    "fit_piecewise",
    "fold_masks",
    "from_config",
    "get_masks",
    "gradual_pruning",
    "keep_masks",
    "lm_loss",
    "load_sentences",
    "mask_counts",
    "mask_gradients",
    "mask_template",
    "masked_params",
    "measure_latency",
    "model_latency",
    "nm_masks",
    "one_shot_sparsity_schedule",
    "params_sparsity",
    "prune",
    "prune_distill",
    "prune_post_training",
    "rearrange",
    "search_flops",
    "search_latency",
    "slim",
    "slim_channels",
    "sparsity_metrics",
    "sparsity_summary",
    "straight_through_params",
    "structured_masks",
    "summary_table",
    "tokenize",
    "tune_masks",
    "unstructured_masks",
]
