"""Acceptance of every converted family by the two commands people run next: ``jaxslim-train``
takes one step from ``--init-from <converted dir>``, and ``jaxslim-prune --flops 0.7`` prunes it.

Each family is a tiny random transformers model saved with ``save_pretrained`` next to a small
byte-level BPE (its vocabulary is the model's), so the run trains on the embedded Shakespeare text
with the converted model's own tokenizer. The training preset is a file, as a user would write one:
the model config is read from the converted directory's ``config.json``.

A family costs about a minute on 2 cores (two compiles, a checkpoint, a Fisher prune with search,
rearrangement and tuning), so the suite runs three that together cover the block variants (Gemma 3:
sandwich norms, q/k norms, local RoPE, window, embedding scale; GPT-NeoX: parallel residual and
partial rotary on the GPT-2 block; RoBERTa: an encoder with padded positions and its MLM head);
``JAXSLIM_ALL_FAMILIES=1`` runs every family. ``jaxslim-prune`` refuses mixtures of experts (its
Fisher masks cover dense FFN units), which the test asserts for Qwen2-MoE and Qwen3-MoE. Their flags are also each trained, Fisher-masked and
slimmed in process by ``test_family_flags_methods.py``.
"""

import json
import os

import pytest
from hf_models import build_hf

from conftest import require
from jaxslim.cli.prune import main as prune_main
from jaxslim.cli.train import main as train_main
from jaxslim.convert import load_hf

pytestmark = [pytest.mark.torch, pytest.mark.slow]  # two compiles and a prune per family

_DECODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
)
_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=70,
)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DECODER),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_DECODER, head_dim=8)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_DECODER, sliding_window=8)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_DECODER, head_dim=8)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_DECODER, head_dim=8, sliding_window=8)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(_DECODER, head_dim=8, sliding_window=8)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_DECODER, pad_token_id=0)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", _DECODER),
    "neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_DECODER, num_key_value_heads=4, rotary_pct=0.5)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(_DECODER, **_MOE, shared_expert_intermediate_size=24),
    ),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(_DECODER, **_MOE, head_dim=8)),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", _ENCODER),
    "xlmr": ("XLMRobertaConfig", "XLMRobertaForMaskedLM", _ENCODER),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForMaskedLM",
        dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64),
    ),
    "modernbert": (
        "ModernBertConfig",
        "ModernBertForMaskedLM",
        dict(
            _ENCODER,
            num_hidden_layers=3,
            local_attention=4,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
    ),
}

QUICK = ("gemma3", "neox", "roberta")
PRESET = """
import json, pathlib
from jaxslim.config import CheckpointConfig, DataConfig, OptimConfig, TrainConfig
from jaxslim.convert import config_from_hf

def get_config(arg=""):
    model = config_from_hf(json.loads((pathlib.Path(arg) / "config.json").read_text()))
    return TrainConfig(
        model=model,
        data=DataConfig(corpus="shakespeare", seq_len=16, batch_size=8, tokenizer=arg, mlm=model.head == "mlm"),
        optim=OptimConfig(lr=1e-3, warmup_steps=0),
        checkpoint=CheckpointConfig(every=1, keep=1, async_save=False),
        steps=1, log_every=1, eval_batches=1, sample_tokens=0, tensorboard=False,
    )
"""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from jaxslim.data.corpora import corpus_text
    from jaxslim.data.tokenizer import train_bpe

    return train_bpe(corpus_text("shakespeare")[:3], vocab_size=320)


@pytest.mark.parametrize(
    "family", list(FAMILIES) if os.environ.get("JAXSLIM_ALL_FAMILIES") == "1" else list(QUICK)
)
def test_train_one_step_from_the_converted_dir_and_prune(family, tokenizer, tmp_path, capsys):
    require("torch")
    config_cls, model_cls, kwargs = FAMILIES[family]
    ref = build_hf(config_cls, model_cls, dict(kwargs, vocab_size=tokenizer.vocab_size))
    src = tmp_path / "hf"
    ref.save_pretrained(src)
    tokenizer.save(src)
    preset = tmp_path / "from_hf.py"
    preset.write_text(PRESET)
    run = tmp_path / "run"
    assert train_main([f"{preset}:{src}", "--init-from", str(src), "--workdir", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("step") == 1 and "loss" in r for r in rows), rows
    out = tmp_path / "pruned"
    argv = ["--model", str(src), "--flops", "0.7", "--samples", "shakespeare", "--num-samples", "16"]
    argv += ["--held-out", "8", "--max-len", "16", "--batch-size", "8", "--latency-batch", "2"]
    argv += ["--latency-seq", "16", "--out", str(out)]
    cfg = load_hf(src).cfg
    if cfg.post_norms or not cfg.input_norms or cfg.parallel_residual:
        argv.append("--no-tune")  # mask tuning models plain pre- or post-norm blocks only
    if cfg.moe is not None:  # Fisher pruning masks dense FFN units; expert layers are refused by name
        assert prune_main(argv) == 2
        assert "this model's FFNs include expert layers" in capsys.readouterr().err
        return
    assert prune_main(argv) == 0
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["flops"] <= 0.7 + 1e-6 and row["params_slim"] < row["params_dense"], row
