"""OLMo 2 (``Olmo2ForCausalLM``) <-> jaxslim: key map and config mapping.

An OLMo 2 block normalises sublayer outputs instead of inputs: ``x + norm(attn(x))`` then
``x + norm(mlp(x))`` (``ModelConfig(input_norms=False, post_norms=True)``; the norms are
``post_attention_layernorm`` and ``post_feedforward_layernorm``), and queries and keys pass an
RMSNorm over all heads together before RoPE (``qk_norm=True, qk_norm_scope="layer"``:
``self_attn.q_norm.weight`` ``[heads * head_dim]`` becomes a ``[heads, head_dim]`` scale).
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama
from jaxslim.convert.rules import HEADS_BIAS, Rule, rule

ARCHITECTURES = ("Olmo2ForCausalLM",)
MODEL_TYPE = "olmo2"
HF_CONFIG = "Olmo2Config"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

B = "stack.blocks.{i}."
L = "layers.{i}."

# Olmo2Config's defaults, for config.json files that leave a field out
_DEFAULTS = dict(
    max_position_embeddings=2048, rms_norm_eps=1e-5, pad_token_id=1, bos_token_id=None, eos_token_id=50279
)


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of an OLMo 2 ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del architecture, tensor_names
    hf = {**_DEFAULTS, **hf}
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig.llama(
        **llama.decoder_config(hf, "OLMo 2", max_len=2048, norm_eps=1e-5, theta=10000.0),
        attn_bias=bias,
        input_norms=False,
        post_norms=True,
        qk_norm=True,
        qk_norm_scope="layer",
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Olmo2Config`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF OLMo 2 cannot express (all of it named).
    """
    problems = llama.expressible(
        cfg,
        "OLMo 2",
        qk_norm=True,
        qk_norm_scope=True,
        input_norms=True,
        post_norms=True,
        attn_bias=True,
        out_bias=True,
    )
    wanted = dict(input_norms=False, post_norms=True, qk_norm=True, qk_norm_scope="layer")
    problems += [
        f"{k}={getattr(cfg, k)!r} (OLMo 2 has {k}={v!r})" for k, v in wanted.items() if getattr(cfg, k) != v
    ]
    if cfg.attn_bias != cfg.out_bias:
        problems.append(f"attn_out_bias={cfg.attn_out_bias} (OLMo 2's attention_bias covers q, k, v and o)")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face OLMo 2: " + "; ".join(problems))
    return ARCHITECTURES[0], dict(llama.decoder_fields(cfg), attention_bias=cfg.attn_bias)


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of an OLMo 2 model described by ``cfg``."""
    out = []
    for r in llama.rules(cfg):
        if r.hf == L + "input_layernorm.weight":
            continue  # OLMo 2 has no input norms
        if r.hf == L + "post_attention_layernorm.weight":
            out += [
                rule(L + "post_attention_layernorm.weight", B + "post_attn_norm.scale"),
                rule(L + "post_feedforward_layernorm.weight", B + "post_mlp_norm.scale"),
            ]
        else:
            out.append(r)
    return out + [
        rule(L + "self_attn.q_norm.weight", B + "attn.q_norm.scale", transform=HEADS_BIAS),
        rule(L + "self_attn.k_norm.weight", B + "attn.k_norm.scale", transform=HEADS_BIAS),
    ]
