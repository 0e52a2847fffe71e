"""Kwon et al.'s retraining-free pruning in one call: Fisher -> search -> rearrange -> tune.

Example:
    >>> from flax import nnx
    >>> from jaxslim.config import ModelConfig
    >>> from jaxslim.models import Transformer
    >>> from jaxslim.prune import bucket_batches, distill_loss, prune_post_training, slim
    >>> cfg = ModelConfig.bert(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
    >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
    >>> sentences = [[(7 * i + j) % 63 + 1 for j in range(8 + i % 8)] for i in range(16)]  # token ids
    >>> r = prune_post_training(model, bucket_batches(sentences, batch_size=8), distill_loss(), budget=0.5)
    >>> r.flops <= 0.5
    True
    >>> small = slim(model, r.head_mask, r.neuron_mask)
    >>> small.cfg.layer_heads, small.cfg.layer_ffn
    ((3, 2), (21, 24))
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from jaxslim.prune.fisher import MaskGradients, MaskLoss, mask_gradients
from jaxslim.prune.flops import cost_model
from jaxslim.prune.latency import LatencyModel
from jaxslim.prune.rearrange import rearrange as rearrange_masks
from jaxslim.prune.samples import mean_length
from jaxslim.prune.search import check_budget, search_flops, search_latency
from jaxslim.prune.tune import TuneReport, tune_masks


@dataclasses.dataclass
class PruneResult:
    """Masks and bookkeeping of one post-training pruning run.

    Attributes:
        head_mask, neuron_mask: final masks (real-valued after tuning, zero where pruned).
        searched: the binary masks straight from the search (before rearrangement).
        flops: MACs of the kept heads/neurons over the dense model's, at ``seq_len``.
        latency: predicted latency over dense (latency metric only).
        seconds: wall time of each phase.
        tune_report: per sub-layer tuning outcome (None without tuning).
    """

    head_mask: np.ndarray
    neuron_mask: np.ndarray
    searched: tuple[np.ndarray, np.ndarray]
    budget: float
    metric: str
    seq_len: float
    flops: float
    latency: float | None
    seconds: dict[str, float]
    tune_report: TuneReport | None
    grads: MaskGradients | None = None


def prune_post_training(
    model,
    batches: Sequence[dict],
    loss: MaskLoss,
    *,
    budget: float,
    metric: Literal["flops", "latency"] = "flops",
    seq_len: float | None = None,
    latency_model: LatencyModel | None = None,
    rearrange: bool = True,
    tune: bool = True,
    teacher: Literal["assistant", "dense"] = "assistant",
    round_to: int = 1,
    grads: MaskGradients | None = None,
    progress: Callable[[str], None] | None = None,
) -> PruneResult:
    """Prunes attention heads and FFN neurons of ``model`` to ``budget`` without retraining.

    Args:
        model: a dense jaxslim model.
        batches: the sample set (see :mod:`jaxslim.prune.samples`); Kwon et al. use 2048 examples.
        loss: :func:`~jaxslim.prune.fisher.lm_loss`, :func:`~jaxslim.prune.fisher.classification_loss`
            or the label-free :func:`~jaxslim.prune.fisher.distill_loss`.
        budget: kept fraction of FLOPs (or of latency) in (0, 1].
        metric: ``"flops"`` or ``"latency"`` (needs ``latency_model`` from
            :func:`~jaxslim.prune.latency.measure_latency`).
        seq_len: the cost model's sequence length (default: the samples' mean length, as Kwon et al.
            use each task's mean length).
        rearrange: per-layer block-diagonal Fisher rearrangement.
        tune: least-squares mask tuning.
        teacher: what tuning reconstructs: the model masked at the ``√budget`` "teacher assistant"
            budget (the reference code) or the dense model.
        round_to: FFN widths a multiple of this (FLOPs metric), charged to the budget.
        grads: reuse mask gradients from an earlier run (several budgets, one Fisher pass).
    """
    budget = check_budget(budget, f"{metric} budget")
    if metric not in ("flops", "latency"):
        raise ValueError(f"metric must be 'flops' or 'latency', got {metric!r}")
    if metric == "latency" and latency_model is None:
        raise ValueError("metric='latency' needs latency_model= (jaxslim.prune.measure_latency)")
    if teacher not in ("assistant", "dense"):
        raise ValueError(f"teacher must be 'assistant' or 'dense', got {teacher!r}")
    say = progress or (lambda _: None)
    seconds: dict[str, float] = {}
    batches = list(batches)
    seq_len = seq_len or mean_length(batches)
    cost = cost_model(model.cfg, seq_len)

    t0 = time.perf_counter()
    if grads is None:
        say("mask gradients")
        grads = mask_gradients(model, batches, loss)
    seconds["fisher"] = time.perf_counter() - t0

    def search(b):
        if metric == "flops":
            return search_flops(grads.head_fisher, grads.neuron_fisher, cost, b, round_to=round_to)
        return search_latency(grads.head_fisher, grads.neuron_fisher, latency_model, b)

    t0 = time.perf_counter()
    say("search")
    hm, nm = search(budget)
    searched = (hm.copy(), nm.copy())
    seconds["search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if rearrange:
        say("rearrange")
        hm, nm = rearrange_masks(grads.head, grads.neuron, hm, nm, group_size=cost.group_size)
    seconds["rearrange"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = None
    head_mask, neuron_mask = hm.astype(np.float32), nm.astype(np.float32)
    if tune:
        th = tn = None
        if teacher == "assistant" and budget < 1.0:
            th, tn = search(math.sqrt(budget))
            if rearrange:
                th, tn = rearrange_masks(grads.head, grads.neuron, th, tn, group_size=cost.group_size)
        say("tune")
        head_mask, neuron_mask, report = tune_masks(
            model, batches, hm, nm, teacher_head_mask=th, teacher_neuron_mask=tn
        )
    seconds["tune"] = time.perf_counter() - t0
    latency = None if latency_model is None else latency_model.predict(hm, nm) / latency_model.dense()
    return PruneResult(
        head_mask=head_mask,
        neuron_mask=neuron_mask,
        searched=searched,
        budget=budget,
        metric=metric,
        seq_len=float(seq_len),
        flops=cost.fraction(hm, nm),
        latency=latency,
        seconds=seconds,
        tune_report=report,
        grads=grads,
    )
