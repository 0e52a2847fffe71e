"""Bad checkpoints get one clear error naming what is wrong and what was expected.

The checkpoints are written by ``save_hf`` from random jaxslim models (the reference tests show
these files equal transformers' own), so these tests need neither torch nor a download.
"""

import importlib.util
import json
import re

import numpy as np
import pytest
from hf_models import tiny
from safetensors.numpy import load_file, save_file

from conftest import require
from jaxslim.config import ModelConfig
from jaxslim.convert import ConversionError, config_from_hf, flat_params, load_hf, save_hf
from jaxslim.convert.hf import model_from_flat, param_shapes

BERT = ModelConfig.bert(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_len=32, pad_token_id=0)


def _random_model(cfg: ModelConfig, seed: int = 0):
    """A model of ``cfg`` with random weights, built from numpy (no per-op XLA compiles)."""
    rng = np.random.default_rng(seed)
    return model_from_flat(
        cfg, {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in param_shapes(cfg).items()}
    )


def _write(tmp_path_factory, name: str, cfg: ModelConfig):
    path = tmp_path_factory.mktemp(name)
    save_hf(_random_model(cfg), path, overwrite=True)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _write(tmp_path_factory, "bert", BERT)


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    return _write(tmp_path_factory, "mlm", BERT.replace(head="mlm", pooler=False))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    cfg = ModelConfig.llama(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=24, tie_embeddings=True)
    return _write(tmp_path_factory, "llama", cfg)


