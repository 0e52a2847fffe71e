"""Model FLOPs of a training step, counted analytically.

XLA's ``cost_analysis()`` counts a ``while`` body (a scanned stack) once, whatever its trip count,
so the FLOPs are counted from the config instead, the way MFU is usually defined: matmul FLOPs of
the forward pass times 3 (forward, and backward for activations and weights), causal attention
counted over the half of the score matrix it uses, recomputation (remat) not counted.
:func:`remat_flops` counts what a remat policy recomputes on top: the forward matmuls of each block
whose outputs the policy does not keep.
"""

from __future__ import annotations

from jaxslim.config import ModelConfig


def matmul_params_per_token(cfg: ModelConfig) -> int:
    """Weights each token multiplies by in one forward pass (experts: the ``top_k`` it is routed to)."""
    parts = _block_parts(cfg, seq_len=0)  # 2 FLOPs per weight; no attention scores at length 0
    head = cfg.d_model * cfg.vocab_size if cfg.head == "lm" else 0
    return sum(parts.values()) // 2 + head


def _block_parts(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token of one block's parts, summed over the layers: the q/k/v projections,
    the attention scores and values, the output projection, the MLP's input projections (experts:
    the ``top_k`` routed to, and the router) and its output projection."""
    d, hd = cfg.d_model, cfg.head_dim_
    width = 3 if cfg.gated_mlp else 2
    parts = dict.fromkeys(("qkv", "attention", "out", "mlp_in", "mlp_out"), 0)
    for i in range(cfg.n_layers):
        parts["qkv"] += 2 * d * (cfg.n_heads + 2 * cfg.kv_heads) * hd
        parts["attention"] += 4 * seq_len * cfg.n_heads * hd // (2 if cfg.causal else 1)
        parts["out"] += 2 * cfg.n_heads * hd * d
        moe = cfg.moe
        if moe is not None and cfg.is_moe_layer(i):
            ffn = moe.top_k * cfg.expert_ffn + (cfg.shared_expert_ffn or 0)
            parts["mlp_in"] += 2 * d * ffn * (width - 1) + 2 * d * moe.num_experts
        else:
            ffn = cfg.d_ff
            parts["mlp_in"] += 2 * d * ffn * (width - 1)
        parts["mlp_out"] += 2 * ffn * d
    return parts


# the block parts whose outputs each remat policy keeps (the rest is recomputed in the backward pass)
_KEPT = {
    "full": (),
    "none": ("qkv", "attention", "out", "mlp_in", "mlp_out"),
    "save_dots": ("qkv", "attention", "out", "mlp_in", "mlp_out"),
    "dots_with_no_batch_dims": ("qkv", "out", "mlp_in", "mlp_out"),
    "save_qkv_proj": ("qkv",),
    "save_out_proj": ("out",),
    "save_qkv_out_proj": ("qkv", "out"),
    "save_dot_except_mlpwi": ("qkv", "out", "mlp_out"),
    "offload": ("qkv", "out"),
    "qkv_proj_offloaded": ("qkv",),
}


def remat_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """FLOPs a training step spends recomputing what ``cfg.remat_policy`` does not keep (0 without
    remat): the forward matmuls of every block part whose output is not saved, an upper estimate
    (the compiler may skip a recomputation the backward pass does not need)."""
    if not cfg.remat:
        return 0.0
    kept = _KEPT[cfg.remat_policy]
    parts = _block_parts(cfg, seq_len)
    return float(batch * seq_len * sum(v for k, v in parts.items() if k not in kept))


def train_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """FLOPs of one training step on ``batch`` sequences of ``seq_len`` tokens (all chips together)."""
    # every block's matmuls, attention scores and values included (causal: half the score matrix)
    forward = sum(_block_parts(cfg, seq_len).values())
    if cfg.head == "lm":
        forward += 2 * cfg.d_model * cfg.vocab_size
    return 3.0 * batch * seq_len * forward
