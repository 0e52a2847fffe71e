"""XLM-RoBERTa (``XLMRobertaModel``, ``XLMRobertaForMaskedLM``) <-> jaxslim.

The same model as RoBERTa (:mod:`~jaxslim.convert.roberta`: positions counted from
``pad_token_id + 1``, BERT's tensor names under ``roberta.``) under its own class names, with a
250k-token vocabulary.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import roberta
from jaxslim.convert.rules import Rule

ARCHITECTURES = ("XLMRobertaModel", "XLMRobertaForMaskedLM", "XLMRobertaForSequenceClassification")
MODEL_TYPE = "xlm-roberta"
HF_CONFIG = "XLMRobertaConfig"
PREFIX = roberta.PREFIX
IGNORE = roberta.IGNORE
prefix_for = roberta.prefix_for


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of an XLM-R ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    return roberta.encoder_config(hf, architecture, tensor_names, "XLM-R", MODEL_TYPE)


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``XLMRobertaConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF XLM-R cannot express (all of it named).
    """
    return roberta.encoder_to_hf(cfg, "XLM-R", "XLMRoberta")


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of an XLM-R model described by ``cfg`` (RoBERTa's)."""
    return roberta.rules(cfg)
