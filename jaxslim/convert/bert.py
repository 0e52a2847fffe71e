"""BERT (``BertModel``, ``BertForMaskedLM``) <-> jaxslim key map and config mapping."""

from __future__ import annotations

from jaxslim.config import ModelConfig
from jaxslim.convert.rules import HEADS_BIAS, LINEAR, LINEAR_FROM_HEADS, LINEAR_TO_HEADS, Rule, rule

ARCHITECTURES = ("BertModel", "BertForMaskedLM")
MODEL_TYPE = "bert"
PREFIX = "bert."
# buffers, and the MLM decoder that is tied to the word embeddings
IGNORE = (r"position_ids$", r"^cls\.predictions\.decoder\.(weight|bias)$")
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}

B = "stack.blocks.{i}."
L = "encoder.layer.{i}."


def config_from_hf(hf: dict, architecture: str) -> ModelConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"BERT position_embedding_type={hf['position_embedding_type']!r} is not supported; only 'absolute'"
        )
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"BERT hidden_act={act!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    mlm = architecture == "BertForMaskedLM"
    return ModelConfig.bert(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=ACTIVATIONS[act],
        head="mlm" if mlm else "none",
        pooler=not mlm,
        pad_token_id=hf.get("pad_token_id"),
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    inv = {v: k for k, v in reversed(list(ACTIVATIONS.items()))}
    arch = "BertForMaskedLM" if cfg.head == "mlm" else "BertModel"
    return arch, dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_len,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps,
        hidden_act=inv[cfg.activation],
        pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    out = [
        rule("embeddings.word_embeddings.weight", "embed.tokens"),
        rule("embeddings.position_embeddings.weight", "embed.positions"),
        rule("embeddings.token_type_embeddings.weight", "embed.types"),
        rule("embeddings.LayerNorm.weight", "embed.norm.scale"),
        rule("embeddings.LayerNorm.bias", "embed.norm.bias"),
    ]
    for proj, w in (("query", "q"), ("key", "k"), ("value", "v")):
        out += [
            rule(L + f"attention.self.{proj}.weight", B + f"attn.w{w}", transform=LINEAR_TO_HEADS),
            rule(L + f"attention.self.{proj}.bias", B + f"attn.b{w}", transform=HEADS_BIAS),
        ]
    out += [
        rule(L + "attention.output.dense.weight", B + "attn.wo", transform=LINEAR_FROM_HEADS),
        rule(L + "attention.output.dense.bias", B + "attn.bo"),
        rule(L + "attention.output.LayerNorm.weight", B + "attn_norm.scale"),
        rule(L + "attention.output.LayerNorm.bias", B + "attn_norm.bias"),
        rule(L + "intermediate.dense.weight", B + "mlp.wi", transform=LINEAR),
        rule(L + "intermediate.dense.bias", B + "mlp.bi"),
        rule(L + "output.dense.weight", B + "mlp.wo", transform=LINEAR),
        rule(L + "output.dense.bias", B + "mlp.bo"),
        rule(L + "output.LayerNorm.weight", B + "mlp_norm.scale"),
        rule(L + "output.LayerNorm.bias", B + "mlp_norm.bias"),
        rule("pooler.dense.weight", "pooler_w", transform=LINEAR),
        rule("pooler.dense.bias", "pooler_b"),
        rule("cls.predictions.transform.dense.weight", "mlm.w", transform=LINEAR, head=True),
        rule("cls.predictions.transform.dense.bias", "mlm.b", head=True),
        rule("cls.predictions.transform.LayerNorm.weight", "mlm.norm.scale", head=True),
        rule("cls.predictions.transform.LayerNorm.bias", "mlm.norm.bias", head=True),
        rule("cls.predictions.bias", "mlm.vocab_bias", head=True),
    ]
    return out
