"""GPT-2 small (124M) for accelerators: FSDP over the data-parallel devices, bf16 compute.

``arg`` names the corpus (default ``shakespeare``; a local path or ``hf:owner/name`` works too).
Shapes follow the GPT-2 paper: 12 layers, width 768, 12 heads, context 1024.
"""

from jaxslim.config import CheckpointConfig, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    corpus = arg or "shakespeare"
    return TrainConfig(
        model=ModelConfig.gpt2_small(dtype="bfloat16", remat=True),
        mesh=MeshConfig(data=1, fsdp=-1),
        data=DataConfig(corpus=corpus, seq_len=1024, batch_size=64, bpe_vocab_size=32768),
        optim=OptimConfig(lr=6e-4, warmup_steps=700, weight_decay=0.1, b2=0.95),
        checkpoint=CheckpointConfig(every=1000, keep=3, keep_every=10000),
        workdir="runs/gpt2_small",
        steps=50000,
        log_every=50,
        eval_every=1000,
        eval_batches=50,
    )
