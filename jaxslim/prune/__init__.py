"""Pruning: post-training structured pruning (Kwon et al.) and physical slimming.

Post-training, no retraining: per-example mask gradients (:func:`mask_gradients`) give a diagonal
Fisher per head and FFN neuron; :func:`search_flops` / :func:`search_latency` pick what to keep under
a budget; :func:`rearrange` improves each layer's choice with its block-diagonal Fisher;
:func:`tune_masks` rescales the kept units by layer-wise least squares; :func:`slim` turns the masks
into a smaller, faster model. :func:`prune_post_training` runs the whole pipeline.

Example:
    >>> from jaxslim.prune import distill_loss, prune_post_training, slim  # doctest: +SKIP
    >>> r = prune_post_training(model, batches, distill_loss(), budget=0.5)  # doctest: +SKIP
    >>> small = slim(model, r.head_mask, r.neuron_mask)                      # doctest: +SKIP
"""

from jaxslim.prune.fisher import (
    MaskGradients,
    classification_loss,
    distill_loss,
    lm_loss,
    mask_gradients,
)
from jaxslim.prune.flops import CostModel, cost_model
from jaxslim.prune.latency import LatencyModel, LinearFit, fit_piecewise, measure_latency
from jaxslim.prune.posttrain import PruneResult, prune_post_training
from jaxslim.prune.rearrange import rearrange
from jaxslim.prune.samples import bucket_batches, load_sentences, tokenize
from jaxslim.prune.search import BudgetError, search_flops, search_latency
from jaxslim.prune.slim import slim
from jaxslim.prune.tune import TuneReport, tune_masks

__all__ = [
    "BudgetError",
    "CostModel",
    "LatencyModel",
    "LinearFit",
    "MaskGradients",
    "PruneResult",
    "TuneReport",
    "bucket_batches",
    "classification_loss",
    "cost_model",
    "distill_loss",
    "fit_piecewise",
    "lm_loss",
    "load_sentences",
    "mask_gradients",
    "measure_latency",
    "prune_post_training",
    "rearrange",
    "search_flops",
    "search_latency",
    "slim",
    "tokenize",
    "tune_masks",
]
