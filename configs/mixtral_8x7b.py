"""Mixtral-8x7B shapes (8 experts of 14336 per layer, 2 routed per token, grouped-query attention),
sized for a v5p-128 pod (64 chips): two sequences of 4096 tokens per chip, experts split 8 ways
over an ``expert`` mesh axis and FSDP over the rest, bf16 compute, AdamW.

``jaxslim-aot mixtral_8x7b --topology v5p-128`` compiles it; ``get_config("tiny")`` keeps the recipe
at a few MB for tests (``jaxslim-aot mixtral_8x7b:tiny --topology v5p:2x2x1``). ``data.batch_size``
is global: scale it with the chips of another topology.
"""

from jaxslim.config import DataConfig, MeshConfig, ModelConfig, MoeConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    if arg not in ("", "tiny"):
        raise ValueError(f"mixtral_8x7b takes '' or 'tiny', got {arg!r}")
    tiny = arg == "tiny"
    shapes = (
        {"vocab_size": 1024, "d_model": 256, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 512}
        if tiny
        else {
            "vocab_size": 32000,
            "d_model": 4096,
            "n_layers": 32,
            "n_heads": 32,
            "n_kv_heads": 8,
            "d_ff": 14336,
        }
    )
    seq_len = 128 if tiny else 4096
    moe = MoeConfig(
        num_experts=8,
        top_k=2,
        every=1,
        # capacity slots (GShard's einsum dispatch, factor 1.25) shard over the expert axis with
        # all-to-alls; the dropless path sorts every token of the global batch and does not fit a
        # pod (benchmarks/README.md, aot_scale)
        dispatch="capacity",
        renormalize=True,  # the two routed experts' weights sum to 1, as in Mixtral
        aux_loss_coef=0.02,  # Mixtral's router_aux_loss_coef
    )
    return TrainConfig(
        model=ModelConfig.llama(
            **shapes,
            max_len=32768,
            rope_theta=1e6,
            norm_eps=1e-5,
            dtype="bfloat16",
            remat=True,
            remat_policy="save_qkv_proj",
            moe=moe,
        ),
        mesh=MeshConfig(data=1, fsdp=-1, expert=8 if not tiny else 2),
        data=DataConfig(corpus="shakespeare", seq_len=seq_len, batch_size=8 if tiny else 128),
        optim=OptimConfig(lr=1e-4, warmup_steps=2000, weight_decay=0.1, b2=0.95, clip_norm=1.0),
        workdir="runs/mixtral_8x7b" + ("_tiny" if tiny else ""),
        steps=100000,
    )
