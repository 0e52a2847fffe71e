"""Hugging Face PyTorch parity, both ways, of RoBERTa / XLM-R (positions counted after the padding
id), DistilBERT, and of the task-head and bare classes: BertForSequenceClassification,
LlamaForSequenceClassification (the last token that is not padding), LlamaModel."""

import json

import numpy as np
import pytest
from conftest import require
from hf_models import VOCAB
from safetensors.numpy import load_file

from jaxslim.convert import config_from_hf, config_to_hf, flat_params, load_hf, save_hf
from jaxslim.convert.hf import model_from_flat

pytestmark = pytest.mark.torch

TOL = 1e-5
PAD = 1
_BERT = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
)
_LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    pad_token_id=PAD,
)
KINDS = {
    "roberta": ("RobertaConfig", "RobertaModel", dict(_BERT, max_position_embeddings=40, type_vocab_size=1)),
    "roberta_mlm": ("RobertaConfig", "RobertaForMaskedLM", dict(_BERT, max_position_embeddings=40)),
    "xlmr_mlm": ("XLMRobertaConfig", "XLMRobertaForMaskedLM", dict(_BERT, max_position_embeddings=40)),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertModel",
        dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40),
    ),
    "distilbert_mlm": (
        "DistilBertConfig",
        "DistilBertForMaskedLM",
        dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40),
    ),
    "bert_cls": ("BertConfig", "BertForSequenceClassification", dict(_BERT, num_labels=3, pad_token_id=PAD)),
    "llama_cls": ("LlamaConfig", "LlamaForSequenceClassification", dict(_LLAMA, num_labels=5)),
    "llama_model": ("LlamaConfig", "LlamaModel", _LLAMA),
}


def build(kind: str):
    torch = require("torch")
    transformers = require("transformers")
    config_cls, model_cls, kwargs = KINDS[kind]
    cfg = getattr(transformers, config_cls)(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # random norms and biases, so a dropped one cannot hide behind ones/zeros
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(seed=0):
    """Ids without the padding id, padded with it where the mask is 0 (right on row 1, left on row 2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(PAD + 1, VOCAB, (3, 12))
    mask = np.ones(ids.shape, np.int64)
    mask[1, -4:] = 0
    mask[2, :3] = 0
    ids[mask == 0] = PAD
    return ids, mask


def reference(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    logits = out.logits.numpy() if hasattr(out, "logits") else None
    return out.hidden_states[-1].numpy(), logits


@pytest.fixture(scope="module", params=list(KINDS))
def saved(request, tmp_path_factory):
    model = build(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, path


def _masked(a, b, mask):
    return float(np.abs(np.asarray(a) - b)[mask.astype(bool)].max())


def test_parity(saved):
    kind, ref_model, path = saved
    ids, mask = inputs()
    ref_hidden, ref_logits = reference(ref_model, ids, mask)
    for scan in (True, False):
        model = load_hf(path, scan_layers=scan)
        out = model(ids.astype(np.int32), attention_mask=mask)
        assert _masked(out.hidden, ref_hidden, mask) <= TOL
        if ref_logits is None:
            assert out.logits is None
        elif ref_logits.ndim == 2:  # one row of class logits per sequence
            assert out.logits.shape == ref_logits.shape
            assert float(np.abs(np.asarray(out.logits) - ref_logits).max()) <= TOL
        else:
            assert _masked(out.logits, ref_logits, mask) <= TOL
    cfg = model.cfg
    if cfg.pad_positions:  # counting positions from 0 would change the output
        plain = model_from_flat(cfg.replace(pad_positions=False), flat_params(model))
        assert _masked(plain(ids.astype(np.int32), attention_mask=mask).hidden, ref_hidden, mask) > 100 * TOL
    if kind == "llama_cls":  # the last token that is not padding, not the last position
        assert not np.array_equal(ids[:, -1], ids[np.arange(3), mask.cumsum(1).argmax(1)])


def test_save_hf_reloads_with_the_same_tensors_and_outputs(saved, tmp_path):
    _, ref_model, path = saved
    out_dir = save_hf(load_hf(path), tmp_path / "export")
    assert json.loads((out_dir / "config.json").read_text())["architectures"] == [type(ref_model).__name__]
    ours, theirs = load_file(str(out_dir / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert ours.keys() == {k for k in theirs if not k.endswith("position_ids")}
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    reloaded = type(ref_model).from_pretrained(out_dir, attn_implementation="eager").eval()
    ids, mask = inputs(seed=1)
    for a, b in zip(reference(reloaded, ids, mask), reference(ref_model, ids, mask), strict=True):
        if b is not None:
            np.testing.assert_array_equal(a, b)


def test_round_trips(saved, tmp_path):
    _, _, path = saved
    first = load_hf(path)
    again = load_hf(save_hf(first, tmp_path / "once"))
    a, b = flat_params(first), flat_params(again)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert again.cfg == first.cfg
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    assert config_from_hf(config_to_hf(cfg)).replace(pooler=cfg.pooler) == cfg


def test_refusals_name_the_class():
    with pytest.raises(ValueError, match="unsupported architecture 'RobertaForSequenceClassification'"):
        config_from_hf({"architectures": ["RobertaForSequenceClassification"], **_BERT})
    cfg = config_from_hf({"architectures": ["RobertaModel"], **_BERT})
    assert cfg.pad_positions and cfg.pad_token_id == 1 and cfg.hf_family == "roberta"
    with pytest.raises(ValueError, match="pad_positions=True \\(that is RoBERTa"):
        config_to_hf(cfg.replace(hf_family=None))
