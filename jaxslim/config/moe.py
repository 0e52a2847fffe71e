"""Mixture-of-experts config: which layers hold experts, how tokens are routed, what the router pays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jaxslim.config.validate import Config, at_least, between, positive


@dataclass(frozen=True)
class MoeConfig(Config):
    """Mixture-of-experts FFNs: which layers, how tokens are routed and what the router pays.

    Every ``every``-th block (those with ``layer % every == offset``; THOR and Switch use 2, Mixtral
    1) replaces its FFN by ``num_experts`` expert FFNs stacked on a leading ``exp`` axis.

    Routers (``router``):

    - ``"topk"``: token-choice top-k over an fp32 softmax (``top_k=1`` is Switch). Under
      ``dispatch="capacity"`` each expert takes at most ``capacity_factor * group_size /
      num_experts`` (at least ``min_capacity``) tokens per routing group; top-1 choices take
      precedence over top-2 choices, tokens in order (or by router confidence with
      ``batch_prioritized``); overflowing tokens pass through the residual. ``dispatch="dropless"``
      sorts the tokens by expert and runs grouped matmuls (``jax.lax.ragged_dot``): nothing drops.
    - ``"stochastic"``: THOR. Training draws a uniformly random expert per layer for the whole batch
      (``granularity="batch"``, the reference behaviour), per sequence or per token (uniform load
      by construction, for expert parallelism). Batch and sequence draws run the drawn expert's
      weights directly (never dropping); per-token draws go through ``dispatch``. Evaluation (``model.eval()``) follows ``eval_mode``:
      a random expert per token or per sequence, the fixed expert ``eval_expert``, or the mean of
      all experts. ``consistency_alpha > 0`` trains on two views of each batch with independent
      draws: ``CE(p1) + CE(p2) + alpha * symmetric KL(p1, p2)`` (the IWSLT recipe used 5.0).

    Attributes:
        num_experts / top_k: experts per MoE layer and experts per token (1 for stochastic).
        router / dispatch: see above.
        every / offset: MoE placement (``offset < every``).
        d_ff: hidden width of one expert (default: the model's ``d_ff``).
        train_capacity_factor / eval_capacity_factor / min_capacity / group_size: capacity dispatch;
            ``group_size`` tokens form one routing group (default: one sequence). As in flaxformer,
            the capacity does not grow with ``top_k``: top-2 at factor 1.25 holds at most 62.5% of
            the choices, so top-k routing with capacity wants a factor of about ``top_k``.
        batch_prioritized: fill capacity by descending top-1 router probability (V-MoE's BPR).
        renormalize: top-k gates sum to 1 (Mixtral); else they are the router probabilities.
        jitter: multiplicative router-input noise ``U(1 - jitter, 1 + jitter)`` in training.
        expert_dropout: dropout on the expert hidden units in training.
        aux_loss_coef / z_loss_coef: Switch load-balancing loss and ST-MoE router z-loss weights.
        granularity / eval_mode / eval_expert / consistency_alpha: stochastic experts, see above.
    """

    num_experts: int = positive(8)
    top_k: int = between(1, "num_experts", 1)
    router: Literal["topk", "stochastic"] = "topk"
    dispatch: Literal["capacity", "dropless"] = "capacity"
    every: int = positive(2)
    offset: int = between(0, "every", 0, open_high=True)
    d_ff: int | None = positive(None)
    train_capacity_factor: float = positive(1.25)
    eval_capacity_factor: float = positive(2.0)
    min_capacity: int = positive(4)
    group_size: int | None = positive(None)
    batch_prioritized: bool = False
    renormalize: bool = False
    jitter: float = between(0, 1, 0.0, open_high=True)  # inputs are scaled by U(1 - jitter, 1 + jitter)
    expert_dropout: float = between(0, 1, 0.0, open_high=True)
    aux_loss_coef: float = at_least(0, 0.01)
    z_loss_coef: float = at_least(0, 0.0)
    granularity: Literal["batch", "sequence", "token"] = "batch"
    eval_mode: Literal["random_token", "random_sequence", "fixed", "mean"] = "random_sequence"
    eval_expert: int = between(0, "num_experts", 0, open_high=True)
    consistency_alpha: float = at_least(0, 0.0)

    def _check(self) -> None:
        if self.router == "stochastic" and self.top_k != 1:
            raise ValueError(
                f"MoeConfig.top_k must be 1 for router='stochastic' (one random expert), got {self.top_k}"
            )
        if self.consistency_alpha and self.router != "stochastic":
            raise ValueError(
                f"MoeConfig.consistency_alpha needs router='stochastic' (THOR), got router={self.router!r}"
            )

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` holds experts."""
        return layer % self.every == self.offset
