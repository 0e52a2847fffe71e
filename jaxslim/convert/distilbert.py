"""DistilBERT (``DistilBertModel``, ``DistilBertForMaskedLM``) <-> jaxslim: key map and config mapping.

A DistilBERT is a post-norm BERT without token types or pooler (``ModelConfig.bert(type_vocab_size=0,
pooler=False)``) under its own names: ``transformer.layer.{i}.attention.q_lin`` ... ``out_lin``,
``sa_layer_norm``, ``ffn.lin1`` / ``lin2``, ``output_layer_norm``; the masked-LM head is
``vocab_transform``, ``vocab_layer_norm`` and ``vocab_projector`` (tied to the word embeddings,
with a bias); the sequence classifier is ``pre_classifier`` + ReLU + ``classifier`` on the first
token (a pooler with ``pooler_activation="relu"``). Sinusoidal position tables (``sinusoidal_pos_embds``) are refused by name.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import bert
from jaxslim.convert.rules import (
    HEADS_BIAS,
    LINEAR,
    LINEAR_FROM_HEADS,
    LINEAR_TO_HEADS,
    Rule,
    encoder_flags,
    num_labels,
    rule,
)

ARCHITECTURES = ("DistilBertModel", "DistilBertForMaskedLM", "DistilBertForSequenceClassification")
MODEL_TYPE = "distilbert"
HF_CONFIG = "DistilBertConfig"
PREFIX = "distilbert."
IGNORE = (r"embeddings\.position_ids$",)

B = "stack.blocks.{i}."
L = "transformer.layer.{i}."


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes (the bare model has none)."""
    return "" if architecture == "DistilBertModel" else PREFIX


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a DistilBERT ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    cls = architecture == "DistilBertForSequenceClassification"
    if hf.get("sinusoidal_pos_embds"):
        raise ValueError("DistilBERT sinusoidal_pos_embds=True is not supported; only learned positions")
    act = hf.get("activation", "gelu")
    if act not in bert.ACTIVATIONS:
        raise ValueError(
            f"DistilBERT activation={act!r} is not supported; supported: {sorted(bert.ACTIVATIONS)}"
        )
    return ModelConfig.bert(
        vocab_size=hf["vocab_size"],
        d_model=hf["dim"],
        n_layers=hf["n_layers"],
        n_heads=hf["n_heads"],
        d_ff=hf["hidden_dim"],
        max_len=hf.get("max_position_embeddings", 512),
        type_vocab_size=0,
        norm_eps=1e-12,  # fixed in DistilBERT's layers
        activation=bert.ACTIVATIONS[act],
        head="mlm" if architecture == "DistilBertForMaskedLM" else "cls" if cls else "none",
        num_labels=num_labels(hf) if cls else 2,
        pooler=cls,
        pooler_activation="relu",
        pad_token_id=hf.get("pad_token_id", 0),
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``DistilBertConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF DistilBERT cannot express (all of it named).
    """
    problems = []
    if cfg.arch != "bert":
        problems.append(f"arch={cfg.arch!r} (DistilBERT is a BERT-style encoder)")
    if cfg.type_vocab_size:
        problems.append(f"type_vocab_size={cfg.type_vocab_size} (DistilBERT has no token types)")
    if cfg.pooler != (cfg.head == "cls"):
        problems.append(f"pooler={cfg.pooler} with head={cfg.head!r} (only DistilBERT's classifier has one)")
    if cfg.pooler and cfg.pooler_activation != "relu":
        problems.append(f"pooler_activation={cfg.pooler_activation!r} (DistilBERT's pre_classifier is ReLU)")
    if cfg.norm_eps != 1e-12:
        problems.append(f"norm_eps={cfg.norm_eps} (DistilBERT's is 1e-12)")
    if not (cfg.attn_bias and cfg.mlp_bias) or cfg.activation not in bert.ACTIVATIONS_TO_HF:
        problems.append("no biases, or an activation DistilBERT lacks")
    if cfg.n_kv_heads not in (None, cfg.n_heads) or cfg.head_dim not in (None, cfg.d_model // cfg.n_heads):
        problems.append("grouped-query heads or a head_dim other than d_model / n_heads")
    if cfg.rope or cfg.sliding_window is not None:
        problems.append(f"rotary={cfg.rotary}, sliding_window={cfg.sliding_window} (DistilBERT has neither)")
    problems += encoder_flags(cfg, "DistilBERT")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face DistilBERT: " + "; ".join(problems))
    arch = {"mlm": "DistilBertForMaskedLM", "cls": "DistilBertForSequenceClassification"}
    extra = {"num_labels": cfg.num_labels} if cfg.head == "cls" else {}
    return arch.get(cfg.head, "DistilBertModel"), dict(
        **extra,
        vocab_size=cfg.vocab_size,
        dim=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        hidden_dim=cfg.d_ff,
        max_position_embeddings=cfg.max_len,
        activation=bert.ACTIVATIONS_TO_HF[cfg.activation],
        pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0,
        sinusoidal_pos_embds=False,
        tie_word_embeddings=True,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a DistilBERT model described by ``cfg``."""
    out = [
        rule("embeddings.word_embeddings.weight", "embed.tokens"),
        rule("embeddings.position_embeddings.weight", "embed.positions"),
        rule("embeddings.LayerNorm.weight", "embed.norm.scale"),
        rule("embeddings.LayerNorm.bias", "embed.norm.bias"),
    ]
    for proj in ("q", "k", "v"):
        out += [
            rule(L + f"attention.{proj}_lin.weight", B + f"attn.w{proj}", transform=LINEAR_TO_HEADS),
            rule(L + f"attention.{proj}_lin.bias", B + f"attn.b{proj}", transform=HEADS_BIAS),
        ]
    out += [
        rule(L + "attention.out_lin.weight", B + "attn.wo", transform=LINEAR_FROM_HEADS),
        rule(L + "attention.out_lin.bias", B + "attn.bo"),
        rule(L + "sa_layer_norm.weight", B + "attn_norm.scale"),
        rule(L + "sa_layer_norm.bias", B + "attn_norm.bias"),
        rule(L + "ffn.lin1.weight", B + "mlp.wi", transform=LINEAR),
        rule(L + "ffn.lin1.bias", B + "mlp.bi"),
        rule(L + "ffn.lin2.weight", B + "mlp.wo", transform=LINEAR),
        rule(L + "ffn.lin2.bias", B + "mlp.bo"),
        rule(L + "output_layer_norm.weight", B + "mlp_norm.scale"),
        rule(L + "output_layer_norm.bias", B + "mlp_norm.bias"),
        rule("vocab_transform.weight", "mlm.w", transform=LINEAR, head=True),
        rule("vocab_transform.bias", "mlm.b", head=True),
        rule("vocab_layer_norm.weight", "mlm.norm.scale", head=True),
        rule("vocab_layer_norm.bias", "mlm.norm.bias", head=True),
        rule("vocab_projector.bias", "mlm.vocab_bias", head=True),
    ]
    if cfg.head == "mlm":
        out.append(rule("vocab_projector.weight", "embed.tokens", head=True, tied=True))
    out += [
        rule("pre_classifier.weight", "pooler_w", transform=LINEAR, head=True),
        rule("pre_classifier.bias", "pooler_b", head=True),
        rule("classifier.weight", "cls_w", transform=LINEAR, head=True),
        rule("classifier.bias", "cls_b", head=True),
    ]
    return out
