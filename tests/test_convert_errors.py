"""Bad checkpoints get one clear error naming what is wrong and what was expected."""

import json

import numpy as np
import pytest
from conftest import require
from hf_models import tiny
from safetensors.numpy import load_file, save_file

from jaxslim.config import ModelConfig
from jaxslim.convert import ConversionError, load_hf, save_hf
from jaxslim.models import Transformer


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    require("torch")
    path = tmp_path_factory.mktemp("bert")
    tiny("bert").save_pretrained(path)
    return path


def _copy(src, dst, *, config=None, tensors=None):
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config(cfg) if config else cfg))
    t = load_file(str(src / "model.safetensors"))
    save_file(tensors(t) if tensors else t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_unsupported_architecture(bert_dir, tmp_path):
    def t5(c):
        return {**c, "architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}

    bad = _copy(bert_dir, tmp_path / "t5", config=t5)
    with pytest.raises(
        ValueError,
        match=r"unsupported architecture 'T5ForConditionalGeneration'; jaxslim converts BertModel, BertForMaskedLM, GPT2LMHeadModel",
    ):
        load_hf(bad)


def test_missing_unexpected_and_misshaped_keys_in_one_error(bert_dir, tmp_path):
    def damage(t):
        t = dict(t)
        del t["encoder.layer.1.output.dense.bias"]
        t["encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
        t["encoder.layer.0.intermediate.dense.weight"] = np.zeros((36, 32), np.float32)
        return t

    bad = _copy(bert_dir, tmp_path / "damaged", tensors=damage)
    with pytest.raises(ConversionError) as err:
        load_hf(bad)
    msg = str(err.value)
    assert "1 missing: stack.blocks.1.mlp.bo" in msg
    assert "1 unexpected: encoder.layer.0.extra.weight" in msg
    assert "1 mis-shaped: encoder.layer.0.intermediate.dense.weight: shape (36, 32)" in msg
    assert "(32, 37)" in msg  # the shape the config asks for


def test_config_weights_mismatch_names_both(bert_dir, tmp_path):
    bad = _copy(bert_dir, tmp_path / "wider", config=lambda c: {**c, "intermediate_size": 64})
    with pytest.raises(ConversionError, match="d_ff=64") as err:
        load_hf(bad)
    assert "mis-shaped" in str(err.value) and "(37, 32)" in str(err.value)


def test_extra_layer_in_weights_is_unexpected(bert_dir, tmp_path):
    bad = _copy(bert_dir, tmp_path / "shallow", config=lambda c: {**c, "num_hidden_layers": 1})
    with pytest.raises(
        ConversionError, match=r"unexpected: encoder\.layer\.1\..* \(layer 1 does not exist\)"
    ):
        load_hf(bad)


def test_truncated_file(bert_dir, tmp_path):
    bad = _copy(bert_dir, tmp_path / "cut")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError, match=r"model\.safetensors is not a readable safetensors file \(truncated or corrupt\?\)"
    ):
        load_hf(bad)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="config.json of a BertModel lacks the field"):
        load_hf(tmp_path)


def test_unsupported_variants_are_named(tmp_path):
    from jaxslim.convert import config_from_hf

    llama = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 8,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
        "rope_scaling": {"rope_type": "yarn"},
    }
    with pytest.raises(ValueError, match="Llama rope type 'yarn' is not supported"):
        config_from_hf(llama)
    gpt2 = {
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": 8,
        "n_embd": 8,
        "n_layer": 1,
        "n_head": 2,
        "scale_attn_by_inverse_layer_idx": True,
    }
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True is not supported"):
        config_from_hf(gpt2)


def test_save_hf_refuses_per_layer_widths(tmp_path):
    from flax import nnx

    cfg = ModelConfig.bert(
        vocab_size=32,
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_ff=16,
        scan_layers=False,
        layer_heads=(2, 1),
        layer_ffn=(16, 4),
    )
    with pytest.raises(ValueError, match="per-layer head counts / FFN widths"):
        save_hf(Transformer(cfg, rngs=nnx.Rngs(0)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
