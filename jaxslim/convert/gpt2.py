"""GPT-2 (``GPT2LMHeadModel``, ``GPT2Model``) <-> jaxslim: key map and config mapping.

GPT-2 uses ``Conv1D`` layers whose weights are stored ``[in, out]`` already, so nothing is
transposed; ``c_attn`` holds q, k and v side by side and is split into three. The LM head is tied to
``wte`` unless the config says ``tie_word_embeddings=false``. The original OpenAI checkpoints name
the backbone without the ``transformer.`` prefix; both spellings load.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert.rules import (
    CONV_FROM_HEADS,
    CONV_QKV,
    CONV_QKV_BIAS,
    LINEAR,
    Rule,
    encoder_flags,
    rule,
    token_fields,
    token_ids,
)

ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
MODEL_TYPE = "gpt2"
HF_CONFIG = "GPT2Config"
PREFIX = "transformer."
# causal-mask buffers that old transformers versions saved with every attention layer
IGNORE = (r"(^|\.)attn\.(masked_)?bias$",)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
ACTIVATIONS_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

B = "stack.blocks.{i}."
H = "h.{i}."


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes (the bare ``GPT2Model`` has none)."""
    return "" if architecture == "GPT2Model" else PREFIX


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a GPT-2 ``config.json``.

    Args:
        hf: the ``config.json`` dict.
        architecture: one of ``ARCHITECTURES``.
        tensor_names: unused (the config says everything).

    Raises:
        ValueError: an attention variant jaxslim's GPT-2 does not compute.
        KeyError: a required field is absent.
    """
    del tensor_names
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf.get(flag):
            raise ValueError(
                f"GPT-2 {flag}=True is not supported by jaxslim (it changes how attention is computed); "
                f"only the standard GPT-2 attention converts"
            )
    if not hf.get("scale_attn_weights", True):
        raise ValueError(
            "GPT-2 scale_attn_weights=False is not supported by jaxslim (scores are always scaled)"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"GPT-2 activation_function={act!r} is not supported; supported: {sorted(ACTIVATIONS)}"
        )
    d = hf["n_embd"]
    return ModelConfig.gpt2(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d,  # HF's default when n_inner is null
        max_len=hf.get("n_positions", 1024),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=ACTIVATIONS[act],
        head="lm" if architecture == "GPT2LMHeadModel" else "none",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        **token_ids({"bos_token_id": 50256, "eos_token_id": 50256, **hf}),  # GPT2Config's defaults
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``GPT2Config`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF GPT-2 cannot express.
    """
    problems = []
    if cfg.head == "mlm":
        problems.append("head='mlm'")
    if not (cfg.attn_bias and cfg.mlp_bias):
        problems.append("attn_bias/mlp_bias=False (HF GPT-2 always has biases)")
    if cfg.activation not in ACTIVATIONS_TO_HF:
        problems.append(f"activation={cfg.activation!r}")
    if cfg.n_kv_heads not in (None, cfg.n_heads) or cfg.head_dim not in (None, cfg.d_model // cfg.n_heads):
        problems.append("grouped-query heads or a head_dim other than d_model / n_heads")
    if cfg.rope or cfg.parallel_residual:
        problems.append("rotary=True / parallel_residual=True (that is GPT-NeoX: set hf_family='gpt_neox')")
    for name in ("sliding_window", "attn_softcap", "logit_softcap", "attn_scale_dim"):
        if getattr(cfg, name) is not None:
            problems.append(f"{name}={getattr(cfg, name)!r} (HF GPT-2 has no such option)")
    if cfg.post_norms or not cfg.input_norms or cfg.attn_bias != cfg.out_bias:
        problems.append("post_norms, input_norms=False or attn_out_bias (HF GPT-2 has none of them)")
    problems += encoder_flags(cfg, "GPT-2")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face GPT-2: " + "; ".join(problems))
    arch = "GPT2LMHeadModel" if cfg.head == "lm" else "GPT2Model"
    return arch, dict(
        vocab_size=cfg.vocab_size,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        n_positions=cfg.max_len,
        layer_norm_epsilon=cfg.norm_eps,
        activation_function=ACTIVATIONS_TO_HF[cfg.activation],
        tie_word_embeddings=cfg.tie_embeddings,
        **token_fields(cfg),
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a GPT-2 model described by ``cfg``."""
    out = [
        rule("wte.weight", "embed.tokens"),
        rule("wpe.weight", "embed.positions"),
        rule(H + "ln_1.weight", B + "attn_norm.scale"),
        rule(H + "ln_1.bias", B + "attn_norm.bias"),
        rule(H + "attn.c_attn.weight", B + "attn.wq", B + "attn.wk", B + "attn.wv", transform=CONV_QKV),
        rule(H + "attn.c_attn.bias", B + "attn.bq", B + "attn.bk", B + "attn.bv", transform=CONV_QKV_BIAS),
        rule(H + "attn.c_proj.weight", B + "attn.wo", transform=CONV_FROM_HEADS),
        rule(H + "attn.c_proj.bias", B + "attn.bo"),
        rule(H + "ln_2.weight", B + "mlp_norm.scale"),
        rule(H + "ln_2.bias", B + "mlp_norm.bias"),
        rule(H + "mlp.c_fc.weight", B + "mlp.wi"),
        rule(H + "mlp.c_fc.bias", B + "mlp.bi"),
        rule(H + "mlp.c_proj.weight", B + "mlp.wo"),
        rule(H + "mlp.c_proj.bias", B + "mlp.bo"),
        rule("ln_f.weight", "final_norm.scale"),
        rule("ln_f.bias", "final_norm.bias"),
    ]
    if cfg.head == "lm" and cfg.tie_embeddings:
        out.append(rule("lm_head.weight", "embed.tokens", head=True, tied=True))
    elif cfg.head == "lm":
        # an untied head is an nn.Linear [vocab, d], not a Conv1D
        out.append(rule("lm_head.weight", "lm_head", transform=LINEAR, head=True))
    return out
