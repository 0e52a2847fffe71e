"""Phi-3 / Phi-3.5 / Phi-4-mini (``Phi3ForCausalLM``) <-> jaxslim: key map and config mapping.

A Phi-3 is a Llama whose q, k and v projections are one fused ``self_attn.qkv_proj`` (rows: q,
then k, then v) and whose gate and up projections are one ``mlp.gate_up_proj`` (gate rows, then
up rows): the fused tensors are split on load and fused again on save. Phi-3-mini-4k attends
within a ``sliding_window`` on every layer; Phi-3.5 / Phi-4-mini rotate only a
``partial_rotary_factor`` of each head. The 128k variants' ``longrope`` scaling (which Phi-3 also
calls ``su`` or ``yarn``) is refused by name.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama
from jaxslim.convert.rules import LINEAR, LINEAR_FROM_HEADS, LINEAR_GATE_UP, LINEAR_QKV, Rule, rule

ARCHITECTURES = ("Phi3ForCausalLM",)
MODEL_TYPE = "phi3"
HF_CONFIG = "Phi3Config"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

B = "stack.blocks.{i}."
L = "layers.{i}."

# Phi3Config's defaults, for config.json files that leave a field out
_DEFAULTS = dict(
    max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=32000, pad_token_id=32000
)


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Phi-3 ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named), e.g. ``longrope``.
        KeyError: a required field is absent.
    """
    del architecture, tensor_names
    hf = {**_DEFAULTS, **hf}
    kind = llama.rope_parameters(hf, family="Phi-3")["rope_type"]
    if kind in ("su", "yarn", "longrope"):
        raise ValueError(
            f"Phi-3 rope type {kind!r} (transformers computes it as 'longrope', the 128k variants' "
            "scaling) is not supported"
        )
    return ModelConfig.llama(
        **llama.decoder_config(hf, "Phi-3", max_len=4096, norm_eps=1e-5, theta=10000.0, partial=True),
        sliding_window=hf.get("sliding_window"),
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Phi3Config`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Phi-3 cannot express (all of it named).
    """
    problems = llama.expressible(cfg, "Phi-3", sliding_window=True, partial_rotary=True)
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Phi-3: " + "; ".join(problems))
    fields = llama.decoder_fields(cfg)
    return ARCHITECTURES[0], dict(
        fields,
        sliding_window=cfg.sliding_window,
        original_max_position_embeddings=cfg.max_len,
        partial_rotary_factor=float(cfg.partial_rotary_factor),
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Phi-3 model described by ``cfg``."""
    out = [
        rule("embed_tokens.weight", "embed.tokens"),
        rule(
            L + "self_attn.qkv_proj.weight", B + "attn.wq", B + "attn.wk", B + "attn.wv", transform=LINEAR_QKV
        ),
        rule(L + "self_attn.o_proj.weight", B + "attn.wo", transform=LINEAR_FROM_HEADS),
        rule(L + "mlp.gate_up_proj.weight", B + "mlp.wi", B + "mlp.wu", transform=LINEAR_GATE_UP),
        rule(L + "mlp.down_proj.weight", B + "mlp.wo", transform=LINEAR),
        rule(L + "input_layernorm.weight", B + "attn_norm.scale"),
        rule(L + "post_attention_layernorm.weight", B + "mlp_norm.scale"),
        rule("norm.weight", "final_norm.scale"),
    ]
    if cfg.tie_embeddings:
        out.append(rule("lm_head.weight", "embed.tokens", head=True, tied=True))
    else:
        out.append(rule("lm_head.weight", "lm_head", transform=LINEAR, head=True))
    return out
