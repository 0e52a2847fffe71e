"""The Shakespeare demo GPT with Switch-style mixture-of-experts FFNs in every other layer.

Top-1 token-choice routing with capacity factor 1.25 (2.0 in evaluation), fp32 router, balance loss
0.01 and router z-loss 1e-3; each expert is as wide as the dense FFN, so the active parameters and
FLOPs per token equal the dense demo's. ``get_config(arg)``: ``arg`` is a comma-separated list of
``tiny`` (a seconds-long run for tests), ``experts=N`` (default 4) and ``dropless`` (grouped-matmul
dispatch instead of capacity).
"""

from jaxslim.cli.presets import load_preset, preset_options
from jaxslim.config import MoeConfig


def get_config(arg: str = ""):
    opts = preset_options(arg, ("tiny", "experts", "dropless"))
    base = load_preset("shakespeare_gpt:tiny" if "tiny" in opts else "shakespeare_gpt")
    moe = MoeConfig(
        num_experts=int(opts.get("experts") or 4),
        top_k=1,
        router="topk",
        dispatch="dropless" if "dropless" in opts else "capacity",
        every=2,
        offset=1,  # Switch puts experts in the second block of each pair
        train_capacity_factor=1.25,
        eval_capacity_factor=2.0,
        aux_loss_coef=0.01,
        z_loss_coef=1e-3,
    )
    return base.replace(
        model=base.model.replace(moe=moe),
        workdir=base.workdir.replace("shakespeare_gpt", "switch_shakespeare"),
    )
