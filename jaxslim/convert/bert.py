"""BERT (``BertModel``, ``BertForMaskedLM``) <-> jaxslim: key map and config mapping.

``BertModel`` checkpoints name their tensors without a prefix (``embeddings.*``, as in
all-MiniLM-L6-v2); ``BertForMaskedLM`` ones put the backbone under ``bert.`` and add
``cls.predictions.*``, whose decoder is tied to the word embeddings. Whether the pooler exists is
read from the weights, since ``BertForMaskedLM`` has none while pre-training checkpoints keep it.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
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

ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")
MODEL_TYPE = "bert"
HF_CONFIG = "BertConfig"
PREFIX = "bert."
IGNORE = (
    r"embeddings\.position_ids$",  # buffer: arange(max_len)
    r"embeddings\.token_type_ids$",  # buffer: zeros, saved by some versions
    r"^cls\.seq_relationship\.",  # next-sentence head of pre-training checkpoints; from_pretrained drops it too
)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

B = "stack.blocks.{i}."
L = "encoder.layer.{i}."


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes (the bare ``BertModel`` has none)."""
    return "" if architecture == "BertModel" else PREFIX


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a BERT ``config.json``.

    Args:
        hf: the ``config.json`` dict.
        architecture: one of ``ARCHITECTURES``.
        tensor_names: the checkpoint's tensor names, when known; they decide whether a pooler exists.

    Raises:
        ValueError: a feature jaxslim's BERT does not have.
        KeyError: a required field is absent.
    """
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"BERT position_embedding_type={hf['position_embedding_type']!r} is not supported; only 'absolute'"
        )
    for flag in ("is_decoder", "add_cross_attention"):
        if hf.get(flag):
            raise ValueError(f"BERT {flag}=True is not supported; jaxslim's BERT is a bidirectional encoder")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"BERT hidden_act={act!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    mlm = architecture == "BertForMaskedLM"
    head = "mlm" if mlm else "cls" if architecture.endswith("ForSequenceClassification") else "none"
    if tensor_names is None:
        pooler = not mlm  # what from_pretrained builds for each class
    else:
        pooler = any(n.endswith("pooler.dense.weight") for n in tensor_names)
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
        head=head,
        num_labels=num_labels(hf) if head == "cls" else 2,
        pooler=pooler,
        pad_token_id=hf.get("pad_token_id"),
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``BertConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF BERT cannot express.
    """
    problems = []
    if cfg.head == "lm":
        problems.append("head='lm' (HF BERT has no causal LM head here; use 'mlm' or 'none')")
    if not (cfg.attn_bias and cfg.mlp_bias):
        problems.append("attn_bias/mlp_bias=False (HF BERT always has biases)")
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    if cfg.head == "mlm" and not cfg.tie_embeddings:
        problems.append("an untied MLM decoder")
    if cfg.n_kv_heads not in (None, cfg.n_heads) or cfg.head_dim not in (None, cfg.d_model // cfg.n_heads):
        problems.append("grouped-query heads or a head_dim other than d_model / n_heads")
    if cfg.pad_positions:
        problems.append("pad_positions=True (that is RoBERTa: set hf_family='roberta')")
    if cfg.pooler_activation != "tanh":
        problems.append(f"pooler_activation={cfg.pooler_activation!r} (BERT's pooler is tanh)")
    if cfg.rope or cfg.sliding_window is not None:
        problems.append(
            f"rotary={cfg.rotary}, sliding_window={cfg.sliding_window} (that is ModernBERT: set "
            "hf_family='modernbert')"
        )
    problems += encoder_flags(cfg, "BERT")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face BERT: " + "; ".join(problems))
    arch = {"mlm": "BertForMaskedLM", "cls": "BertForSequenceClassification"}.get(cfg.head, "BertModel")
    extra: dict[str, int] = {"num_labels": cfg.num_labels} if cfg.head == "cls" else {}
    return arch, dict(
        **extra,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_len,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps,
        hidden_act=ACTIVATIONS_TO_HF[cfg.activation],
        pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0,
        tie_word_embeddings=True,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a BERT model described by ``cfg``."""
    out = backbone_rules(cfg) + [
        rule("cls.predictions.transform.dense.weight", "mlm.w", transform=LINEAR, head=True),
        rule("cls.predictions.transform.dense.bias", "mlm.b", head=True),
        rule("cls.predictions.transform.LayerNorm.weight", "mlm.norm.scale", head=True),
        rule("cls.predictions.transform.LayerNorm.bias", "mlm.norm.bias", head=True),
        rule("cls.predictions.bias", "mlm.vocab_bias", head=True),
    ]
    if cfg.head == "mlm":
        # the decoder is tied: its weight is the word embedding table and its bias is predictions.bias
        out += [
            rule("cls.predictions.decoder.weight", "embed.tokens", head=True, tied=True),
            rule("cls.predictions.decoder.bias", "mlm.vocab_bias", head=True, tied=True),
        ]
    out += [
        rule("classifier.weight", "cls_w", transform=LINEAR, head=True),
        rule("classifier.bias", "cls_b", head=True),
    ]
    return out


def backbone_rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of the embeddings, layers and pooler of a BERT-style encoder (RoBERTa and XLM-R
    share it)."""
    del cfg
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
    ]
    return out
