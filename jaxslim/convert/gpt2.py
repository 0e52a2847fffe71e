"""GPT-2 (``GPT2LMHeadModel``, ``GPT2Model``) <-> jaxslim key map and config mapping.

GPT-2 uses ``Conv1D`` layers whose weights are stored ``[in, out]`` already, so nothing is
transposed; ``c_attn`` holds q, k and v side by side and is split into three.
"""

from __future__ import annotations

from jaxslim.config import ModelConfig
from jaxslim.convert.rules import CONV_FROM_HEADS, CONV_QKV, CONV_QKV_BIAS, Rule, rule

ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
MODEL_TYPE = "gpt2"
PREFIX = "transformer."
# causal-mask buffers of old checkpoints, and the LM head that is tied to wte
IGNORE = (r"(^|\.)attn\.(masked_)?bias$", r"^lm_head\.weight$")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}

B = "stack.blocks.{i}."
H = "h.{i}."


def config_from_hf(hf: dict, architecture: str) -> ModelConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise ValueError(
                f"GPT-2 {flag}=True is not supported by jaxslim (it changes the attention scores)"
            )
    if not hf.get("scale_attn_weights", True):
        raise ValueError("GPT-2 scale_attn_weights=False is not supported by jaxslim")
    if not hf.get("tie_word_embeddings", True):
        raise ValueError("GPT-2 with an untied LM head (tie_word_embeddings=False) is not supported")
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
        d_ff=hf.get("n_inner") or 4 * d,
        max_len=hf.get("n_positions", 1024),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=ACTIVATIONS[act],
        head="lm" if architecture == "GPT2LMHeadModel" else "none",
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    inv = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
    arch = "GPT2LMHeadModel" if cfg.head == "lm" else "GPT2Model"
    return arch, dict(
        vocab_size=cfg.vocab_size,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        n_positions=cfg.max_len,
        layer_norm_epsilon=cfg.norm_eps,
        activation_function=inv[cfg.activation],
        tie_word_embeddings=True,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    return [
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
