"""Llama-3-70B shapes (128K vocabulary, 80 layers, grouped-query attention), sized for a v5p-128 pod
(64 chips) after MaxText's published configuration of Llama-2-70B on the same pod (its benchmark entry
``llama2_70b_v5p_128``; MaxText publishes no v5p Llama-3-70B training configuration): two sequences
of 4096 tokens per chip, remat policy ``save_dot_except_mlpwi`` (MaxText's for that run), the
weights sharded over half the chips with two data-parallel groups (see ``llama2_7b``), bf16 compute,
AdamW.

``jaxslim-aot llama3_70b --topology v5p-128`` compiles it (per-chip HBM in benchmarks/README.md,
which also has why MaxText's v5e-256 configuration of the 70B does not fit yet).
``data.batch_size`` is global: scale it with the chips of another topology.
"""

from jaxslim.config import DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    if arg:
        raise ValueError(f"llama3_70b takes no argument, got {arg!r}")
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
        remat_policy="save_dot_except_mlpwi",
    )
    return TrainConfig(
        model=model,
        mesh=MeshConfig(data=2, fsdp=-1),
        data=DataConfig(corpus="shakespeare", seq_len=4096, batch_size=128),  # 64 chips x 2 x 4096
        optim=OptimConfig(lr=1.5e-4, warmup_steps=2000, weight_decay=0.1, b2=0.95, clip_norm=1.0),
        workdir="runs/llama3_70b",
        steps=100000,
    )
