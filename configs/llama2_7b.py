"""Llama-2-7B shapes, sized for a v5e-256 pod: 4 sequences of 2048 tokens per chip with remat
policy ``save_qkv_proj`` (MaxText's v5e-256 llama2_7b configuration), FSDP over half the chips
and two data-parallel groups (with FSDP over the whole pod the TPU compiler all-reduces every weight
gradient instead of reduce-scattering it: benchmarks/README.md), bf16 compute, AdamW.

``get_config("")`` is the real shape (``jaxslim-aot llama2_7b --topology v5e-256``: per-chip HBM in
benchmarks/README.md); ``get_config("tiny")`` keeps the recipe at a few MB for tests
(``jaxslim-aot llama2_7b:tiny --topology v5e:2x2``). ``data.batch_size`` is global: scale it with
the number of chips of another topology.
"""

from jaxslim.config import DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    if arg not in ("", "tiny"):
        raise ValueError(f"llama2_7b takes '' or 'tiny', got {arg!r}")
    tiny = arg == "tiny"
    shapes = (
        {"vocab_size": 1024, "d_model": 512, "n_layers": 2, "n_heads": 4, "d_ff": 1024, "max_len": 256}
        if tiny
        else {
            "vocab_size": 32000,
            "d_model": 4096,
            "n_layers": 32,
            "n_heads": 32,
            "d_ff": 11008,
            "max_len": 4096,
        }
    )
    seq_len = 128 if tiny else 2048
    return TrainConfig(
        model=ModelConfig.llama(
            **shapes, norm_eps=1e-5, dtype="bfloat16", remat=True, remat_policy="save_qkv_proj"
        ),
        mesh=MeshConfig(data=1 if tiny else 2, fsdp=-1),
        data=DataConfig(corpus="shakespeare", seq_len=seq_len, batch_size=8 if tiny else 1024),
        optim=OptimConfig(lr=3e-4, warmup_steps=2000, weight_decay=0.1, b2=0.95, clip_norm=1.0),
        workdir="runs/llama2_7b" + ("_tiny" if tiny else ""),
        steps=100000,
    )
