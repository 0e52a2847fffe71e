"""Llama-3-70B shapes (128K vocabulary, 80 layers, grouped-query attention), sized after MaxText's
published Llama-2-70B configurations of the same pods (its benchmark entries ``llama2_70b_v5p_128``
and ``llama2_70b_v5e_256``; MaxText publishes no v5p or v5e Llama-3-70B training configuration):

- ``get_config("")``: a v5p-128 pod (64 chips), two sequences of 4096 tokens per chip, remat policy
  ``save_dot_except_mlpwi`` (MaxText's for that run);
- ``get_config("v5e")``: a v5e-256 pod, two sequences of 2048 tokens per chip, remat policy
  ``offload`` (each block's input and its projections in host memory; MaxText offloads the q/k/v
  projections only, which does not fit here: benchmarks/README.md).

Both shard the weights over half the chips with two data-parallel groups (see ``llama2_7b``), bf16
compute, AdamW. ``jaxslim-aot llama3_70b --topology v5p-128`` and ``jaxslim-aot llama3_70b:v5e
--topology v5e-256`` compile them (per-chip HBM in benchmarks/README.md). ``data.batch_size`` is
global: scale it with the chips of another topology.
"""

from jaxslim.config import DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    if arg not in ("", "v5e"):
        raise ValueError(f"llama3_70b takes '' (v5p-128) or 'v5e' (v5e-256), got {arg!r}")
    v5e = arg == "v5e"
    model = ModelConfig.llama(
        vocab_size=128256,
        d_model=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        d_ff=28672,
        max_len=8192,
        rope_theta=500000.0,
        norm_eps=1e-5,
        dtype="bfloat16",
        remat=True,
        remat_policy="offload" if v5e else "save_dot_except_mlpwi",
    )
    # two sequences per chip: 256 chips x 2 x 2048 tokens, or 64 chips x 2 x 4096
    data = DataConfig(corpus="shakespeare", seq_len=2048 if v5e else 4096, batch_size=512 if v5e else 128)
    return TrainConfig(
        model=model,
        mesh=MeshConfig(data=2, fsdp=-1),
        data=data,
        optim=OptimConfig(lr=1.5e-4, warmup_steps=2000, weight_decay=0.1, b2=0.95, clip_norm=1.0),
        workdir="runs/llama3_70b" + ("_v5e" if v5e else ""),
        steps=100000,
    )