def _copy(src, dst, *, config=None, tensors=None):
    """A copy of the checkpoint ``src`` with its config dict and/or tensor dict edited."""
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config(cfg) if config else cfg))
    t = load_file(str(src / "model.safetensors"))
    save_file(tensors(dict(t)) if tensors else t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_unsupported_architecture_is_named_with_the_supported_ones(bert_dir, tmp_path):
    bad = _copy(
        bert_dir, tmp_path / "t5", config=lambda c: {**c, "architectures": ["T5ForConditionalGeneration"]}
    )
    msg = (
        "unsupported architecture 'T5ForConditionalGeneration'; jaxslim converts BertModel, BertForMaskedLM, "
    )
    with pytest.raises(ValueError, match=re.escape(msg) + ".*GPT2LMHeadModel.*LlamaForCausalLM"):
        load_hf(bad)
    with pytest.raises(ValueError, match="unsupported architecture 'gemma4'"):
        config_from_hf({"model_type": "gemma4"})


def test_missing_unexpected_and_misshaped_keys_in_one_error(bert_dir, tmp_path):
    def damage(t):
        del t["encoder.layer.1.output.dense.bias"]
        del t["embeddings.LayerNorm.weight"]
        t["encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
        t["encoder.layer.0.intermediate.dense.weight"] = np.zeros((23, 16), np.float32)
        t["encoder.layer.1.attention.self.query.bias"] = np.zeros((16, 1), np.float32)  # wrong rank
        return t

    bad = _copy(bert_dir, tmp_path / "damaged", tensors=damage)
    with pytest.raises(ConversionError) as err:
        load_hf(bad)
    msg = str(err.value)
    assert f"checkpoint {bad} does not match" in msg and "d_ff=24" in msg
    assert "2 missing:\n" in msg
    assert "    embeddings.LayerNorm.weight (for embed.norm.scale)\n" in msg
    assert "    encoder.layer.1.output.dense.bias (for stack.blocks.1.mlp.bo)\n" in msg
    assert "1 unexpected:\n    encoder.layer.0.extra.weight\n" in msg
    assert "2 mis-shaped:\n" in msg
    assert (
        "    encoder.layer.0.intermediate.dense.weight: shape (23, 16) cannot give "
        "stack.blocks.0.mlp.wi (16, 24) (transpose)" in msg
    )
    assert (
        "encoder.layer.1.attention.self.query.bias: shape (16, 1) cannot give stack.blocks.1.attn.bq (2, 8)"
        in msg
    )
    assert isinstance(err.value, ValueError)


def test_config_weights_mismatch(bert_dir, tmp_path):
    bad = _copy(bert_dir, tmp_path / "wider", config=lambda c: {**c, "hidden_size": 32})
    with pytest.raises(ConversionError) as err:
        load_hf(bad)
    msg = str(err.value)
    assert "d_model=32" in msg
    assert "embeddings.word_embeddings.weight: shape (40, 16) cannot give embed.tokens (40, 32)" in msg
    assert "hint: mis-shaped tensors usually mean config.json does not describe these weights" in msg
    assert "missing" not in msg  # the tensors are there, only their shapes disagree


def test_layers_beyond_the_config_are_unexpected(bert_dir, tmp_path):
    bad = _copy(bert_dir, tmp_path / "shallow", config=lambda c: {**c, "num_hidden_layers": 1})
    with pytest.raises(
        ConversionError,
        match=r"16 unexpected:\n    encoder\.layer\.1\.\S+ \(layer 1 does not exist: the config has n_layers=1\)",
    ):
        load_hf(bad)


def test_tensor_the_config_switches_off_is_unexpected(llama_dir, tmp_path):
    def add_bias(t):
        t["model.layers.0.self_attn.q_proj.bias"] = np.zeros(16, np.float32)
        return t

    bad = _copy(llama_dir, tmp_path / "bias", tensors=add_bias)
    with pytest.raises(
        ConversionError, match=r"q_proj\.bias \(the config has no parameter stack\.blocks\.0\.attn\.bq"
    ):
        load_hf(bad)


def test_tied_heads_stored_in_the_file(mlm_dir, llama_dir, tmp_path):
    # a copy of the embedding table as the tied head is accepted...
    def copy_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
        return t

    load_hf(_copy(llama_dir, tmp_path / "copy", tensors=copy_head))

    # ...a different one cannot be tied, and says so
    def other_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1
        return t

    with pytest.raises(
        ConversionError,
        match=r"not tied as the config says:\n    lm_head\.weight differs from model\.embed_tokens\.weight",
    ):
        load_hf(_copy(llama_dir, tmp_path / "other", tensors=other_head))

    def untied_decoder(t):
        t["cls.predictions.decoder.weight"] = np.zeros_like(t["bert.embeddings.word_embeddings.weight"])
        t["cls.predictions.decoder.bias"] = t["cls.predictions.bias"].copy()
        return t

    with pytest.raises(ConversionError) as err:
        load_hf(_copy(mlm_dir, tmp_path / "mlm", tensors=untied_decoder))
    assert "1 not tied" in str(err.value) and "cls.predictions.decoder.weight differs" in str(err.value)


def test_truncated_and_corrupt_files_are_named(bert_dir, tmp_path):
    bad = _copy(bert_dir, tmp_path / "cut")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    pattern = r"cut/model\.safetensors is not a readable safetensors file \(truncated or corrupt\?\)"
    with pytest.raises(ValueError, match=pattern):
        load_hf(bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match=pattern):
        load_hf(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        load_hf(bad)


def test_missing_files_and_fields(bert_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing: a checkpoint directory needs it"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text((bert_dir / "config.json").read_text())
    with pytest.raises(
        FileNotFoundError, match=r"has neither model\.safetensors nor model\.safetensors\.index\.json"
    ):
        load_hf(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(
            FileNotFoundError, match=r"it has pytorch_model\.bin, which jaxslim reads only when"
        ):
            load_hf(tmp_path)
    else:
        with pytest.raises(ValueError, match=r"pytorch_model\.bin cannot be read as a torch state dict"):
            load_hf(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "vocab_size": 4}))
    with pytest.raises(ValueError, match="config.json of a BertModel lacks the field 'hidden_size'"):
        load_hf(tmp_path)


def test_broken_shard_index(bert_dir, tmp_path):
    model = load_hf(bert_dir)
    out = save_hf(model, tmp_path / "sharded", max_shard_bytes=4_000)
    shards = sorted(out.glob("model-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    moved = next(k for k, v in index["weight_map"].items() if v == shards[0].name)
    index["weight_map"][moved] = shards[1].name
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=rf"{shards[1].name} lacks 1 tensor\(s\) that .* places in it: {moved}"
    ):
        load_hf(out)
    shards[0].unlink()
    with pytest.raises(FileNotFoundError, match=rf"{shards[0].name}, listed in .*index\.json, is missing"):
        load_hf(out)


def test_unsupported_variants_are_named():
    llama = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 8,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
    }
    assert config_from_hf({**llama, "rope_theta": 5e5}).rope_theta == 5e5
    assert (
        config_from_hf({**llama, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}).rope_theta
        == 7.0
    )
    with pytest.raises(ValueError, match="Llama rope type 'longrope' is not supported"):
        config_from_hf({**llama, "rope_scaling": {"rope_type": "longrope", "factor": 4.0}})
    with pytest.raises(ValueError, match="Llama rope type 'linear' needs a 'factor'"):
        config_from_hf({**llama, "rope_parameters": {"rope_type": "linear", "rope_theta": 5e5}})
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "vocab_size": 8, "n_embd": 8, "n_layer": 1, "n_head": 2}
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        with pytest.raises(ValueError, match=f"GPT-2 {flag}=True is not supported"):
            config_from_hf({**gpt2, flag: True})
    bert = {
        "architectures": ["BertModel"],
        "vocab_size": 8,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
    }
    with pytest.raises(ValueError, match="position_embedding_type='relative_key' is not supported"):
        config_from_hf({**bert, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="BERT is_decoder=True is not supported"):
        config_from_hf({**bert, "is_decoder": True})


def test_save_hf_refuses_per_layer_widths(tmp_path):
    cfg = BERT.replace(scan_layers=False, layer_heads=(2, 1), layer_ffn=(24, 4))
    with pytest.raises(ValueError, match="per-layer head counts / FFN widths .* cannot express them"):
        save_hf(_random_model(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_hf_refuses_what_hf_cannot_express(tmp_path):
    cfg = ModelConfig.llama(vocab_size=16, d_model=8, n_layers=1, n_heads=2, d_ff=8, activation="gelu")
    with pytest.raises(
        ValueError, match=r"cannot express this model as a Hugging Face Llama: activation='gelu'"
    ):
        save_hf(_random_model(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_hf_never_overwrites_by_accident(bert_dir, tmp_path):
    model = load_hf(bert_dir)
    out = save_hf(model, tmp_path / "out", max_shard_bytes=4_000)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(
        FileExistsError, match="already holds config.json, model-00001-of-.*refusing to overwrite"
    ):
        save_hf(model, out)
    assert sorted(p.name for p in out.iterdir()) == before
    # with overwrite, the old shards go: none of them can shadow the new single file later
    save_hf(model, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.torch
def test_pytorch_model_bin_single_and_sharded(tmp_path):
    """Older checkpoints ship pickled torch weights: read with weights_only=True when torch is installed."""
    torch = require("torch")
    ref = tiny("llama_untied")
    ref.save_pretrained(tmp_path / "safe")
    want = flat_params(load_hf(tmp_path / "safe"))
    state = {k: v.to(torch.bfloat16) if "norm" in k else v for k, v in ref.state_dict().items()}
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
    torch.save(state, single / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
    keys = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, part in halves.items():
        torch.save({k: state[k] for k in part}, sharded / name)
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    for d in (single, sharded):
        got = flat_params(load_hf(d))
        assert got.keys() == want.keys()
        for key in got:  # norms went through bfloat16, the rest is bit-exact
            tol = 1e-2 if "norm" in key else 0
            np.testing.assert_allclose(got[key], want[key], rtol=tol, atol=0, err_msg=key)
    (sharded / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"pytorch_model-00002-of-00002\.bin, listed in .*index\.json"
    ):
        load_hf(sharded)
    torch.save({"w": [1, 2]}, single / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"w is a list, not a tensor"):
        load_hf(single)
