"""The Shakespeare demo GPT with THOR stochastic experts in every other layer.

Each expert layer draws one random expert for the whole batch per forward pass (THOR's reference
behaviour); training runs two views of each batch with independent draws and adds
``alpha * symmetric KL`` between their predictions (alpha 5.0, as in THOR's IWSLT recipe).
Evaluation picks a random expert per sequence. Experts are as wide as the dense FFN, so the active
parameters per token equal the dense demo's. ``get_config(arg)``: ``arg`` is a comma-separated list
of ``tiny``, ``experts=N`` (default 2), ``alpha=A`` (0 trains one view, no consistency loss) and
``per=batch|sequence|token`` (the training draw's granularity).
"""

from jaxslim.cli.presets import load_preset, preset_options
from jaxslim.config import MoeConfig


def get_config(arg: str = ""):
    opts = preset_options(arg, ("tiny", "experts", "alpha", "per"))
    base = load_preset("shakespeare_gpt:tiny" if "tiny" in opts else "shakespeare_gpt")
    moe = MoeConfig(
        num_experts=int(opts.get("experts") or 2),
        top_k=1,
        router="stochastic",
        dispatch="dropless",
        every=2,
        offset=0,  # THOR: layers 0, 2, 4, ...
        granularity=opts.get("per") or "batch",
        eval_mode="random_sequence",
        consistency_alpha=float(opts.get("alpha") or 5.0),
        aux_loss_coef=0.0,
    )
    return base.replace(
        model=base.model.replace(moe=moe),
        workdir=base.workdir.replace("shakespeare_gpt", "thor_shakespeare"),
    )
