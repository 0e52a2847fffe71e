"""Mixture of experts: routers, dispatch, the expert layer, router losses and THOR's consistency loss.

The layer stands alone (``MoeLayer(moe_cfg, d_model=..., d_ff=..., rngs=...)``) and is a block
option of :mod:`jaxslim.models`; turning a dense model into an MoE one is a growth operator,
:func:`jaxslim.grow.upcycle`."""

from jaxslim.moe.dispatch import (
    ExpertWeights,
    buffer_positions,
    capacity_moe,
    dropless_moe,
    expert_capacity,
    expert_ffn,
)
from jaxslim.moe.layer import MoeLayer, check_expert_mesh
from jaxslim.moe.losses import (
    load_balance_loss,
    moe_loss_term,
    moe_summary,
    router_z_loss,
    routing_metrics,
    symmetric_kl,
)
from jaxslim.moe.routing import Routing, priority_order, random_routing, top_k_routing
from jaxslim.moe.thor import consistency_objective, lm_positions, mlm_positions

__all__ = [
    "ExpertWeights",
    "MoeLayer",
    "Routing",
    "buffer_positions",
    "check_expert_mesh",
    "consistency_objective",
    "capacity_moe",
    "dropless_moe",
    "expert_capacity",
    "expert_ffn",
    "lm_positions",
    "load_balance_loss",
    "mlm_positions",
    "moe_loss_term",
    "moe_summary",
    "priority_order",
    "random_routing",
    "router_z_loss",
    "routing_metrics",
    "symmetric_kl",
    "top_k_routing",
]
