"""A small BERT trained with masked LM on the embedded Shakespeare corpus."""

from jaxslim.config import CheckpointConfig, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(arg: str = "") -> TrainConfig:
    if arg not in ("", "tiny"):
        raise ValueError(f"shakespeare_bert takes '' or 'tiny', got {arg!r}")
    tiny = arg == "tiny"
    seq_len = 32 if tiny else 128
    model = ModelConfig.bert(
        vocab_size=8192,
        d_model=64 if tiny else 256,
        n_layers=2 if tiny else 4,
        n_heads=4,
        d_ff=256 if tiny else 1024,
        max_len=seq_len,
        head="mlm",
        pooler=False,
    )
    return TrainConfig(
        model=model,
        mesh=MeshConfig(data=-1),
        data=DataConfig(corpus="shakespeare", seq_len=seq_len, batch_size=8 if tiny else 32, mlm=True),
        optim=OptimConfig(lr=1e-3, warmup_steps=2 if tiny else 100),
        checkpoint=CheckpointConfig(every=0 if tiny else 200),
        workdir="runs/shakespeare_bert" + ("_tiny" if tiny else ""),
        steps=6 if tiny else 2000,
        log_every=2 if tiny else 20,
        eval_every=0 if tiny else 500,
        eval_batches=2 if tiny else 0,
    )
