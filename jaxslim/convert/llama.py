"""Llama (``LlamaForCausalLM``) <-> jaxslim: key map and config mapping.

Hugging Face stores the q/k projections already permuted for the rotate-half RoPE that jaxslim
uses, so no permutation is needed: projections are transposed and split into heads. Grouped-query
attention, tied or untied heads, ``attention_bias``, ``mlp_bias`` and the RoPE scalings
``linear``, ``dynamic``, ``yarn`` and ``llama3`` (Llama 3.1+) convert, read from transformers 5's
``rope_parameters`` or the older ``rope_scaling`` + ``rope_theta`` that real checkpoints ship.
A ``sliding_window`` shorter than the context is refused: transformers' Llama ignores it, so a
"llamafied" Mistral would silently turn into a different model. The helpers here are shared by
the other Llama-style families (Mistral, Mixtral, Qwen2, Qwen3).
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig, RopeScaling
from jaxslim.convert.rules import (
    HEADS_BIAS,
    LINEAR,
    LINEAR_FROM_HEADS,
    LINEAR_TO_HEADS,
    Rule,
    encoder_flags,
    num_labels,
    rule,
    token_fields,
    token_ids,
)

ARCHITECTURES = ("LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaModel")
MODEL_TYPE = "llama"
HF_CONFIG = "LlamaConfig"
PREFIX = "model."
IGNORE = (r"rotary_emb\.inv_freq$",)  # RoPE frequency buffer of old checkpoints
HEADS = ("lm", "cls", "none")  # causal LM, *ForSequenceClassification, bare *Model

B = "stack.blocks.{i}."
L = "layers.{i}."


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes (the bare ``LlamaModel`` has none)."""
    return "" if architecture.endswith("Model") else PREFIX


def head_of(architecture: str, hf: dict) -> dict:
    """The ``head`` (and ``num_labels``) :class:`ModelConfig` fields of a Llama-style class name."""
    if architecture.endswith("ForSequenceClassification"):
        return dict(head="cls", num_labels=num_labels(hf))
    return dict(head="none") if architecture.endswith("Model") else dict(head="lm")


def head_to_hf(cfg: ModelConfig, family: str) -> tuple[str, dict]:
    """The class name of ``cfg``'s head in ``family`` (``"Llama"``) and its extra config fields."""
    if cfg.head == "cls":
        return f"{family}ForSequenceClassification", {"num_labels": cfg.num_labels}
    return (f"{family}Model", {}) if cfg.head == "none" else (f"{family}ForCausalLM", {})


_SCALING_FIELDS = {  # RopeScaling field -> Hugging Face rope_parameters key, per kind
    "linear": {"factor": "factor"},
    "dynamic": {"factor": "factor"},
    "llama3": {
        "factor": "factor",
        "original_max_len": "original_max_position_embeddings",
        "low_freq_factor": "low_freq_factor",
        "high_freq_factor": "high_freq_factor",
    },
    "yarn": {
        "factor": "factor",
        "original_max_len": "original_max_position_embeddings",
        "beta_fast": "beta_fast",
        "beta_slow": "beta_slow",
        "attention_factor": "attention_factor",
        "mscale": "mscale",
        "mscale_all_dim": "mscale_all_dim",
        "truncate": "truncate",
    },
}


def rope_parameters(hf: dict, *, family: str = "Llama") -> dict:
    """One flat dict of a config's RoPE settings, from transformers 5's ``rope_parameters`` or the
    older ``rope_scaling`` + ``rope_theta`` fields (the former wins where both name a key).

    Raises:
        ValueError: per-layer-type RoPE parameters (a nested dict), which this family does not have.
    """
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for name, d in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(d, dict) or any(isinstance(v, dict) for v in d.values()):
            raise ValueError(
                f"{family} {name}={d!r} is not supported; expected one flat dict of RoPE settings"
            )
    merged = {**scaling, **params}
    merged.setdefault("rope_type", merged.get("type") or "default")
    return merged


