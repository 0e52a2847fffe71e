"""Head and neuron masks equal zeroing the matching weights of the Hugging Face PyTorch model.

transformers 5 has no ``head_mask`` / ``prune_heads``; zeroing one head's input columns of the
attention output projection (or one neuron's column of the FFN output projection) is the reference.
"""

import numpy as np
import pytest
from hf_models import inputs, tiny, torch_outputs

from conftest import require
from jaxslim.convert import load_hf

pytestmark = pytest.mark.torch
TOL = 1e-5


def _attn_out(model, kind: str, layer: int):
    """The attention output projection as a ``[d, heads * head_dim]`` view (columns = head inputs)."""
    if kind == "bert":
        return model.encoder.layer[layer].attention.output.dense.weight
    if kind == "gpt2":
        return model.transformer.h[layer].attn.c_proj.weight.T  # Conv1D stores [in, out]
    return model.model.layers[layer].self_attn.o_proj.weight


def _ffn_out(model, kind: str, layer: int):
    """The FFN output projection as a ``[d, d_ff]`` view (columns = neurons)."""
    if kind == "bert":
        return model.encoder.layer[layer].output.dense.weight
    if kind == "gpt2":
        return model.transformer.h[layer].mlp.c_proj.weight.T
    return model.model.layers[layer].mlp.down_proj.weight


def _compare(ours, ref_model, ids, mask) -> None:
    ref_hidden, ref_logits = torch_outputs(ref_model, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(np.asarray(ours.hidden) - ref_hidden)[valid].max() <= TOL
    if ref_logits is not None:
        assert np.abs(np.asarray(ours.logits) - ref_logits)[valid].max() <= TOL


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama_untied"])
def test_zeroed_head_and_neuron_match_pytorch(kind, tmp_path):
    torch = require("torch")
    ref = tiny(kind)
    ref.save_pretrained(tmp_path)
    original = {k: v.clone() for k, v in ref.state_dict().items()}
    model = load_hf(tmp_path)
    cfg = model.cfg
    hd = cfg.head_dim_
    ids, mask = inputs()
    tokens = ids.astype(np.int32)

    def run(head_mask, neuron_mask):
        return model(tokens, attention_mask=mask, head_mask=head_mask, neuron_mask=neuron_mask)

    ones_h = np.ones((cfg.n_layers, cfg.n_heads), np.float32)
    ones_n = np.ones((cfg.n_layers, cfg.d_ff), np.float32)
    base = model(tokens, attention_mask=mask)
    np.testing.assert_array_equal(run(ones_h, ones_n).hidden, base.hidden)  # masks of ones change nothing
    _compare(base, ref, ids, mask)

    # one head of layer 1 (with GQA for Llama: a query head that shares its KV head with others)
    head_mask = ones_h.copy()
    head_mask[1, 2] = 0
    with torch.no_grad():
        _attn_out(ref, kind, 1)[:, 2 * hd : 3 * hd] = 0
    ours = run(head_mask, ones_n)
    _compare(ours, ref, ids, mask)
    assert np.abs(np.asarray(ours.hidden) - np.asarray(base.hidden)).max() > 1e-4  # the mask did something

    # one FFN neuron of layer 0, on the original weights
    ref.load_state_dict(original)
    neuron_mask = ones_n.copy()
    neuron_mask[0, 5] = 0
    with torch.no_grad():
        _ffn_out(ref, kind, 0)[:, 5] = 0
    ours = run(ones_h, neuron_mask)
    _compare(ours, ref, ids, mask)
    assert np.abs(np.asarray(ours.hidden) - np.asarray(base.hidden)).max() > 1e-5
