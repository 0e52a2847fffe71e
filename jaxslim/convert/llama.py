"""Llama (``LlamaForCausalLM``) <-> jaxslim key map and config mapping.

Hugging Face stores q/k projections already permuted for the rotate-half RoPE that jaxslim uses,
so no permutation is needed.
"""

from __future__ import annotations

from jaxslim.config import ModelConfig
from jaxslim.convert.rules import HEADS_BIAS, LINEAR, LINEAR_FROM_HEADS, LINEAR_TO_HEADS, Rule, rule

ARCHITECTURES = ("LlamaForCausalLM",)
MODEL_TYPE = "llama"
PREFIX = "model."
IGNORE = (r"rotary_emb\.inv_freq$",)

B = "stack.blocks.{i}."
L = "layers.{i}."


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"Llama rope type {kind!r} is not supported; only plain RoPE ('default')")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, architecture: str) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama hidden_act={hf['hidden_act']!r} is not supported; only 'silu'")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    return ModelConfig.llama(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim if head_dim and head_dim != hf["hidden_size"] // heads else None,
        d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 2048),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attn_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        pad_token_id=hf.get("pad_token_id"),
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    return "LlamaForCausalLM", dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim_,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=cfg.attn_bias,
        mlp_bias=cfg.mlp_bias,
        hidden_act="silu",
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    out = [rule("embed_tokens.weight", "embed.tokens")]
    for proj, w in (("q", "q"), ("k", "k"), ("v", "v")):
        out += [
            rule(L + f"self_attn.{proj}_proj.weight", B + f"attn.w{w}", transform=LINEAR_TO_HEADS),
            rule(L + f"self_attn.{proj}_proj.bias", B + f"attn.b{w}", transform=HEADS_BIAS),
        ]
    out += [
        rule(L + "self_attn.o_proj.weight", B + "attn.wo", transform=LINEAR_FROM_HEADS),
        rule(L + "self_attn.o_proj.bias", B + "attn.bo"),
        rule(L + "mlp.gate_proj.weight", B + "mlp.wi", transform=LINEAR),
        rule(L + "mlp.gate_proj.bias", B + "mlp.bi"),
        rule(L + "mlp.up_proj.weight", B + "mlp.wu", transform=LINEAR),
        rule(L + "mlp.up_proj.bias", B + "mlp.bu"),
        rule(L + "mlp.down_proj.weight", B + "mlp.wo", transform=LINEAR),
        rule(L + "mlp.down_proj.bias", B + "mlp.bo"),
        rule(L + "input_layernorm.weight", B + "attn_norm.scale"),
        rule(L + "post_attention_layernorm.weight", B + "mlp_norm.scale"),
        rule("norm.weight", "final_norm.scale"),
        rule("lm_head.weight", "lm_head", transform=LINEAR, head=True),
    ]
    return out
