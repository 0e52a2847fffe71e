"""Pruning config: gradual pruning during training (kind, schedule, criterion, straight-through)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jaxslim.config.validate import Config, at_least, between, positive


@dataclass(frozen=True)
class PruneConfig(Config):
    """Gradual pruning during training (:func:`jaxslim.prune.prune` around the optimizer).

    Masks follow Zhu & Gupta's cubic schedule from ``initial_sparsity`` at ``begin_step`` to
    ``sparsity`` at ``begin_step + num_updates * update_every``, updated every ``update_every``
    steps; pruned weights stay exactly zero. Per-layer sparsity is logged at every logged step.

    Attributes:
        kind: ``"none"`` (no pruning), ``"unstructured"``, ``"nm"`` (N:M along each kernel's
            contraction axis), ``"heads"``, ``"neurons"`` or ``"channels"``.
        sparsity: final fraction pruned, in ``(0, 1)`` (``kind="nm"`` prunes ``1 - n/m``).
        initial_sparsity: ``s_i`` of the cubic schedule.
        criterion: ``"magnitude"``, ``"random"`` or ``"saliency"`` (``|w * g|``).
        allocation: ``"layer"`` (every layer the same sparsity) or ``"global"`` (unstructured).
        n, m: the N:M pattern.
        begin_step / num_updates / update_every: ``t0``, ``n`` and ``dt`` of the schedule.
        ste: straight-through: params stay dense, the forward pass sees the masked weights and the
            masks are recomputed every ``update_every`` steps for the whole run (N:M training).
        sr_ste_decay: SR-STE's pull of pruned weights towards zero (needs ``ste``).
    """

    kind: Literal["none", "unstructured", "nm", "heads", "neurons", "channels"] = "none"
    sparsity: float = between(0, 1, 0.0, open_high=True)
    initial_sparsity: float = between(0, 1, 0.0, open_high=True)
    criterion: Literal["magnitude", "random", "saliency"] = "magnitude"
    allocation: Literal["layer", "global"] = "layer"
    n: int = 2
    m: int = 4
    begin_step: int = at_least(0, 0)
    num_updates: int = positive(1)
    update_every: int = positive(1)
    ste: bool = False
    sr_ste_decay: float = at_least(0, 0.0)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def end_step(self) -> int:
        """The step at which the schedule reaches its final sparsity."""
        return self.begin_step + self.num_updates * self.update_every

    def _check(self) -> None:
        o = "PruneConfig"
        if self.kind not in ("none", "nm") and self.sparsity <= 0:
            raise ValueError(f"{o}.sparsity must be in (0, 1) for kind={self.kind!r}, got {self.sparsity!r}")
        if self.initial_sparsity > self.sparsity and self.kind != "nm":
            raise ValueError(
                f"{o}.initial_sparsity={self.initial_sparsity} must not exceed sparsity={self.sparsity}"
            )
        if self.kind == "nm" and not 0 < self.n < self.m:
            raise ValueError(f"{o}: N:M needs integers 0 < n < m, got n={self.n!r}, m={self.m!r}")
        if self.allocation == "global" and self.kind != "unstructured":
            raise ValueError(f'{o}.allocation="global" is for kind="unstructured", got kind={self.kind!r}')
        if self.sr_ste_decay and not self.ste:
            raise ValueError(f"{o}.sr_ste_decay needs ste=True (SR-STE acts on dense weights)")
        if self.ste and self.criterion == "saliency":
            raise ValueError(f'{o}.ste needs criterion "magnitude" or "random" (masks precede the gradient)')
