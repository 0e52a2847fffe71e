"""Hugging Face PyTorch parity, both ways, of ModernBERT (``ModernBertModel``,
``ModernBertForMaskedLM``): RoPE with a global and a local base, a symmetric local window on the
layers between global ones, GeGLU FFNs, bias-free norms by default and no attention norm in
layer 0, on sequences longer than the window with padding in the batch."""

import json

import numpy as np
import pytest
from hf_models import (
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
_BASE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=24,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
    local_attention=4,  # two positions on either side, against sequences of 12
    global_attn_every_n_layers=3,  # layer 0 global, layers 1 and 2 local
    global_rope_theta=500.0,
    local_rope_theta=40.0,
    pad_token_id=PAD,
    bos_token_id=2,
    eos_token_id=3,
    cls_token_id=2,
    sep_token_id=3,
    initializer_range=0.3,  # sharper attention, so the window and RoPE bases matter more
)
_BIASES = dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True)
KINDS = {
    "model": ("ModernBertModel", dict(_BASE, **_BIASES)),
    "mlm": (
        "ModernBertForMaskedLM",
        dict(
            _BASE, **_BIASES, hidden_activation="gelu_pytorch_tanh", classifier_activation="gelu_pytorch_tanh"
        ),
    ),
    "mlm_plain": ("ModernBertForMaskedLM", dict(_BASE, decoder_bias=False)),  # no biases at all
    "cls": ("ModernBertForSequenceClassification", dict(_BASE, **_BIASES, num_labels=3)),
    "cls_mean": (
        "ModernBertForSequenceClassification",
        dict(_BASE, classifier_pooling="mean", classifier_activation="silu", num_labels=4),
    ),
}


def build(kind: str, **changes):
    require("torch")
    require("transformers")
    model_cls, kwargs = KINDS[kind]
    return build_hf("ModernBertConfig", model_cls, {**kwargs, **changes})


def inputs(seed=0):
    return padded_inputs(PAD, VOCAB, seed)


saved = saved_models(KINDS, build)


def test_parity_and_the_window_matters(saved):
    kind, ref_model, path = saved
    ids, mask = inputs()
    ref_hidden, ref_logits = torch_outputs(ref_model, ids, mask)
    for scan in (True, False):
        model = load_hf(path, scan_layers=scan)
        assert_parity(model, ref_hidden, ref_logits, ids, mask, TOL)
    cfg = model.cfg
    assert cfg.sliding_window == 3 and cfg.sliding_layers == (1, 2) and cfg.local_rope_theta == 40.0
    wide = build(kind, local_attention=1000)  # the same weights without the local window
    wide.load_state_dict(ref_model.state_dict())
    assert max_diff(torch_outputs(wide, ids, mask)[0], ref_hidden, mask) > 100 * TOL
    if kind != "model":
        return
    # each flag changes the output: one RoPE base for all, a norm in layer 0, a window one wider
    for change in (dict(local_rope_theta=None), dict(first_attn_norm=True), dict(sliding_window=4)):
        other = model_from_flat(cfg.replace(**change), flat_params(model))
        assert max_diff(other(ids.astype(np.int32), attention_mask=mask).hidden, ref_hidden, mask) > 100 * TOL


def test_save_hf_reloads_with_the_same_tensors_and_outputs(saved, tmp_path):
    _, ref_model, path = saved
    out_dir = save_hf(load_hf(path), tmp_path / "export")
    assert_exports_and_reloads(ref_model, path, out_dir, *inputs(seed=1))


def test_round_trips(saved, tmp_path):
    _, _, path = saved
    assert_round_trip_bit_exact(path, tmp_path)
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    assert config_from_hf(config_to_hf(cfg)) == cfg


def test_older_config_fields_and_refusals():
    old = dict(_BASE, architectures=["ModernBertForMaskedLM"])  # global_rope_theta & co., no layer_types
    cfg = config_from_hf(old)
    assert (cfg.rope_theta, cfg.local_rope_theta, cfg.sliding_layers) == (500.0, 40.0, (1, 2))
    assert not cfg.norm_bias and not cfg.head_dense_bias and cfg.vocab_bias and not cfg.first_attn_norm
    with pytest.raises(ValueError, match="that is ModernBERT: set hf_family='modernbert'"):
        config_to_hf(cfg.replace(hf_family=None))
    cls = dict(old, architectures=["ModernBertForSequenceClassification"])
    with pytest.raises(ValueError, match="classifier_pooling='max' is not supported"):
        config_from_hf(dict(cls, classifier_pooling="max"))
    with pytest.raises(ValueError, match="pooling='mean' \\(BERT has no such option; ModernBERT has\\)"):
        config_to_hf(config_from_hf(dict(cls, classifier_pooling="mean")).replace(hf_family=None))
    with pytest.raises(ValueError, match="unsupported architecture 'ModernBertForTokenClassification'"):
        config_from_hf(dict(old, architectures=["ModernBertForTokenClassification"]))
    with pytest.raises(ValueError, match="rope_type='linear' is not supported"):
        config_from_hf(dict(old, rope_scaling={"rope_type": "linear", "factor": 2.0}))
    with pytest.raises(ValueError, match="classifier_activation='silu' differs from hidden_activation"):
        config_from_hf(dict(old, classifier_activation="silu"))
    with pytest.raises(ValueError, match="hidden_activation='relu' is not supported"):
        config_from_hf(dict(old, hidden_activation="relu"))
    with pytest.raises(ValueError, match="first_attn_norm=True \\(ModernBERT's layer 0"):
        config_to_hf(cfg.replace(first_attn_norm=True))
    with pytest.raises(ValueError, match="first_attn_norm=False skips layer 0's attention input norm"):
        cfg.replace(norm_placement="post")
