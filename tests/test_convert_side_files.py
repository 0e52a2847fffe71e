"""What travels with the weights: special-token ids, ``generation_config.json`` (sampling settings
included) and tokenizer files, both through ``save_hf`` and through the jaxslim directory; and the
logit checker's tolerance relative to the logits' scale."""

import json
import sys

import numpy as np
import pytest
from hf_models import LLAMA, build_hf

from conftest import require
from jaxslim.cli.convert import main
from jaxslim.convert import check, failures, load_hf, load_jaxslim, save_hf, save_jaxslim

pytestmark = pytest.mark.torch


def _llama(eos=(6, 7)):
    require("torch")
    require("transformers")
    kw = dict(
        LLAMA,
        bos_token_id=5,
        eos_token_id=list(eos),
        pad_token_id=3,
        rope_parameters={
            "rope_type": "llama3",
            "factor": 8.0,
            "rope_theta": 500.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    return build_hf("LlamaConfig", "LlamaForCausalLM", kw)


def _tokenizer():
    """A tiny word-level fast tokenizer built in memory (no download)."""
    tokenizers = require("tokenizers")
    transformers = require("transformers")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", "hello", "world", "jax"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    transformers = require("transformers")
    path = tmp_path_factory.mktemp("src")
    model = _llama()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=5, eos_token_id=[6, 7], pad_token_id=3, do_sample=True, temperature=0.6, top_p=0.9
    )
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


def _side(path):
    names = [p.name for p in path.iterdir() if p.suffix != ".safetensors" and p.name != "config.json"]
    return {n: (path / n).read_bytes() for n in sorted(names)}


def test_tokens_generation_config_and_tokenizer_survive_both_routes(source, tmp_path):
    transformers = require("transformers")
    side = _side(source)
    assert {"generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= side.keys()
    model = load_hf(source)
    assert (model.cfg.bos_token_id, model.cfg.eos_token_id, model.cfg.pad_token_id) == (5, (6, 7), 3)
    direct = save_hf(model, tmp_path / "direct")
    # through the jaxslim directory, as `jaxslim-convert to-jax` then `to-hf` do
    save_jaxslim(model, tmp_path / "jx")
    routed = save_hf(load_jaxslim(tmp_path / "jx"), tmp_path / "routed")
    for out in (direct, routed):
        assert _side(out) == side  # byte for byte
        hf = json.loads((out / "config.json").read_text())
        assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (5, [6, 7], 3)
        gen = transformers.GenerationConfig.from_pretrained(out)
        assert (gen.do_sample, gen.temperature, gen.top_p, gen.eos_token_id) == (True, 0.6, 0.9, [6, 7])
        tok = transformers.AutoTokenizer.from_pretrained(out)
        assert tok("hello jax world")["input_ids"] == [4, 6, 5]
    # an explicit source wins, and a missing one means no tokenizer
    bare = save_hf(model, tmp_path / "bare", source=tmp_path / "nowhere")
    assert not (bare / "tokenizer.json").exists()
    gen = json.loads((bare / "generation_config.json").read_text())  # written from the model's ids
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (5, [6, 7], 3)
    assert transformers.GenerationConfig.from_pretrained(bare).eos_token_id == [6, 7]


def test_side_files_in_the_way_are_not_overwritten_silently(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(FileExistsError, match="tokenizer.json"):
        save_hf(load_hf(source), out)
    assert (out / "tokenizer.json").read_text() == "{}" and not (out / "config.json").exists()
    save_hf(load_hf(source), out, overwrite=True)
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_check_is_relative_to_the_logit_scale(tmp_path, capsys, monkeypatch):
    torch = require("torch")
    model = _llama()
    with torch.no_grad():  # logits of ~40, as real LLMs have
        model.lm_head.weight.mul_(40.0 / model(torch.arange(16)[None]).logits.abs().max())
    model.save_pretrained(tmp_path)
    result = check(tmp_path)
    assert 20 < result["logits"]["max_abs"] / result["logits"]["max_rel"] < 80
    assert failures(result) == []
    tight = check(tmp_path, fp64=True)
    assert tight["logits"]["max_rel"] <= 1e-5
    # a wrong conversion (one norm scale lost) fails the default check
    checker = sys.modules["jaxslim.convert.check"]  # the package exports a function of the same name

    def wrong(path):
        m = load_hf(path, scan_layers=False)
        scale = m.stack.blocks[1].mlp_norm.scale
        scale[...] = np.ones_like(scale[...])
        return m

    monkeypatch.setattr(checker, "load_hf", wrong)
    capsys.readouterr()
    assert main(["check", str(tmp_path)]) == 1
    assert "max rel diff" in capsys.readouterr().err
