"""Hugging Face PyTorch parity, both ways, of RoBERTa / XLM-R (positions counted after the padding
id), DistilBERT, and of the task-head and bare classes: sequence classification of the BERT family
(BERT, RoBERTa, XLM-R, DistilBERT: a dense layer + tanh / ReLU on the first token, then the
classifier) and of the Llama family (Llama, Qwen2, Qwen3, Mistral, Gemma 1-3: ``score`` on the last
token that is not padding), and the bare models (LlamaModel, Qwen2Model, Gemma3TextModel)."""

import json

import numpy as np
import pytest
from hf_models import (
    LLAMA,
    VOCAB,
    assert_exports_and_reloads,
    assert_parity,
    assert_round_trip_bit_exact,
    build_hf,
    max_diff,
    padded_inputs,
    saved_models,
    torch_outputs,
)

from conftest import require
from jaxslim.convert import config_from_hf, config_to_hf, flat_params, load_hf, save_hf
from jaxslim.convert.hf import model_from_flat

pytestmark = pytest.mark.torch

TOL = 1e-5
PAD = 1
_BERT = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
)
_DISTIL = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40)
_LLAMA = dict(LLAMA, pad_token_id=PAD)
_GEMMA = dict(_LLAMA, head_dim=8, num_labels=3)
KINDS = {
    "roberta": ("RobertaConfig", "RobertaModel", dict(_BERT, max_position_embeddings=40, type_vocab_size=1)),
    "roberta_mlm": ("RobertaConfig", "RobertaForMaskedLM", dict(_BERT, max_position_embeddings=40)),
    "xlmr_mlm": ("XLMRobertaConfig", "XLMRobertaForMaskedLM", dict(_BERT, max_position_embeddings=40)),
    "distilbert": ("DistilBertConfig", "DistilBertModel", _DISTIL),
    "distilbert_mlm": ("DistilBertConfig", "DistilBertForMaskedLM", _DISTIL),
    "bert_cls": ("BertConfig", "BertForSequenceClassification", dict(_BERT, num_labels=3, pad_token_id=PAD)),
    "roberta_cls": (
        "RobertaConfig",
        "RobertaForSequenceClassification",
        dict(_BERT, max_position_embeddings=40, num_labels=3),
    ),
    "xlmr_cls": (
        "XLMRobertaConfig",
        "XLMRobertaForSequenceClassification",
        dict(_BERT, max_position_embeddings=40, num_labels=4),
    ),
    "distilbert_cls": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        dict(_DISTIL, num_labels=3, pad_token_id=PAD),
    ),
    "llama_cls": ("LlamaConfig", "LlamaForSequenceClassification", dict(_LLAMA, num_labels=5)),
    "qwen2_cls": ("Qwen2Config", "Qwen2ForSequenceClassification", dict(_LLAMA, num_labels=3)),
    "qwen3_cls": ("Qwen3Config", "Qwen3ForSequenceClassification", dict(_LLAMA, head_dim=8, num_labels=3)),
    "mistral_cls": (
        "MistralConfig",
        "MistralForSequenceClassification",
        dict(_LLAMA, sliding_window=5, num_labels=3),
    ),
    "gemma_cls": ("GemmaConfig", "GemmaForSequenceClassification", _GEMMA),
    "gemma2_cls": (
        "Gemma2Config",
        "Gemma2ForSequenceClassification",
        dict(_GEMMA, sliding_window=5, final_logit_softcapping=0.5),  # a cap the classifier must not use
    ),
    "gemma3_cls": (
        "Gemma3TextConfig",
        "Gemma3TextForSequenceClassification",
        dict(_GEMMA, sliding_window=5, layer_types=["sliding_attention", "full_attention"]),
    ),
    "llama_model": ("LlamaConfig", "LlamaModel", _LLAMA),
    "qwen2_model": ("Qwen2Config", "Qwen2Model", _LLAMA),
    "gemma3_model": (
        "Gemma3TextConfig",
        "Gemma3TextModel",
        dict(_GEMMA, sliding_window=5, layer_types=["sliding_attention", "full_attention"]),
    ),
}


def build(kind: str):
    require("torch")
    require("transformers")
    config_cls, model_cls, kwargs = KINDS[kind]
    return build_hf(config_cls, model_cls, kwargs)


def inputs(seed=0):
    return padded_inputs(PAD, VOCAB, seed)


saved = saved_models(KINDS, build)


def test_parity(saved):
    kind, ref_model, path = saved
    ids, mask = inputs()
    ref_hidden, ref_logits = torch_outputs(ref_model, ids, mask)
    for scan in (True, False):
        model = load_hf(path, scan_layers=scan)
        assert_parity(model, ref_hidden, ref_logits, ids, mask, TOL)
    cfg = model.cfg
    if cfg.pad_positions:  # counting positions from 0 would change the output
        plain = model_from_flat(cfg.replace(pad_positions=False), flat_params(model))
        assert max_diff(plain(ids.astype(np.int32), attention_mask=mask).hidden, ref_hidden, mask) > 100 * TOL
    if cfg.head == "cls" and cfg.arch == "llama":  # the last token that is not padding, not the last position
        assert not np.array_equal(ids[:, -1], ids[np.arange(3), mask.cumsum(1).argmax(1)])
    if cfg.logit_softcap is not None:  # the cap would change the class scores
        capped = cfg.logit_softcap * np.tanh(ref_logits / cfg.logit_softcap)
        assert np.abs(capped - ref_logits).max() > 100 * TOL


def test_save_hf_reloads_with_the_same_tensors_and_outputs(saved, tmp_path):
    _, ref_model, path = saved
    out_dir = save_hf(load_hf(path), tmp_path / "export")
    assert_exports_and_reloads(ref_model, path, out_dir, *inputs(seed=1))


def test_round_trips(saved, tmp_path):
    _, _, path = saved
    assert_round_trip_bit_exact(path, tmp_path)
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    assert config_from_hf(config_to_hf(cfg)).replace(pooler=cfg.pooler) == cfg


def test_refusals_name_the_class():
    with pytest.raises(ValueError, match="unsupported architecture 'RobertaForTokenClassification'"):
        config_from_hf({"architectures": ["RobertaForTokenClassification"], **_BERT})
    cfg = config_from_hf({"architectures": ["RobertaModel"], **_BERT})
    assert cfg.pad_positions and cfg.pad_token_id == 1 and cfg.hf_family == "roberta"
    with pytest.raises(ValueError, match="pad_positions=True \\(that is RoBERTa"):
        config_to_hf(cfg.replace(hf_family=None))
    distil = config_from_hf({"architectures": ["DistilBertForSequenceClassification"], **_DISTIL})
    assert distil.pooler and distil.pooler_activation == "relu" and distil.head == "cls"
    with pytest.raises(ValueError, match="pooler_activation='relu' \\(BERT's pooler is tanh\\)"):
        config_to_hf(distil.replace(hf_family=None, type_vocab_size=2))
    with pytest.raises(
        ValueError, match="pooler_activation='tanh' \\(DistilBERT's pre_classifier is ReLU\\)"
    ):
        config_to_hf(distil.replace(pooler_activation="tanh"))
    with pytest.raises(ValueError, match="pooler_activation must be one of"):
        distil.replace(pooler_activation="sigmoid")
