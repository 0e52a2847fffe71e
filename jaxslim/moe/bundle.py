"""Mixture of experts' part in a training run: the router losses, THOR's two-view consistency
objective when ``MoeConfig.consistency_alpha`` asks for it, and the check that the mesh's expert
axis divides the experts."""

from __future__ import annotations

from jaxslim.config import ModelConfig
from jaxslim.method import Method
from jaxslim.moe.layer import check_expert_mesh
from jaxslim.moe.losses import moe_loss_term
from jaxslim.moe.thor import consistency_objective, lm_positions, mlm_positions


class MoeMethod(Method):
    """The training terms of ``model.moe`` (``mlm``: the task is masked LM, else causal LM)."""

    name = "moe"

    def __init__(self, model: ModelConfig, *, mlm: bool):
        if model.moe is None:
            raise ValueError("MoeMethod needs a model with experts (ModelConfig.moe)")
        self.model, self.moe, self.mlm = model, model.moe, mlm
        self.loss_terms = (moe_loss_term(self.moe.aux_loss_coef, self.moe.z_loss_coef),)

    def objective(self, objective):
        if not self.moe.consistency_alpha:
            return objective
        positions = mlm_positions if self.mlm else lm_positions
        fold = self.moe.granularity != "batch"  # per-sequence / per-token draws: one batch of both views
        return consistency_objective(objective, self.moe.consistency_alpha, positions, fold_views=fold)

    def start(self, run):
        check_expert_mesh(self.model, run.mesh)
        return ()