def rope_from_hf(
    hf: dict, *, default: float = 10000.0, family: str = "Llama", partial: bool = False
) -> tuple[float, RopeScaling | None]:
    """The RoPE base and scaling of a Llama-style config (either form, see :func:`rope_parameters`).

    Raises:
        ValueError: a RoPE type jaxslim does not compute (``longrope``, ...) or partial rotary
            embeddings, named.

    Example:
        >>> rope_from_hf({"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_theta": 500.0})
        (500.0, RopeScaling(kind='linear', factor=2.0, original_max_len=None, low_freq_factor=1.0, high_freq_factor=4.0, beta_fast=32.0, beta_slow=1.0, attention_factor=None, mscale=None, mscale_all_dim=None, truncate=True))
    """
    p = rope_parameters(hf, family=family)
    theta = float(p.get("rope_theta") or hf.get("rope_theta") or default)
    factor = partial_rotary_factor(hf)
    if factor != 1.0 and not partial:
        raise ValueError(
            f"{family} partial_rotary_factor={factor} is not supported; a {family} rotates the whole head"
        )
    kind = p["rope_type"]
    if kind == "default":
        return theta, None
    if kind not in _SCALING_FIELDS:
        raise ValueError(
            f"{family} rope type {kind!r} is not supported; jaxslim computes 'default' and the scalings "
            f"{sorted(_SCALING_FIELDS)}"
        )
    fields = {}
    for name, key in _SCALING_FIELDS[kind].items():
        value = p.get(key)
        if value is None and key == "original_max_position_embeddings":
            value = hf.get(key)
        if value is not None:
            fields[name] = value
    if kind == "yarn" and fields.get("factor") is None:  # as transformers: the context ratio
        fields["factor"] = hf["max_position_embeddings"] / fields.get(
            "original_max_len", hf["max_position_embeddings"]
        )
    if "factor" not in fields:
        raise ValueError(f"{family} rope type {kind!r} needs a 'factor', and the config has none")
    for name in ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow"):
        if name in fields:
            fields[name] = float(fields[name])
    if "original_max_len" in fields:
        fields["original_max_len"] = int(fields["original_max_len"])
    return theta, RopeScaling(kind, **fields)


def partial_rotary_factor(hf: dict) -> float:
    """The fraction of each head that RoPE rotates (``partial_rotary_factor`` in either place)."""
    p = rope_parameters(hf)
    factor = p.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    return 1.0 if factor is None else float(factor)


def rope_to_hf(cfg: ModelConfig) -> dict:
    """The ``rope_parameters`` dict of ``cfg`` (the inverse of :func:`rope_from_hf`)."""
    out: dict = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    if cfg.partial_rotary_factor != 1.0:
        out["partial_rotary_factor"] = float(cfg.partial_rotary_factor)
    s = cfg.rope_scaling
    if s is not None:
        out["rope_type"] = s.kind
        for name, key in _SCALING_FIELDS[s.kind].items():
            value = getattr(s, name)
            if name == "original_max_len" and value is None:
                value = cfg.max_len
            if value is not None:
                out[key] = value
    return out


