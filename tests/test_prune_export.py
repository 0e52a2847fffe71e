"""Hugging Face export of pruned models: slim where the format can say it, masked dense otherwise;
the PyTorch model computes what the masked jaxslim model computes."""

import json

import numpy as np
import pytest
from hf_models import inputs, tiny, torch_outputs

from conftest import require
from jaxslim.convert import load_hf
from jaxslim.prune.export import EXPORT_INFO, export_hf, fold_masks

pytestmark = pytest.mark.torch


def _masks(cfg, seed, *, uniform_heads=None, uniform_ffn=None):
    rng = np.random.default_rng(seed)
    g = cfg.n_heads // cfg.kv_heads
    if uniform_heads is None:
        groups = rng.random((cfg.n_layers, cfg.kv_heads)) > 0.4
        groups[:, 0] = True
        hm = np.repeat(groups, g, axis=1).astype(np.float32)
    else:
        hm = np.zeros((cfg.n_layers, cfg.n_heads), np.float32)
        hm[:, :uniform_heads] = 1
    if uniform_ffn is None:
        nm = (rng.random((cfg.n_layers, cfg.d_ff)) > 0.5).astype(np.float32)
    else:
        nm = np.zeros((cfg.n_layers, cfg.d_ff), np.float32)
        for i in range(cfg.n_layers):
            nm[i, rng.permutation(cfg.d_ff)[:uniform_ffn]] = 1
    # tuned scales on the kept units
    hm *= rng.uniform(0.5, 1.5, hm.shape).astype(np.float32)
    nm *= rng.uniform(0.5, 1.5, nm.shape).astype(np.float32)
    return hm, nm


def _masked(model, ids, mask, hm, nm):
    out = model(ids, attention_mask=mask, head_mask=hm, neuron_mask=nm)
    return np.asarray(out.hidden), None if out.logits is None else np.asarray(out.logits)


CASES = [
    ("bert", {}, "masked-dense"),  # heterogeneous widths
    ("gpt2", dict(uniform_heads=3, uniform_ffn=50), "masked-dense"),  # GPT-2 cannot drop heads
    ("bert", dict(uniform_heads=4, uniform_ffn=20), "slim"),  # FFN-only, uniform
    ("llama_untied", dict(uniform_heads=2, uniform_ffn=30), "slim"),  # Llama has an explicit head_dim
    ("llama_untied", {}, "masked-dense"),
]


@pytest.mark.parametrize("kind, how, fmt", CASES)
def test_export_matches_the_masked_model_in_pytorch(kind, how, fmt, tmp_path):
    require("torch")
    ref = tiny(kind)
    ref.save_pretrained(tmp_path / "dense")
    model = load_hf(tmp_path / "dense")
    hm, nm = _masks(model.cfg, 0, **how)
    info = export_hf(model, hm, nm, tmp_path / "out")
    assert info["format"] == fmt, info
    saved = json.loads((tmp_path / "out" / EXPORT_INFO).read_text())
    assert saved == info
    assert saved["layer_heads"] == [int(np.count_nonzero(r)) for r in hm]
    back = type(ref).from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    if fmt == "slim":
        assert back.config.intermediate_size == int(np.count_nonzero(nm[0]))
        assert back.config.num_attention_heads == int(np.count_nonzero(hm[0]))
        n_dense = sum(p.numel() for p in ref.parameters())
        assert sum(p.numel() for p in back.parameters()) < n_dense
    ids, mask = inputs()
    h_ref, logits_ref = torch_outputs(back, ids, mask)
    h, logits = _masked(model, ids, mask, hm, nm)
    rows = mask.astype(bool)
    np.testing.assert_allclose(h[rows], h_ref[rows], atol=2e-5)
    if logits is not None:
        np.testing.assert_allclose(logits[rows], logits_ref[rows], atol=2e-4)


def test_folded_masks_compute_the_masked_function_in_jax():
    require("torch")
    model = load_hf_tiny("llama_untied")
    hm, nm = _masks(model.cfg, 1)
    ids, mask = inputs()
    folded = fold_masks(model, hm, nm)
    np.testing.assert_allclose(
        np.asarray(folded(ids, attention_mask=mask).logits),
        _masked(model, ids, mask, hm, nm)[1],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="head_mask must have shape"):
        fold_masks(model, hm[:, :2], nm)


def load_hf_tiny(kind):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tiny(kind).save_pretrained(d)
        return load_hf(d)
