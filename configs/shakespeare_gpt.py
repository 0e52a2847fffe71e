"""A small GPT-2 (about 10M parameters) on the embedded Shakespeare corpus: the demo run.

``get_config("")`` is the demo (``make demo``, about 7.5 minutes on 2 CPU cores); ``get_config("tiny")``
is a seconds-long version of the same run for tests and smoke checks.
"""

from jaxslim.config import CheckpointConfig, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    if arg not in ("", "tiny"):
        raise ValueError(f"shakespeare_gpt takes '' or 'tiny', got {arg!r}")
    tiny = arg == "tiny"
    seq_len = 32 if tiny else 128
    model = ModelConfig.gpt2(
        vocab_size=8192,  # replaced by the tokenizer's size at start-up
        d_model=64 if tiny else 384,
        n_layers=2 if tiny else 4,
        n_heads=4 if tiny else 6,
        d_ff=256 if tiny else 1536,
        max_len=seq_len,
    )
    steps = 12 if tiny else 600
    return TrainConfig(
        model=model,
        mesh=MeshConfig(data=-1),
        data=DataConfig(corpus="shakespeare", seq_len=seq_len, batch_size=8 if tiny else 16),
        optim=OptimConfig(lr=3e-3 if tiny else 1e-3, warmup_steps=2 if tiny else 50, final_lr_ratio=0.1),
        checkpoint=CheckpointConfig(every=4 if tiny else 100, keep=2),
        workdir="runs/shakespeare_gpt" + ("_tiny" if tiny else ""),
        steps=steps,
        log_every=2 if tiny else 10,
        eval_every=0 if tiny else 200,
        eval_batches=4 if tiny else 0,
        sample_tokens=16 if tiny else 200,
        sample_prompt="ROMEO:\n" if not tiny else "\n",
    )
