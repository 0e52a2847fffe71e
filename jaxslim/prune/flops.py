"""Multiply-accumulate counts of the prunable units: attention heads and FFN neurons.

Kwon et al.'s cost model, per layer at sequence length ``S`` with model width ``D`` and head size
``d``: a head costs its Q/K/V projections ``3·S·D·d``, its scores and weighted sum ``2·S²·d`` and its
slice of the output projection ``S·d·D``; an FFN neuron costs one column of ``wi`` and one row of ``wo``
(``2·S·D``; ``3·S·D`` with a gated FFN's ``wu``). Embeddings, norms and heads are not counted: they
do not change with the masks.

With grouped-query attention the unit is a *head group*, the query heads sharing one key/value head:
removing it removes ``g`` query heads and one K/V head, so it costs ``(2g + 2)·S·D·d + 2g·S²·d``. Plain
multi-head attention is the case ``g = 1``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxslim.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class CostModel:
    """MACs of one head group and of one FFN neuron at a sequence length, and the model's counts.

    Attributes:
        group_macs: MACs of one head group (``group_size`` query heads and their K/V head).
        neuron_macs: MACs of one FFN neuron.
        group_size: query heads per group (``n_heads // n_kv_heads``).
        n_layers, n_groups, d_ff: units per model (``n_groups`` per layer, ``d_ff`` neurons per layer).
        seq_len: the sequence length the counts are for.
    """

    group_macs: int
    neuron_macs: int
    group_size: int
    n_layers: int
    n_groups: int
    d_ff: int
    seq_len: float

    @property
    def dense_macs(self) -> int:
        """MACs of every head group and neuron of the unpruned model."""
        return self.n_layers * (self.n_groups * self.group_macs + self.d_ff * self.neuron_macs)

    def macs(self, head_mask, neuron_mask) -> int:
        """MACs of a masked model: ``head_mask [layers, heads]`` and ``neuron_mask [layers, d_ff]``
        (nonzero = kept; a head group counts when any of its heads is kept)."""
        groups = np.asarray(head_mask).reshape(self.n_layers, self.n_groups, self.group_size)
        kept_groups = int(np.count_nonzero(np.any(groups != 0, axis=-1)))
        kept_neurons = int(np.count_nonzero(np.asarray(neuron_mask)))
        return kept_groups * self.group_macs + kept_neurons * self.neuron_macs

    def fraction(self, head_mask, neuron_mask) -> float:
        """MACs of the masked model over the dense model's."""
        return self.macs(head_mask, neuron_mask) / self.dense_macs


def cost_model(cfg: ModelConfig, seq_len: float) -> CostModel:
    """The cost model of ``cfg`` at ``seq_len`` tokens (an average length may be fractional, as in
    Kwon et al., who use each task's mean dev-set length)."""
    if not cfg.uniform:
        raise ValueError("cost_model needs a model with uniform widths (prune before slimming)")
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    s, dm, d = seq_len, cfg.d_model, cfg.head_dim_
    g = cfg.n_heads // cfg.kv_heads
    group = (2 * g + 2) * s * dm * d + 2 * g * s * s * d
    neuron = (3 if cfg.gated_mlp else 2) * s * dm
    return CostModel(
        group_macs=int(round(group)),
        neuron_macs=int(round(neuron)),
        group_size=g,
        n_layers=cfg.n_layers,
        n_groups=cfg.kv_heads,
        d_ff=cfg.d_ff,
        seq_len=float(seq_len),
    )
