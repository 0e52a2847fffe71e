"""Llama-3-8B shapes (128K vocabulary, grouped-query attention), sized for a v5e-256 pod at one
sequence of 8192 tokens per chip (Llama 3's context), FSDP over half the chips and two data-parallel
groups (see ``llama2_7b``), bf16 compute, AdamW.

``jaxslim-aot llama3_8b --topology v5e-256`` compiles it; ``get_config("2k")`` is the 2048-token,
one-sequence-per-chip variant. ``data.batch_size`` is global: scale it with the chips of another
topology.
"""

from jaxslim.config import DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    if arg not in ("", "2k"):
        raise ValueError(f"llama3_8b takes '' (8192 tokens) or '2k', got {arg!r}")
    seq_len = 2048 if arg == "2k" else 8192
    model = ModelConfig.llama(
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_len=8192,
        rope_theta=500000.0,
        norm_eps=1e-5,
        dtype="bfloat16",
        remat=True,
        remat_policy="save_qkv_proj",
    )
    return TrainConfig(
        model=model,
        mesh=MeshConfig(data=2, fsdp=-1),
        data=DataConfig(corpus="shakespeare", seq_len=seq_len, batch_size=256),
        optim=OptimConfig(lr=3e-4, warmup_steps=2000, weight_decay=0.1, b2=0.95, clip_norm=1.0),
        workdir="runs/llama3_8b",
        steps=100000,
    )
