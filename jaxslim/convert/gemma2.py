"""Gemma 2 (``Gemma2ForCausalLM``, ``Gemma2ForSequenceClassification``, ``Gemma2Model``) <-> jaxslim.

Beyond Gemma (:mod:`~jaxslim.convert.gemma`): each block normalises its attention and FFN outputs
before the residual sum (``post_norms``; ``post_attention_layernorm``, ``pre_feedforward_layernorm``,
``post_feedforward_layernorm``), attention scores and output logits are soft-capped
(``attn_softcap``, ``logit_softcap``), scores are scaled by ``query_pre_attn_scalar ** -0.5``
(``attn_scale_dim``) and local (sliding-window) and global layers alternate, local first
(``sliding_layers``, from ``layer_types``). What Gemma 3 shares with it is built by
:func:`~jaxslim.convert.gemma.sandwich_config` / :func:`~jaxslim.convert.gemma.sandwich_to_hf`.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import gemma
from jaxslim.convert.rules import Rule

ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma2ForSequenceClassification", "Gemma2Model")
MODEL_TYPE = "gemma2"
HF_CONFIG = "Gemma2Config"
PREFIX = gemma.PREFIX
IGNORE = gemma.IGNORE
prefix_for = gemma.prefix_for

# Gemma2Config's defaults beyond Gemma's, for config.json files that leave a field out
DEFAULTS = dict(
    sliding_window=4096,
    query_pre_attn_scalar=256,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
)


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Gemma 2 ``config.json`` (local and global layers alternate).

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    hf = {**gemma.DEFAULTS, **DEFAULTS, **hf}
    return gemma.sandwich_config(hf, "Gemma 2", architecture, local_every=2, hf_family=MODEL_TYPE)


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Gemma2Config`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Gemma 2 cannot express (all of it named).
    """
    return gemma.sandwich_to_hf(cfg, "Gemma 2", "Gemma2")


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Gemma 2 model described by ``cfg``."""
    return gemma.sandwich_rules(cfg)
