"""ModernBERT (``ModernBertModel``, ``ModernBertForMaskedLM``, ``ModernBertForSequenceClassification``)
<-> jaxslim: key map and config mapping.

A ModernBERT is a BERT with the decoder recipe inside: ``ModelConfig.bert`` with RoPE
(``rotary``), pre-norm blocks (``norm_placement="pre"``) and a final norm, GeGLU FFNs
(``gated_ffn``, GELU), no token types, positions or pooler, bias-free LayerNorms by default
(``norm_bias``), and layer 0 reading the normalised embeddings without its own attention norm
(``first_attn_norm=False``). Every ``global_attn_every_n_layers``-th layer (``layer_types``) attends
to the whole sequence with RoPE base ``global_rope_theta``; the others attend within
``local_attention // 2`` positions on either side (``sliding_window = local_attention // 2 + 1``
on ``sliding_layers``) with base ``local_rope_theta``. The fused ``attn.Wqkv`` (q, k, v rows) and
``mlp.Wi`` (input rows, then gate rows) are split on load and fused on save. The masked-LM head is
``head.dense`` (bias: ``classifier_bias``) + activation + ``head.norm``, then ``decoder`` tied to
the token embeddings (bias: ``decoder_bias``). The sequence classifier pools the first token or
the mean of the unmasked ones (``classifier_pooling``: ``pooling``), then runs the same
``head`` (the pooler with ``classifier_activation`` and ``pooler_norm``) and ``classifier``.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert.rules import (
    CONV_QKV_BIAS,
    GATE_UP_BIAS,
    LINEAR,
    LINEAR_FROM_HEADS,
    LINEAR_GATE_UP,
    LINEAR_QKV,
    Rule,
    num_labels,
    rule,
    token_fields,
    token_ids,
)

ARCHITECTURES = ("ModernBertModel", "ModernBertForMaskedLM", "ModernBertForSequenceClassification")
POOLING = {"cls": "first", "mean": "mean"}  # classifier_pooling -> ModelConfig.pooling
MODEL_TYPE = "modernbert"
HF_CONFIG = "ModernBertConfig"
PREFIX = "model."
IGNORE: tuple[str, ...] = ()

# ModernBertConfig's defaults, for config.json files that leave a field out
GLOBAL_THETA, LOCAL_THETA, GLOBAL_EVERY, LOCAL_ATTENTION = 160_000.0, 10_000.0, 3, 128
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu"}
FULL, SLIDING = "full_attention", "sliding_attention"

B = "stack.blocks.{i}."
L = "layers.{i}."


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes (the bare model has none)."""
    return "" if architecture == "ModernBertModel" else PREFIX


