"""Tiny random Hugging Face models (built from configs, never downloaded) and the checks every
conversion test repeats: parity with the PyTorch reference, the exported tensors, and the bit-exact
round trip."""

import json

import numpy as np
import pytest

VOCAB = 99
# a tiny Llama (grouped-query attention) that several test files extend
LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
)


def perturbed(model):
    """``model`` in eval mode with every 1-D parameter (norms, biases) moved off its default, so a
    dropped or misplaced one cannot hide behind ones or zeros."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def build_hf(config_cls: str, model_cls: str, kwargs: dict, *, seed: int = 0):
    """A seeded, perturbed transformers ``model_cls`` of ``config_cls(**kwargs)``, eager attention."""
    import torch
    import transformers

    cfg = getattr(transformers, config_cls)(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return perturbed(getattr(transformers, model_cls)(cfg))


def tiny(kind: str):
    """A seeded tiny PyTorch model of ``kind``: bert, bert_mlm, gpt2, llama_tied, llama_untied."""
    if kind.startswith("bert"):
        kw = dict(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
        return build_hf("BertConfig", "BertForMaskedLM" if kind == "bert_mlm" else "BertModel", kw)
    if kind == "gpt2":
        kw = dict(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        return build_hf("GPT2Config", "GPT2LMHeadModel", kw)
    kw = dict(LLAMA, tie_word_embeddings=kind == "llama_tied", rope_theta=500.0)
    return build_hf("LlamaConfig", "LlamaForCausalLM", kw)


def padded_inputs(pad: int, vocab: int, seed: int = 0):
    """Three rows of ids without the padding id ``pad``, padded with it where the mask is 0 (right
    on row 1, left on row 2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(pad + 1, vocab, (3, 12))
    mask = np.ones(ids.shape, np.int64)
    mask[1, -4:] = 0
    mask[2, :3] = 0
    ids[mask == 0] = pad
    return ids, mask


def saved_models(kinds, build):
    """A module fixture over ``kinds``: ``(kind, build(kind), the folder that model was saved in)``."""

    @pytest.fixture(scope="module", params=list(kinds))
    def saved(request, tmp_path_factory):
        model = build(request.param)
        path = tmp_path_factory.mktemp(request.param)
        model.save_pretrained(path)
        return request.param, model, path

    return saved


def inputs(batch=2, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, -4:] = 0  # right padding on the second row
    return ids, mask


def torch_outputs(model, ids, mask):
    """(last hidden state, logits or None) of a transformers model, as numpy."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    logits = out.logits.numpy() if hasattr(out, "logits") else None
    return out.hidden_states[-1].numpy(), logits


def max_diff(a, b, mask) -> float:
    """Largest absolute difference over the positions ``mask`` keeps (all of them for ``[b, labels]``
    class logits)."""
    diff = np.abs(np.asarray(a) - b)
    return float(diff.max() if diff.ndim == 2 else diff[mask.astype(bool)].max())


def assert_parity(model, ref_hidden, ref_logits, ids, mask, tol: float) -> None:
    """``model``'s hidden states and logits on ``ids`` are within ``tol`` of the reference's."""
    out = model(ids.astype(np.int32), attention_mask=mask)
    assert max_diff(out.hidden, ref_hidden, mask) <= tol
    if ref_logits is None:
        assert out.logits is None
    else:
        assert out.logits is not None and out.logits.shape == ref_logits.shape
        assert max_diff(out.logits, ref_logits, mask) <= tol


def assert_same_tensors(ours_dir, theirs_dir, *, skip=("position_ids",)) -> None:
    """The two checkpoint directories hold the same tensors, bit for bit (buffers named in ``skip``
    aside)."""
    from safetensors.numpy import load_file

    ours = load_file(str(ours_dir / "model.safetensors"))
    theirs = load_file(str(theirs_dir / "model.safetensors"))
    assert ours.keys() == {k for k in theirs if not k.endswith(skip)}
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def assert_exports_and_reloads(ref_model, path, out_dir, ids, mask) -> None:
    """``out_dir`` (written by ``save_hf`` from the checkpoint in ``path``) names the reference's
    class, holds its tensors and reloads in transformers with its outputs, bit for bit."""
    assert json.loads((out_dir / "config.json").read_text())["architectures"] == [type(ref_model).__name__]
    assert_same_tensors(out_dir, path)
    reloaded = type(ref_model).from_pretrained(out_dir, attn_implementation="eager").eval()
    for a, b in zip(torch_outputs(reloaded, ids, mask), torch_outputs(ref_model, ids, mask), strict=True):
        if b is not None:
            np.testing.assert_array_equal(a, b)
    return reloaded


def assert_round_trip_bit_exact(path, tmp_path):
    """``load_hf`` -> ``save_hf`` -> ``load_hf`` gives back the same arrays and config; returns the
    first model."""
    from jaxslim.convert import flat_params, load_hf, save_hf

    first = load_hf(path)
    again = load_hf(save_hf(first, tmp_path / "once"))
    a, b = flat_params(first), flat_params(again)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert again.cfg == first.cfg
    return first
