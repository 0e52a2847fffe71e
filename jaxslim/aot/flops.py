"""Model FLOPs of a training step, counted analytically.

XLA's ``cost_analysis()`` counts a ``while`` body (a scanned stack) once, whatever its trip count,
so the FLOPs are counted from the config instead, the way MFU is usually defined: matmul FLOPs of
the forward pass times 3 (forward, and backward for activations and weights), causal attention
counted over the half of the score matrix it uses, recomputation (remat) not counted.
"""

from __future__ import annotations

from jaxslim.config import ModelConfig


def matmul_params_per_token(cfg: ModelConfig) -> int:
    """Weights each token multiplies by in one forward pass (experts: the ``top_k`` it is routed to)."""
    d, hd = cfg.d_model, cfg.head_dim_
    attn = d * (cfg.n_heads + 2 * cfg.kv_heads) * hd + cfg.n_heads * hd * d
    dense = d * cfg.d_ff * (3 if cfg.gated_mlp else 2)
    total = 0
    for i in range(cfg.n_layers):
        total += attn
        moe = cfg.moe
        if moe is not None and cfg.is_moe_layer(i):
            expert = d * cfg.expert_ffn * (3 if cfg.gated_mlp else 2)
            total += moe.top_k * expert + d * moe.num_experts
            if cfg.shared_expert_ffn:
                total += d * cfg.shared_expert_ffn * (3 if cfg.gated_mlp else 2)
        else:
            total += dense
    if cfg.head == "lm":
        total += d * cfg.vocab_size
    return total


def train_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """FLOPs of one training step on ``batch`` sequences of ``seq_len`` tokens (all chips together)."""
    tokens = batch * seq_len
    dense = 2 * matmul_params_per_token(cfg) * tokens
    # q k^T and p v: 2 matmuls of 2 * T * T * heads * head_dim per sequence and layer; causal: half
    attention = 4.0 * batch * seq_len * seq_len * cfg.n_heads * cfg.head_dim_ * cfg.n_layers
    if cfg.causal:
        attention /= 2
    return 3.0 * (dense + attention)
