"""RoBERTa (``RobertaModel``, ``RobertaForMaskedLM``) <-> jaxslim: key map and config mapping.

A RoBERTa is a BERT whose learned positions skip the padding id: a real token's position is
``pad_token_id + 1 + (real tokens before it)`` and padding sits at ``pad_token_id``
(``ModelConfig.pad_positions``), which is why its table has ``max_len + 2`` rows (514). The
backbone's tensor names are BERT's under ``roberta.``; the masked-LM head is ``lm_head.dense``,
``lm_head.layer_norm``, ``lm_head.bias`` and a decoder tied to the word embeddings. The
sequence classifier (``classifier.dense`` + tanh + ``classifier.out_proj`` on the first token, no
pooler) is BERT's pooler and classifier under other names. XLM-R
(:mod:`~jaxslim.convert.xlm_roberta`) is the same model under other class names.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import bert
from jaxslim.convert.rules import LINEAR, Rule, rule

ARCHITECTURES = ("RobertaModel", "RobertaForMaskedLM", "RobertaForSequenceClassification")
MODEL_TYPE = "roberta"
HF_CONFIG = "RobertaConfig"
PREFIX = "roberta."
IGNORE = bert.IGNORE

# RobertaConfig's defaults, for config.json files that leave a field out
DEFAULTS = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2)


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes (the bare model has none)."""
    return "" if architecture.endswith("Model") else PREFIX


def encoder_config(hf: dict, architecture: str, tensor_names, family: str, model_type: str) -> ModelConfig:
    """The :class:`ModelConfig` of a RoBERTa-style ``config.json`` (RoBERTa, XLM-R)."""
    hf = {**DEFAULTS, **hf}
    as_bert = "Bert" + architecture[architecture.index("For") :] if "For" in architecture else "BertModel"
    # the classifier's dense + tanh layer is the pooler, whatever the tensor names say
    cfg = bert.config_from_hf(hf, as_bert, None if as_bert.endswith("Classification") else tensor_names)
    return cfg.replace(
        pad_positions=True,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        hf_family=model_type,
    )


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a RoBERTa ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    return encoder_config(hf, architecture, tensor_names, "RoBERTa", MODEL_TYPE)


def encoder_to_hf(cfg: ModelConfig, family: str, prefix: str) -> tuple[str, dict]:
    """The class name (``prefix`` + Model / ForMaskedLM / ForSequenceClassification) and config
    arguments of a RoBERTa-style encoder."""
    if not cfg.pad_positions:
        raise ValueError(
            f"cannot express this model as a Hugging Face {family}: pad_positions=False ({family} counts "
            "positions from pad_token_id + 1)"
        )
    arch, fields = bert.config_to_hf(cfg.replace(pad_positions=False))
    fields.update(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    return arch.replace("Bert", prefix), fields


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``RobertaConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF RoBERTa cannot express (all of it named).
    """
    return encoder_to_hf(cfg, "RoBERTa", "Roberta")


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a RoBERTa-style model described by ``cfg``: BERT's backbone and RoBERTa's
    masked-LM head or sequence classifier."""
    out = bert.backbone_rules(cfg)
    if cfg.head == "cls":  # the classifier's first layer takes the pooler's place
        return [r for r in out if not r.hf.startswith("pooler.")] + [
            rule("classifier.dense.weight", "pooler_w", transform=LINEAR, head=True),
            rule("classifier.dense.bias", "pooler_b", head=True),
            rule("classifier.out_proj.weight", "cls_w", transform=LINEAR, head=True),
            rule("classifier.out_proj.bias", "cls_b", head=True),
        ]
    out += [
        rule("lm_head.dense.weight", "mlm.w", transform=LINEAR, head=True),
        rule("lm_head.dense.bias", "mlm.b", head=True),
        rule("lm_head.layer_norm.weight", "mlm.norm.scale", head=True),
        rule("lm_head.layer_norm.bias", "mlm.norm.bias", head=True),
        rule("lm_head.bias", "mlm.vocab_bias", head=True),
    ]
    if cfg.head == "mlm":
        out += [
            rule("lm_head.decoder.weight", "embed.tokens", head=True, tied=True),
            rule("lm_head.decoder.bias", "mlm.vocab_bias", head=True, tied=True),
        ]
    return out
