"""Qwen3 (``Qwen3ForCausalLM``) <-> jaxslim: a Llama-style decoder with q/k RMSNorm.

See :mod:`~jaxslim.convert.qwen2` for what Qwen2 and Qwen3 share (names, sliding windows). The
q/k norms are ``layers.{i}.self_attn.q_norm.weight`` / ``k_norm.weight`` ``[head_dim]``, applied to
each head's query and key before RoPE (``ModelConfig.qk_norm``).
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama, qwen2
from jaxslim.convert.rules import Rule, rule

ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen3ForSequenceClassification", "Qwen3Model")
MODEL_TYPE = "qwen3"
HF_CONFIG = "Qwen3Config"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE


prefix_for = llama.prefix_for


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Qwen3 ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    hf = {**qwen2.DEFAULTS, "head_dim": 128, **hf}
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig.llama(
        **llama.head_of(architecture, hf),
        **llama.decoder_config(hf, "Qwen3", max_len=32768, norm_eps=1e-6, theta=10000.0),
        **qwen2.window_from_hf(hf, "Qwen3"),
        attn_bias=bias,
        qk_norm=True,
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Qwen3Config`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Qwen3 cannot express (all of it named).
    """
    problems = llama.expressible(
        cfg,
        "Qwen3",
        sliding_window=True,
        sliding_layers=True,
        qk_norm=True,
        attn_bias=True,
        out_bias=True,
        heads=llama.HEADS,
    )
    if not cfg.qk_norm:
        problems.append("qk_norm=False (Qwen3 always normalises queries and keys)")
    if cfg.attn_bias != cfg.out_bias:
        problems.append(
            f"attn_bias={cfg.attn_bias} with attn_out_bias={cfg.attn_out_bias} (Qwen3's attention_bias covers "
            "q, k, v and o together)"
        )
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Qwen3: " + "; ".join(problems))
    arch, head_fields = llama.head_to_hf(cfg, "Qwen3")
    return arch, dict(
        llama.decoder_fields(cfg), **head_fields, **qwen2.window_to_hf(cfg), attention_bias=cfg.attn_bias
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Qwen3 model described by ``cfg``: Llama's plus the q/k norms."""
    b, layer = "stack.blocks.{i}.attn.", "layers.{i}.self_attn."
    return llama.rules(cfg) + [
        rule(layer + "q_norm.weight", b + "q_norm.scale"),
        rule(layer + "k_norm.weight", b + "k_norm.scale"),
    ]
