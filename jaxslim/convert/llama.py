"""Llama (``LlamaForCausalLM``) <-> jaxslim: key map and config mapping.

Hugging Face stores the q/k projections already permuted for the rotate-half RoPE that jaxslim
uses, so no permutation is needed: projections are transposed and split into heads. Grouped-query
attention, tied or untied heads, ``attention_bias`` and ``mlp_bias`` convert; RoPE scaling does not.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert.rules import HEADS_BIAS, LINEAR, LINEAR_FROM_HEADS, LINEAR_TO_HEADS, Rule, rule

ARCHITECTURES = ("LlamaForCausalLM",)
MODEL_TYPE = "llama"
HF_CONFIG = "LlamaConfig"
PREFIX = "model."
IGNORE = (r"rotary_emb\.inv_freq$",)  # RoPE frequency buffer of old checkpoints

B = "stack.blocks.{i}."
L = "layers.{i}."


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


def rope_theta(hf: dict, *, default: float = 10000.0, family: str = "Llama") -> float:
    """The RoPE base of a Llama-style config: transformers 5's ``rope_parameters`` or the older
    ``rope_theta`` / ``rope_scaling`` fields; ``default`` when it names none.

    Raises:
        ValueError: a RoPE scaling type (linear, dynamic, yarn, llama3, ...) jaxslim does not compute.
    """
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"{family} rope_parameters={params!r} is not supported; only one plain RoPE")
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(
            f"{family} rope type {kind!r} is not supported; jaxslim computes only plain RoPE ('default'), "
            f"without position scaling"
        )
    return float(params.get("rope_theta") or hf.get("rope_theta") or default)


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Llama ``config.json``.

    Args:
        hf: the ``config.json`` dict.
        architecture: one of ``ARCHITECTURES``.
        tensor_names: unused (the config says everything).

    Raises:
        ValueError: a feature jaxslim's Llama does not have.
        KeyError: a required field is absent.
    """
    del architecture, tensor_names
    return ModelConfig.llama(
        **decoder_config(hf, "Llama", max_len=2048, norm_eps=1e-6, theta=10000.0),
        attn_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


def decoder_config(hf: dict, family: str, *, max_len: int, norm_eps: float, theta: float) -> dict:
    """The :meth:`ModelConfig.llama` arguments Llama-style decoders (Llama, Mixtral) share, read from
    ``config.json`` with the family's defaults for absent fields.

    Raises:
        ValueError: an activation other than silu, or RoPE scaling.
        KeyError: a required field is absent.
    """
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{family} hidden_act={hf['hidden_act']!r} is not supported; only 'silu'")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    return dict(
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
        rope_theta=rope_theta(hf, default=theta, family=family),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        pad_token_id=hf.get("pad_token_id"),
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``LlamaConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Llama cannot express.
    """
    problems = []
    if cfg.head != "lm":
        problems.append(f"head={cfg.head!r} (LlamaForCausalLM has an LM head)")
    if cfg.activation != "silu":
        problems.append(f"activation={cfg.activation!r} (HF Llama's SwiGLU uses silu here)")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Llama: " + "; ".join(problems))
    return "LlamaForCausalLM", dict(
        decoder_fields(cfg), attention_bias=cfg.attn_bias, mlp_bias=cfg.mlp_bias, intermediate_size=cfg.d_ff
    )


def decoder_fields(cfg: ModelConfig) -> dict:
    """The config fields Llama-style decoders (Llama, Mixtral) share, with ``intermediate_size``
    the width of one FFN (one expert's for a mixture)."""
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
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        rope_theta=float(cfg.rope_theta),  # what transformers 4 reads; 5 reads rope_parameters
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        pad_token_id=cfg.pad_token_id,
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
    if cfg.tie_embeddings:
        # some tied checkpoints still carry a copy of the embedding table as lm_head.weight
        out.append(rule("lm_head.weight", "embed.tokens", head=True, tied=True))
    else:
        out.append(rule("lm_head.weight", "lm_head", transform=LINEAR, head=True))
    return out
