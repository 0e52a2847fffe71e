"""Head and neuron masks equal zeroing the matching weights of the Hugging Face PyTorch model.

transformers 5 has no ``head_mask`` / ``prune_heads``; zeroing one head's input columns of the
attention output projection (or one neuron's column of the FFN output projection) is the reference.
"""

import numpy as np
import pytest
from conftest import require
from hf_models import inputs, tiny, torch_outputs

from jaxslim.convert import load_hf

pytestmark = pytest.mark.torch
HEAD_DIM = 8  # tiny models: 32 wide, 4 heads


def _attn_out(model, kind, layer):
    if kind == "bert":
        return model.encoder.layer[layer].attention.output.dense.weight  # Linear [d, heads*hd]
    if kind == "gpt2":
        return model.transformer.h[layer].attn.c_proj.weight.T  # Conv1D [heads*hd, d] -> view [d, heads*hd]
    return model.model.layers[layer].self_attn.o_proj.weight


def _ffn_out(model, kind, layer):
    if kind == "bert":
        return model.encoder.layer[layer].output.dense.weight  # [d, ffn]
    if kind == "gpt2":
        return model.transformer.h[layer].mlp.c_proj.weight.T
    return model.model.layers[layer].mlp.down_proj.weight


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama_untied"])
def test_zeroed_head_and_neuron_match_pytorch(kind, tmp_path):
    torch = require("torch")
    ref = tiny(kind)
    ref.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    cfg = model.cfg
    ids, mask = inputs()
    layer, head, neuron = 1, 2, 5
    head_mask = np.ones((cfg.n_layers, cfg.n_heads), np.float32)
    neuron_mask = np.ones((cfg.n_layers, cfg.d_ff), np.float32)
    base = model(ids.astype(np.int32), attention_mask=mask)
    ones = model(ids.astype(np.int32), attention_mask=mask, head_mask=head_mask, neuron_mask=neuron_mask)
    np.testing.assert_array_equal(base.hidden, ones.hidden)

    head_mask[layer, head] = 0
    neuron_mask[0, neuron] = 0
    ours = model(ids.astype(np.int32), attention_mask=mask, head_mask=head_mask, neuron_mask=neuron_mask)
    with torch.no_grad():
        _attn_out(ref, kind, layer)[:, head * HEAD_DIM : (head + 1) * HEAD_DIM] = 0
        _ffn_out(ref, kind, 0)[:, neuron] = 0
    ref_hidden, ref_logits = torch_outputs(ref, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(np.asarray(ours.hidden) - ref_hidden)[valid].max() <= 1e-5
    if ref_logits is not None:
        assert np.abs(np.asarray(ours.logits) - ref_logits)[valid].max() <= 1e-5
    # and the mask really changed something
    assert np.abs(np.asarray(ours.hidden) - np.asarray(base.hidden))[valid].max() > 1e-4
