"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``, ``GPTNeoXModel``) <-> jaxslim.

A GPT-NeoX is a GPT-2-style decoder (LayerNorm with biases, a plain GELU FFN with biases) with
rotary positions on the leading ``partial_rotary_factor`` of each head (``rotary_pct``, 0.25 for
Pythia) and, by default, a parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``: in jaxslim
``ModelConfig.gpt2(rotary=True, parallel_residual=True, partial_rotary_factor=...)``. The fused
``attention.query_key_value`` holds each head's q, k and v rows together and is split per head;
the output head ``embed_out`` is untied unless ``tie_word_embeddings``.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama
from jaxslim.convert.rules import (
    INTERLEAVED_QKV,
    LINEAR,
    LINEAR_FROM_HEADS,
    Rule,
    encoder_flags,
    rule,
    token_fields,
    token_ids,
)

ARCHITECTURES = ("GPTNeoXForCausalLM", "GPTNeoXModel")
MODEL_TYPE = "gpt_neox"
HF_CONFIG = "GPTNeoXConfig"
PREFIX = "gpt_neox."
# buffers of older checkpoints: causal masks and RoPE frequencies
IGNORE = (r"attention\.(masked_)?bias$", r"rotary_emb\.inv_freq$")
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}

B = "stack.blocks.{i}."
L = "layers.{i}."

_DEFAULTS = dict(
    max_position_embeddings=2048,
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=2,
    use_parallel_residual=True,
    attention_bias=True,
    tie_word_embeddings=False,
    hidden_act="gelu",
)


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes (the bare ``GPTNeoXModel`` has none)."""
    return "" if architecture == "GPTNeoXModel" else PREFIX


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a GPT-NeoX ``config.json`` (rotary settings in either form:
    ``rope_parameters`` or the older ``rotary_pct`` / ``rotary_emb_base``).

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    hf = {**_DEFAULTS, **hf}
    act = hf["hidden_act"]
    if act not in ACTIVATIONS:
        raise ValueError(f"GPT-NeoX hidden_act={act!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    rope = dict(hf)
    if "rotary_pct" in hf and "partial_rotary_factor" not in hf:
        rope["partial_rotary_factor"] = hf["rotary_pct"]
    elif (
        "partial_rotary_factor" not in llama.rope_parameters(hf, family="GPT-NeoX")
        and "partial_rotary_factor" not in hf
    ):
        rope["partial_rotary_factor"] = 0.25  # GPTNeoXConfig's default
    theta, scaling = llama.rope_from_hf(
        rope, default=float(hf.get("rotary_emb_base") or 10000.0), family="GPT-NeoX", partial=True
    )
    heads = hf["num_attention_heads"]
    return ModelConfig.gpt2(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        d_ff=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"],
        norm_eps=hf["layer_norm_eps"],
        activation=ACTIVATIONS[act],
        head="lm" if architecture == "GPTNeoXForCausalLM" else "none",
        tie_embeddings=bool(hf["tie_word_embeddings"]),
        attn_bias=bool(hf["attention_bias"]),
        rotary=True,
        rope_theta=theta,
        rope_scaling=scaling,
        partial_rotary_factor=llama.partial_rotary_factor(rope),
        parallel_residual=bool(hf["use_parallel_residual"]),
        hf_family=MODEL_TYPE,
        **token_ids(hf),
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``GPTNeoXConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF GPT-NeoX cannot express (all of it named).
    """
    problems = []
    if cfg.arch != "gpt2" or not cfg.rope:
        problems.append(
            f"arch={cfg.arch!r}, rotary={cfg.rotary} (GPT-NeoX is a GPT-2-style decoder with RoPE)"
        )
    if cfg.head == "mlm":
        problems.append("head='mlm'")
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    if not cfg.mlp_bias:
        problems.append("mlp_bias=False (GPT-NeoX's FFN always has biases)")
    if cfg.attn_bias != cfg.out_bias:
        problems.append(f"attn_out_bias={cfg.attn_out_bias} (GPT-NeoX's attention_bias covers q, k, v and o)")
    if cfg.n_kv_heads not in (None, cfg.n_heads) or cfg.head_dim not in (None, cfg.d_model // cfg.n_heads):
        problems.append("grouped-query heads or a head_dim other than d_model / n_heads")
    for name in ("sliding_window", "attn_softcap", "logit_softcap", "attn_scale_dim"):
        if getattr(cfg, name) is not None:
            problems.append(f"{name}={getattr(cfg, name)!r}")
    if cfg.qk_norm or cfg.post_norms or cfg.moe is not None:
        problems.append("q/k norms, post_norms or experts")
    problems += encoder_flags(cfg, "GPT-NeoX")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face GPT-NeoX: " + "; ".join(problems))
    arch = "GPTNeoXForCausalLM" if cfg.head == "lm" else "GPTNeoXModel"
    return arch, dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        hidden_act=ACTIVATIONS_TO_HF[cfg.activation],
        max_position_embeddings=cfg.max_len,
        layer_norm_eps=cfg.norm_eps,
        use_parallel_residual=cfg.parallel_residual,
        attention_bias=cfg.attn_bias,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters=llama.rope_to_hf(cfg) | {"partial_rotary_factor": float(cfg.partial_rotary_factor)},
        **token_fields(cfg),
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a GPT-NeoX model described by ``cfg``."""
    out = [
        rule("embed_in.weight", "embed.tokens"),
        rule(L + "input_layernorm.weight", B + "attn_norm.scale"),
        rule(L + "input_layernorm.bias", B + "attn_norm.bias"),
        rule(
            L + "attention.query_key_value.weight",
            B + "attn.wq",
            B + "attn.wk",
            B + "attn.wv",
            transform=INTERLEAVED_QKV,
        ),
        rule(
            L + "attention.query_key_value.bias",
            B + "attn.bq",
            B + "attn.bk",
            B + "attn.bv",
            transform=INTERLEAVED_QKV,
        ),
        rule(L + "attention.dense.weight", B + "attn.wo", transform=LINEAR_FROM_HEADS),
        rule(L + "attention.dense.bias", B + "attn.bo"),
        rule(L + "post_attention_layernorm.weight", B + "mlp_norm.scale"),
        rule(L + "post_attention_layernorm.bias", B + "mlp_norm.bias"),
        rule(L + "mlp.dense_h_to_4h.weight", B + "mlp.wi", transform=LINEAR),
        rule(L + "mlp.dense_h_to_4h.bias", B + "mlp.bi"),
        rule(L + "mlp.dense_4h_to_h.weight", B + "mlp.wo", transform=LINEAR),
        rule(L + "mlp.dense_4h_to_h.bias", B + "mlp.bo"),
        rule("final_layer_norm.weight", "final_norm.scale"),
        rule("final_layer_norm.bias", "final_norm.bias"),
    ]
    if cfg.head == "lm" and cfg.tie_embeddings:
        out.append(rule("embed_out.weight", "embed.tokens", head=True, tied=True))
    elif cfg.head == "lm":
        out.append(rule("embed_out.weight", "lm_head", transform=LINEAR, head=True))
    return out
