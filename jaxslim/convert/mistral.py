"""Mistral (``MistralForCausalLM``) <-> jaxslim: key map and config mapping.

A Mistral is a Llama whose every layer attends only to the last ``sliding_window`` positions
(``ModelConfig.sliding_window``; Mistral 7B v0.1 has 4096, later versions ``null``, i.e. full
attention). Weights are named exactly as Llama's; there are no biases.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama
from jaxslim.convert.rules import Rule

ARCHITECTURES = ("MistralForCausalLM", "MistralForSequenceClassification", "MistralModel")
MODEL_TYPE = "mistral"
HF_CONFIG = "MistralConfig"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

# MistralConfig's defaults, for config.json files that leave a field out
_DEFAULTS = dict(
    max_position_embeddings=4096 * 32, rms_norm_eps=1e-6, sliding_window=4096, bos_token_id=1, eos_token_id=2
)


prefix_for = llama.prefix_for


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Mistral ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.

    Example:
        >>> cfg = config_from_hf({"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
        ...     "num_attention_heads": 2, "intermediate_size": 24, "sliding_window": 8}, "MistralForCausalLM")
        >>> cfg.sliding_window, cfg.hf_family
        (8, 'mistral')
    """
    del tensor_names
    if hf.get("layer_types") and any(t != "sliding_attention" for t in hf["layer_types"]):
        raise ValueError(
            "Mistral layer_types with full-attention layers is not supported: MistralForCausalLM applies "
            "its sliding_window to every layer (alternating layers are Ministral's)"
        )
    hf = {**_DEFAULTS, **hf}
    return ModelConfig.llama(
        **llama.head_of(architecture, hf),
        **llama.decoder_config(hf, "Mistral", max_len=4096 * 32, norm_eps=1e-6, theta=10000.0),
        sliding_window=hf.get("sliding_window"),
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``MistralConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Mistral cannot express (all of it named).
    """
    problems = llama.expressible(cfg, "Mistral", sliding_window=True, heads=llama.HEADS)
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Mistral: " + "; ".join(problems))
    arch, head_fields = llama.head_to_hf(cfg, "Mistral")
    return arch, dict(llama.decoder_fields(cfg), **head_fields, sliding_window=cfg.sliding_window)


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Mistral model described by ``cfg`` (Llama's)."""
    return llama.rules(cfg)
