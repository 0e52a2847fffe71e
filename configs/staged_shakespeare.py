"""Staged training of a small GPT-2 on the embedded Shakespeare corpus: start at half width and half
depth, grow the whole training state once when the validation loss-vs-FLOPs curve flattens.

``get_config("")``: the final model is 4 layers x 256 (4 heads, FFN 1024) on a 2048-token BPE, so
the transformer blocks, which growth enlarges, carry most of the FLOPs; it starts as 2 x 128,
evaluates every 25 steps and grows when the slope of log validation loss against log training
FLOPs rises above the reference's threshold for width + depth growth (-0.03), jumping the schedule
back by the reference's constant (2.455) with a 20-step re-warm-up. ``get_config("tiny")`` grows at
a fixed step, for tests and smoke checks.

    jaxslim-train staged_shakespeare --workdir runs/staged
"""

from jaxslim.config import (
    CheckpointConfig,
    DataConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    StageConfig,
    TrainConfig,
)


def get_config(arg: str = "") -> TrainConfig:
    if arg not in ("", "tiny"):
        raise ValueError(f"staged_shakespeare takes '' or 'tiny', got {arg!r}")
    tiny = arg == "tiny"
    seq_len = 32 if tiny else 128
    model = ModelConfig.gpt2(
        vocab_size=2048,
        d_model=64 if tiny else 256,
        n_layers=2 if tiny else 4,
        n_heads=4,
        d_ff=256 if tiny else 1024,
        max_len=seq_len,
    )
    stage = (
        StageConfig(width=2, depth=2, at_step=6, restart_step=3, rewarm_steps=2)
        if tiny
        else StageConfig(width=2, depth=2, rewarm_steps=20)
    )
    return TrainConfig(
        model=model,
        mesh=MeshConfig(data=-1),
        data=DataConfig(
            corpus="shakespeare", seq_len=seq_len, batch_size=8 if tiny else 16, bpe_vocab_size=2048
        ),
        optim=OptimConfig(lr=3e-3 if tiny else 1e-3, warmup_steps=2 if tiny else 50, final_lr_ratio=0.1),
        checkpoint=CheckpointConfig(every=4 if tiny else 100, keep=2),
        workdir="runs/staged_shakespeare" + ("_tiny" if tiny else ""),
        steps=12 if tiny else 800,
        log_every=2 if tiny else 10,
        eval_every=4 if tiny else 25,
        eval_batches=4 if tiny else 8,
        sample_tokens=0 if tiny else 200,
        sample_prompt="ROMEO:\n",
        stages=(stage,),
    )