def refuse_window(hf: dict, family: str, max_len: int) -> None:
    """Raises for a ``sliding_window`` shorter than the context in a family that ignores it.

    A "llamafied" Mistral keeps its ``sliding_window`` in ``config.json`` while transformers' Llama
    attends to every earlier token: loading it as full attention would silently change the model.
    """
    window = hf.get("sliding_window")
    if window is not None and hf.get("use_sliding_window", True) and window < max_len:
        raise ValueError(
            f"{family} config has sliding_window={window} (< max_position_embeddings={max_len}), which a "
            f"{family} does not compute: name the architecture that has the window (e.g. "
            "MistralForCausalLM, model_type 'mistral') to load it with the window, or remove "
            "sliding_window to load it with full attention as transformers' "
            f"{family} does"
        )


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Llama ``config.json``.

    Args:
        hf: the ``config.json`` dict.
        architecture: one of ``ARCHITECTURES``.
        tensor_names: unused (the config says everything).

    Raises:
        ValueError: a feature jaxslim's Llama does not have (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    hf = {**_DEFAULTS, **hf}
    refuse_window(hf, "LlamaForCausalLM", hf["max_position_embeddings"])
    return ModelConfig.llama(
        **head_of(architecture, hf),
        **decoder_config(hf, "Llama", max_len=2048, norm_eps=1e-6, theta=10000.0),
        attn_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


# LlamaConfig's defaults, for config.json files that leave a field out
_DEFAULTS = dict(max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)


def decoder_config(
    hf: dict,
    family: str,
    *,
    max_len: int,
    norm_eps: float,
    theta: float,
    partial: bool = False,
    activations: dict[str, str] | None = None,
    activation_field: str = "hidden_act",
    rope: bool = True,
) -> dict:
    """The :meth:`ModelConfig.llama` arguments Llama-style decoders share, read from
    ``config.json`` with the family's defaults for absent fields.

    Raises:
        ValueError: an activation other than silu, or a RoPE variant jaxslim does not compute.
        KeyError: a required field is absent.
    """
    activations = activations or {"silu": "silu"}
    act = hf.get(activation_field) or next(iter(activations))
    if act not in activations:
        raise ValueError(
            f"{family} {activation_field}={act!r} is not supported; supported: {sorted(activations)}"
        )
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    # a family with its own RoPE layout (Gemma 3's per-layer-type parameters) reads it itself
    theta, scaling = (
        rope_from_hf(hf, default=theta, family=family, partial=partial) if rope else (theta, None)
    )
    return dict(
        activation=activations[act],
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        # None keeps ModelConfig's own default (d_model // n_heads) when the config says the same
        head_dim=head_dim if head_dim and head_dim * heads != hf["hidden_size"] else None,
        d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", max_len),
        norm_eps=hf.get("rms_norm_eps", norm_eps),
        rope_theta=theta,
        rope_scaling=scaling,
        partial_rotary_factor=partial_rotary_factor(hf) if rope else 1.0,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **token_ids(hf),
    )


def expressible(cfg: ModelConfig, family: str, **allowed) -> list[str]:
    """What ``cfg`` uses that the Hugging Face ``family`` cannot express (empty when nothing).

    ``allowed`` switches on the features the family has: ``sliding_window``, ``sliding_layers``
    (a window on some layers only), ``qk_norm``, ``attn_bias``, ``out_bias``, ``mlp_bias``,
    ``moe``, ``partial_rotary``, and Gemma's ``norm_offset``, ``embed_scale``, ``post_norms``,
    ``attn_softcap``, ``logit_softcap``, ``attn_scale_dim``, ``local_rope_theta``;
    ``activation`` names the gate activation (default silu).
    """
    problems = []
    if cfg.arch != "llama":
        problems.append(f"arch={cfg.arch!r} ({family} is a Llama-style decoder)")
    if cfg.head not in allowed.get("heads", ("lm",)):
        problems.append(f"head={cfg.head!r} ({family}'s causal LM has an LM head)")
    act = allowed.get("activation", "silu")
    if cfg.activation != act:
        problems.append(f"activation={cfg.activation!r} ({family}'s gated FFN uses {act})")
    checks = [
        ("sliding_window", cfg.sliding_window is not None, "sliding window"),
        ("sliding_layers", cfg.sliding_layers is not None, "sliding window on some layers only"),
        ("qk_norm", cfg.qk_norm, "q/k RMSNorm"),
        ("attn_bias", cfg.attn_bias, "q/k/v projection biases"),
        ("out_bias", cfg.out_bias, "attention output bias"),
        ("mlp_bias", cfg.mlp_bias, "FFN biases"),
        ("moe", cfg.moe is not None, "mixture-of-experts FFNs"),
    ]
    if cfg.partial_rotary_factor != 1.0 and not allowed.get("partial_rotary", False):
        problems.append(
            f"partial_rotary_factor={cfg.partial_rotary_factor} ({family} rotates the whole head)"
        )
    gemma = {
        "norm_offset": (cfg.norm_offset != 0, "RMSNorm scaled by 1 + w"),
        "embed_scale": (cfg.embed_scale, "embedding scale sqrt(d_model)"),
        "post_norms": (cfg.post_norms, "normalised sublayer outputs"),
        "attn_softcap": (cfg.attn_softcap is not None, "attention soft-capping"),
        "logit_softcap": (cfg.logit_softcap is not None, "logit soft-capping"),
        "attn_scale_dim": (cfg.attn_scale_dim is not None, "query_pre_attn_scalar"),
        "local_rope_theta": (cfg.local_rope_theta is not None, "separate RoPE base for local layers"),
        "input_norms": (not cfg.input_norms, "blocks without input norms"),
        "qk_norm_scope": (cfg.qk_norm and cfg.qk_norm_scope == "layer", "q/k norm over all heads together"),
    }
    checks += [(name, used, what) for name, (used, what) in gemma.items()]
    for name, used, what in checks:
        if used and not allowed.get(name, False):
            field = {"out_bias": "attn_out_bias", "sliding_layers": "sliding_layers"}.get(name, name)
            problems.append(f"{field}={getattr(cfg, field)!r} ({family} has no {what})")
    return problems + encoder_flags(cfg, family)


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``LlamaConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Llama cannot express (all of it named).
    """
    problems = expressible(cfg, "Llama", attn_bias=True, out_bias=True, mlp_bias=True, heads=HEADS)
    if cfg.attn_bias != cfg.out_bias:
        problems.append(
            f"attn_bias={cfg.attn_bias} with attn_out_bias={cfg.attn_out_bias} (Llama's attention_bias "
            "covers q, k, v and o together; Qwen2 has biases on q/k/v only)"
        )
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Llama: " + "; ".join(problems))
    arch, extra = head_to_hf(cfg, "Llama")
    return arch, dict(
        decoder_fields(cfg),
        **extra,
        attention_bias=cfg.attn_bias,
        mlp_bias=cfg.mlp_bias,
        intermediate_size=cfg.d_ff,
    )


def decoder_fields(cfg: ModelConfig) -> dict:
    """The config fields Llama-style decoders share, with ``intermediate_size`` the width of one
    FFN (one expert's for a mixture)."""
    rope = rope_to_hf(cfg)
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim_,
        intermediate_size=cfg.expert_ffn,
        max_position_embeddings=cfg.max_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters=rope,
        rope_theta=float(cfg.rope_theta),  # what transformers 4 reads; 5 reads rope_parameters
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        **token_fields(cfg),
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Llama model described by ``cfg``."""
    return common_rules(cfg) + [
        rule(L + "mlp.gate_proj.weight", B + "mlp.wi", transform=LINEAR),
        rule(L + "mlp.gate_proj.bias", B + "mlp.bi"),
        rule(L + "mlp.up_proj.weight", B + "mlp.wu", transform=LINEAR),
        rule(L + "mlp.up_proj.bias", B + "mlp.bu"),
        rule(L + "mlp.down_proj.weight", B + "mlp.wo", transform=LINEAR),
        rule(L + "mlp.down_proj.bias", B + "mlp.bo"),
    ]


def common_rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of everything but the FFNs (embeddings, attention, norms, output head) of a
    Llama-style decoder described by ``cfg``; Mixtral shares it."""
    out = [rule("embed_tokens.weight", "embed.tokens")]
    for proj in ("q", "k", "v"):
        out += [
            rule(L + f"self_attn.{proj}_proj.weight", B + f"attn.w{proj}", transform=LINEAR_TO_HEADS),
            rule(L + f"self_attn.{proj}_proj.bias", B + f"attn.b{proj}", transform=HEADS_BIAS),
        ]
    out += [
        rule(L + "self_attn.o_proj.weight", B + "attn.wo", transform=LINEAR_FROM_HEADS),
        rule(L + "self_attn.o_proj.bias", B + "attn.bo"),
        rule(L + "input_layernorm.weight", B + "attn_norm.scale"),
        rule(L + "post_attention_layernorm.weight", B + "mlp_norm.scale"),
        rule("norm.weight", "final_norm.scale"),
    ]
    if cfg.head == "cls":  # *ForSequenceClassification's `score`, without a bias
        out.append(rule("score.weight", "cls_w", transform=LINEAR, head=True))
    elif cfg.head == "lm" and cfg.tie_embeddings:
        # some tied checkpoints still carry a copy of the embedding table as lm_head.weight
        out.append(rule("lm_head.weight", "embed.tokens", head=True, tied=True))
    elif cfg.head == "lm":
        out.append(rule("lm_head.weight", "lm_head", transform=LINEAR, head=True))
    return out