def _thetas(hf: dict) -> tuple[float, float]:
    """(global, local) RoPE bases, from ``rope_parameters`` or the older ``*_rope_theta`` fields."""
    params = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling"):
        params = {FULL: hf["rope_scaling"], SLIDING: hf["rope_scaling"]}
    for kind in (FULL, SLIDING):
        rope_type = (params.get(kind) or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(
                f"ModernBERT rope_parameters[{kind!r}] rope_type={rope_type!r} is not supported; only "
                "'default' (plain RoPE)"
            )
    full, sliding = params.get(FULL) or {}, params.get(SLIDING) or {}
    return (
        float(full.get("rope_theta", hf.get("global_rope_theta", GLOBAL_THETA))),
        float(sliding.get("rope_theta", hf.get("local_rope_theta", LOCAL_THETA))),
    )


def _layer_types(hf: dict) -> list[str]:
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:
        every = hf.get("global_attn_every_n_layers", GLOBAL_EVERY)
        types = [SLIDING if i % every else FULL for i in range(n)]
    if len(types) != n or set(types) - {FULL, SLIDING}:
        raise ValueError(
            f"ModernBERT layer_types must list {n} entries of {FULL!r} / {SLIDING!r}, got {types!r}"
        )
    return list(types)


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a ModernBERT ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    mlm = architecture == "ModernBertForMaskedLM"
    cls = architecture == "ModernBertForSequenceClassification"
    pooling = hf.get("classifier_pooling", "cls")
    if cls and pooling not in POOLING:
        raise ValueError(
            f"ModernBERT classifier_pooling={pooling!r} is not supported; supported: {sorted(POOLING)}"
        )
    act = hf.get("hidden_activation", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"ModernBERT hidden_activation={act!r} is not supported; supported: {sorted(ACTIVATIONS)}"
        )
    head_act = hf.get("classifier_activation", "gelu")
    if cls and head_act not in ACTIVATIONS:
        raise ValueError(
            f"ModernBERT classifier_activation={head_act!r} is not supported; supported: {sorted(ACTIVATIONS)}"
        )
    if mlm and head_act != act:
        raise ValueError(
            f"ModernBERT classifier_activation={head_act!r} differs from hidden_activation={act!r}; "
            "jaxslim's masked-LM head uses the model's activation"
        )
    if mlm and hf.get("tie_word_embeddings") is False:
        raise ValueError(
            "ModernBERT tie_word_embeddings=False is not supported: the decoder is the token table"
        )
    global_theta, local_theta = _thetas(hf)
    types = _layer_types(hf)
    sliding = tuple(i for i, t in enumerate(types) if t == SLIDING)
    window = hf.get("local_attention", LOCAL_ATTENTION) // 2 + 1 if sliding else None
    return ModelConfig.bert(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 8192),
        type_vocab_size=0,
        norm_eps=hf.get("norm_eps", 1e-5),
        activation=ACTIVATIONS[act],
        head="mlm" if mlm else "cls" if cls else "none",
        num_labels=num_labels(hf) if cls else 2,
        pooler=cls,
        pooler_activation=ACTIVATIONS[head_act] if cls else "tanh",
        pooler_norm=cls,
        pooling=POOLING[pooling] if cls else "first",
        rotary=True,
        norm_placement="pre",
        gated_ffn=True,
        first_attn_norm=False,
        norm_bias=hf.get("norm_bias", False),
        attn_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        head_dense_bias=hf.get("classifier_bias", False),
        vocab_bias=hf.get("decoder_bias", True),
        rope_theta=global_theta,
        sliding_window=window,
        sliding_layers=sliding if window is not None and len(sliding) < len(types) else None,
        local_rope_theta=local_theta if window is not None else None,
        hf_family=MODEL_TYPE,
        **token_ids({"pad_token_id": 50283, "bos_token_id": 50281, "eos_token_id": 50282, **hf}),
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``ModernBertConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF ModernBERT cannot express (all of it named).
    """
    checks = {
        f"arch={cfg.arch!r} (ModernBERT is a BERT-style encoder)": cfg.arch != "bert",
        "rotary=False (ModernBERT uses RoPE)": not cfg.rope,
        f"norm_placement={cfg.norm_placement!r} (ModernBERT is pre-norm)": not cfg.pre_norm,
        "gated_ffn=False (ModernBERT's FFN is gated)": not cfg.gated_mlp,
        "first_attn_norm=True (ModernBERT's layer 0 has no attention norm)": cfg.first_attn_norm,
        f"type_vocab_size={cfg.type_vocab_size} (ModernBERT has no token types)": cfg.type_vocab_size > 0,
        f"pooler={cfg.pooler}, pooler_norm={cfg.pooler_norm} with head={cfg.head!r} (only ModernBERT's "
        "classifier has one, with a norm)": cfg.pooler != (cfg.head == "cls")
        or cfg.pooler_norm != cfg.pooler,
        f"pooler_activation={cfg.pooler_activation!r} (ModernBERT has {sorted(ACTIVATIONS_TO_HF)})": (
            cfg.pooler and cfg.pooler_activation not in ACTIVATIONS_TO_HF
        ),
        f"activation={cfg.activation!r} (ModernBERT has {sorted(ACTIVATIONS_TO_HF)})": (
            cfg.activation not in ACTIVATIONS_TO_HF
        ),
        f"attn_out_bias={cfg.attn_out_bias} differing from attn_bias={cfg.attn_bias}": (
            cfg.out_bias != cfg.attn_bias
        ),
        "grouped-query heads or a head_dim other than d_model / n_heads": (
            cfg.n_kv_heads not in (None, cfg.n_heads)
            or cfg.head_dim not in (None, cfg.d_model // cfg.n_heads)
        ),
        f"rope_scaling={cfg.rope_scaling} (ModernBERT converts plain RoPE only)": cfg.rope_scaling
        is not None,
        f"partial_rotary_factor={cfg.partial_rotary_factor}": cfg.partial_rotary_factor != 1.0,
        "qk_norm, post_norms, parallel_residual, softcaps, embed_scale or attn_scale_dim": bool(
            cfg.qk_norm
            or cfg.post_norms
            or cfg.parallel_residual
            or cfg.attn_softcap
            or cfg.logit_softcap
            or cfg.embed_scale
            or cfg.attn_scale_dim
            or not cfg.input_norms
        ),
        "moe (ModernBERT is dense)": cfg.moe is not None,
        f"sliding_window={cfg.sliding_window} (ModernBERT's local_attention // 2 + 1 is at least 1)": (
            cfg.sliding_window is not None and cfg.sliding_window < 1
        ),
    }
    problems = [what for what, bad in checks.items() if bad]
    if problems:
        raise ValueError("cannot express this model as a Hugging Face ModernBERT: " + "; ".join(problems))
    types = [SLIDING if cfg.window_of(i) else FULL for i in range(cfg.n_layers)]
    window = cfg.sliding_window or LOCAL_ATTENTION // 2 + 1
    local_theta = cfg.local_rope_theta if cfg.local_rope_theta is not None else cfg.rope_theta
    head_act = cfg.pooler_activation if cfg.pooler else cfg.activation
    extra: dict = {}
    if cfg.head == "cls":
        pooling = {v: k for k, v in POOLING.items()}[cfg.pooling]
        extra = dict(num_labels=cfg.num_labels, classifier_pooling=pooling)
    arch = {"mlm": "ModernBertForMaskedLM", "cls": "ModernBertForSequenceClassification"}
    return arch.get(cfg.head, "ModernBertModel"), dict(
        **extra,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        hidden_activation=ACTIVATIONS_TO_HF[cfg.activation],
        classifier_activation=ACTIVATIONS_TO_HF[head_act],
        max_position_embeddings=cfg.max_len,
        norm_eps=cfg.norm_eps,
        norm_bias=cfg.norm_bias,
        attention_bias=cfg.attn_bias,
        mlp_bias=cfg.mlp_bias,
        classifier_bias=cfg.head_dense_bias,
        decoder_bias=cfg.vocab_bias,
        local_attention=2 * (window - 1),
        layer_types=types,
        rope_parameters={
            FULL: {"rope_type": "default", "rope_theta": cfg.rope_theta},
            SLIDING: {"rope_type": "default", "rope_theta": local_theta},
        },
        tie_word_embeddings=True,
        **token_fields(cfg),
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a ModernBERT model described by ``cfg``."""
    out = [
        rule("embeddings.tok_embeddings.weight", "embed.tokens"),
        rule("embeddings.norm.weight", "embed.norm.scale"),
        rule("embeddings.norm.bias", "embed.norm.bias"),
        rule(L + "attn_norm.weight", B + "attn_norm.scale"),
        rule(L + "attn_norm.bias", B + "attn_norm.bias"),
        rule(L + "attn.Wqkv.weight", B + "attn.wq", B + "attn.wk", B + "attn.wv", transform=LINEAR_QKV),
        rule(L + "attn.Wqkv.bias", B + "attn.bq", B + "attn.bk", B + "attn.bv", transform=CONV_QKV_BIAS),
        rule(L + "attn.Wo.weight", B + "attn.wo", transform=LINEAR_FROM_HEADS),
        rule(L + "attn.Wo.bias", B + "attn.bo"),
        rule(L + "mlp_norm.weight", B + "mlp_norm.scale"),
        rule(L + "mlp_norm.bias", B + "mlp_norm.bias"),
        rule(L + "mlp.Wi.weight", B + "mlp.wi", B + "mlp.wu", transform=LINEAR_GATE_UP),
        rule(L + "mlp.Wi.bias", B + "mlp.bi", B + "mlp.bu", transform=GATE_UP_BIAS),
        rule(L + "mlp.Wo.weight", B + "mlp.wo", transform=LINEAR),
        rule(L + "mlp.Wo.bias", B + "mlp.bo"),
        rule("final_norm.weight", "final_norm.scale"),
        rule("final_norm.bias", "final_norm.bias"),
    ]
    if cfg.head == "cls":  # the prediction head is the pooler, then the classifier
        return out + [
            rule("head.dense.weight", "pooler_w", transform=LINEAR, head=True),
            rule("head.dense.bias", "pooler_b", head=True),
            rule("head.norm.weight", "pooler_norm.scale", head=True),
            rule("head.norm.bias", "pooler_norm.bias", head=True),
            rule("classifier.weight", "cls_w", transform=LINEAR, head=True),
            rule("classifier.bias", "cls_b", head=True),
        ]
    out += [
        rule("head.dense.weight", "mlm.w", transform=LINEAR, head=True),
        rule("head.dense.bias", "mlm.b", head=True),
        rule("head.norm.weight", "mlm.norm.scale", head=True),
        rule("head.norm.bias", "mlm.norm.bias", head=True),
        rule("decoder.bias", "mlm.vocab_bias", head=True),
    ]
    if cfg.head == "mlm":
        out.append(rule("decoder.weight", "embed.tokens", head=True, tied=True))
    return out
