"""Gemma (``GemmaForCausalLM``) <-> jaxslim, and what Gemma 2 and Gemma 3 share with it.

A Gemma is a Llama-style decoder with three differences, all ``ModelConfig`` flags:

* RMSNorm multiplies by ``1 + w`` (``norm_offset=1.0``: the stored scales are used as they are);
* token embeddings are multiplied by ``sqrt(d_model)`` (``embed_scale=True``);
* the gated FFN uses tanh-approximated GELU (``activation="gelu_tanh"``; the legacy
  ``hidden_act="gelu"`` of the first releases means the same, as in transformers).

Gemma 2 (:mod:`~jaxslim.convert.gemma2`) adds normalised sublayer outputs, soft-capping and
alternating local/global layers; Gemma 3 (:mod:`~jaxslim.convert.gemma3`) q/k norms and a separate
RoPE base for the local layers.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama
from jaxslim.convert.rules import Rule, rule

ARCHITECTURES = ("GemmaForCausalLM",)
MODEL_TYPE = "gemma"
HF_CONFIG = "GemmaConfig"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

B = "stack.blocks.{i}."
L = "layers.{i}."
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh", "gelu_tanh": "gelu_tanh"}

# GemmaConfig's defaults (Gemma 2 and 3 share them), for config.json files that leave a field out
DEFAULTS = dict(
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    head_dim=256,
    tie_word_embeddings=True,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


def refuse_bidirectional(hf: dict, family: str) -> None:
    """Raises for ``use_bidirectional_attention`` (embedding models built on a Gemma)."""
    if hf.get("use_bidirectional_attention"):
        raise ValueError(
            f"{family} use_bidirectional_attention=True is not supported; jaxslim's Gemma is a causal decoder"
        )


def gemma_config(hf: dict, family: str, *, activation_field: str, rope: bool = True, **extra) -> ModelConfig:
    """The :class:`ModelConfig` of any Gemma generation: Llama-style fields plus Gemma's flags."""
    refuse_bidirectional(hf, family)
    if hf.get("attention_bias"):
        raise ValueError(f"{family} attention_bias=True is not supported; released Gemmas have no biases")
    decoder = llama.decoder_config(
        hf,
        family,
        max_len=8192,
        norm_eps=1e-6,
        theta=10000.0,
        activations=ACTIVATIONS,
        activation_field=activation_field,
        rope=rope,
    )
    decoder.update(extra)
    return ModelConfig.llama(**decoder, norm_offset=1.0, embed_scale=True)


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Gemma ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del architecture, tensor_names
    return gemma_config({**DEFAULTS, **hf}, "Gemma", activation_field="hidden_act", hf_family=MODEL_TYPE)


def expressible(cfg: ModelConfig, family: str, **allowed) -> list[str]:
    """What ``cfg`` uses that the Gemma generation ``family`` cannot express; Gemma's own flags
    must be on."""
    problems = llama.expressible(
        cfg, family, activation="gelu_tanh", norm_offset=True, embed_scale=True, **allowed
    )
    if cfg.norm_offset != 1.0:
        problems.append(f"norm_offset={cfg.norm_offset} ({family}'s RMSNorm multiplies by 1 + w)")
    if not cfg.embed_scale:
        problems.append(f"embed_scale=False ({family} scales embeddings by sqrt(d_model))")
    return problems


def fields(cfg: ModelConfig) -> dict:
    """The config fields every Gemma generation writes."""
    out = llama.decoder_fields(cfg)
    del out["hidden_act"]
    return dict(out, attention_bias=False)


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``GemmaConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Gemma cannot express (all of it named).
    """
    problems = expressible(cfg, "Gemma")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Gemma: " + "; ".join(problems))
    return ARCHITECTURES[0], dict(fields(cfg), hidden_act="gelu_pytorch_tanh")


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Gemma model described by ``cfg`` (Llama's names)."""
    return llama.rules(cfg)


def sandwich_rules(cfg: ModelConfig) -> list[Rule]:
    """Gemma 2 / 3's key map: Llama's names, except that ``post_attention_layernorm`` normalises the
    attention output and ``pre_feedforward_layernorm`` / ``post_feedforward_layernorm`` surround the
    FFN."""
    out = []
    for r in llama.rules(cfg):
        if r.hf == L + "post_attention_layernorm.weight":
            out += [
                rule(L + "post_attention_layernorm.weight", B + "post_attn_norm.scale"),
                rule(L + "pre_feedforward_layernorm.weight", B + "mlp_norm.scale"),
                rule(L + "post_feedforward_layernorm.weight", B + "post_mlp_norm.scale"),
            ]
        else:
            out.append(r)
    return out
