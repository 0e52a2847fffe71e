"""A small Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention) on the embedded King James Bible."""

from jaxslim.config import CheckpointConfig, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    if arg not in ("", "tiny"):
        raise ValueError(f"kjv_llama takes '' or 'tiny', got {arg!r}")
    tiny = arg == "tiny"
    model = ModelConfig.llama(
        vocab_size=8192,
        d_model=64 if tiny else 384,
        n_layers=2 if tiny else 6,
        n_heads=4 if tiny else 6,
        n_kv_heads=2,
        d_ff=128 if tiny else 1024,
    )
    return TrainConfig(
        model=model,
        mesh=MeshConfig(data=-1),
        data=DataConfig(corpus="kjv", seq_len=32 if tiny else 256, batch_size=8 if tiny else 32),
        optim=OptimConfig(lr=1e-3, warmup_steps=2 if tiny else 200),
        checkpoint=CheckpointConfig(every=0 if tiny else 500),
        workdir="runs/kjv_llama" + ("_tiny" if tiny else ""),
        steps=6 if tiny else 5000,
        log_every=2 if tiny else 20,
        eval_every=0 if tiny else 1000,
        eval_batches=2 if tiny else 0,
        sample_tokens=8 if tiny else 200,
        sample_prompt="In the beginning",
    )
