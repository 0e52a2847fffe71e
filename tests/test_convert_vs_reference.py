"""Hugging Face PyTorch parity of the converter, both ways, on tiny random models and the real MiniLM."""

import json

import numpy as np
import pytest
from hf_models import (
    VOCAB,
    assert_exports_and_reloads,
    assert_round_trip_bit_exact,
    build_hf,
    inputs,
    max_diff,
    tiny,
    torch_outputs,
)
from safetensors.numpy import load_file

from conftest import require
from jaxslim.config import ModelConfig
from jaxslim.convert import config_from_hf, config_to_hf, flat_params, load_hf, save_hf

pytestmark = pytest.mark.torch

# tied/untied heads of both decoders; llama_bias adds attention/MLP biases, a head_dim other than
# d_model / n_heads and a single KV head
KINDS = ["bert", "bert_mlm", "gpt2", "gpt2_untied", "llama_tied", "llama_untied", "llama_bias"]


def build(kind: str):
    """A seeded tiny PyTorch model: the kinds of ``hf_models.tiny`` plus two variants."""
    if kind not in ("gpt2_untied", "llama_bias"):
        return tiny(kind)
    if kind == "gpt2_untied":
        kw = dict(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=40,
            n_positions=64,
            tie_word_embeddings=False,
        )
        return build_hf("GPT2Config", "GPT2LMHeadModel", kw, seed=1)
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=40,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 123.0},
    )
    return build_hf("LlamaConfig", "LlamaForCausalLM", kw, seed=1)


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory):
    require("torch")
    model = build(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, path


def test_parity_scanned_and_unscanned(saved):
    kind, ref_model, path = saved
    ids, mask = inputs()
    ref_hidden, ref_logits = torch_outputs(ref_model, ids, mask)
    models = {scan: load_hf(path, scan_layers=scan) for scan in (True, False)}
    outs = {}
    for scan, model in models.items():
        assert model.cfg.scan_layers == scan
        out = model(ids.astype(np.int32), attention_mask=mask)
        assert max_diff(out.hidden, ref_hidden, mask) <= 1e-5
        if ref_logits is not None:
            assert out.logits is not None and max_diff(out.logits, ref_logits, mask) <= 1e-5
        outs[scan] = out
    # the same arrays in both layouts, hence the same outputs up to XLA's loop-vs-unrolled rounding
    scanned, unscanned = flat_params(models[True]), flat_params(models[False])
    for key, value in scanned.items():
        if key.startswith("stack.blocks."):
            layers = [unscanned[key.replace("stack.blocks.", f"stack.blocks.{i}.")] for i in range(2)]
            np.testing.assert_array_equal(value, np.stack(layers))
        else:
            np.testing.assert_array_equal(value, unscanned[key])
    np.testing.assert_allclose(outs[True].hidden, outs[False].hidden, atol=1e-6, rtol=0)
    # left padding too: fully masked query rows must not leak NaNs into real tokens
    left = mask[:, ::-1].copy()
    ref_hidden, _ = torch_outputs(ref_model, ids, left)
    assert max_diff(models[True](ids.astype(np.int32), attention_mask=left).hidden, ref_hidden, left) <= 1e-5
    tied = kind in ("gpt2", "llama_tied")
    assert (models[True].lm_head is None) == (tied or kind.startswith("bert"))


def test_save_hf_reloads_in_transformers_with_same_tensors_and_outputs(saved, tmp_path):
    _, ref_model, path = saved
    out_dir = save_hf(load_hf(path), tmp_path / "export")
    # the exported file holds exactly the tensors transformers itself saved (buffers aside)
    assert_exports_and_reloads(ref_model, path, out_dir, *inputs(seed=1))


def test_load_save_load_is_bit_exact(saved, tmp_path):
    _, _, path = saved
    assert_round_trip_bit_exact(path, tmp_path)


def test_config_round_trip(saved):
    _, _, path = saved
    hf = json.loads((path / "config.json").read_text())
    cfg = config_from_hf(hf)
    assert config_from_hf(config_to_hf(cfg)) == cfg
    assert isinstance(cfg, ModelConfig)


@pytest.mark.parametrize("kind", ["bert_mlm", "llama_untied"])
def test_sharded_checkpoint_with_index(kind, tmp_path):
    require("torch")
    ref_model = build(kind)
    ref_model.save_pretrained(tmp_path / "src")
    out = save_hf(load_hf(tmp_path / "src"), tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert not (out / "model.safetensors").exists()
    ids, mask = inputs()
    ref_hidden, ref_logits = torch_outputs(ref_model, ids, mask)
    got = load_hf(out)(ids.astype(np.int32), attention_mask=mask)
    assert max_diff(got.hidden, ref_hidden, mask) <= 1e-5
    assert max_diff(got.logits, ref_logits, mask) <= 1e-5
    reloaded = type(ref_model).from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_array_equal(torch_outputs(reloaded, ids, mask)[0], ref_hidden)


def test_pretraining_checkpoint_loads_as_masked_lm(tmp_path):
    """Checkpoints like bert-base-uncased say BertForMaskedLM but keep the pooler and the NSP head."""
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    transformers.BertForPreTraining(cfg).save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "architectures": ["BertForMaskedLM"]}))
    model = load_hf(tmp_path)
    assert model.cfg.head == "mlm" and model.cfg.pooler  # the pooler is kept; the NSP head is skipped
    ref = transformers.BertForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = inputs()
    _, ref_logits = torch_outputs(ref, ids, mask)
    assert max_diff(model(ids.astype(np.int32), attention_mask=mask).logits, ref_logits, mask) <= 1e-5


def test_bfloat16_checkpoint(tmp_path):
    torch = require("torch")
    ref_model = tiny("llama_untied").to(torch.bfloat16)
    ref_model.save_pretrained(tmp_path / "bf16")
    model = load_hf(tmp_path / "bf16")
    assert model.cfg.param_dtype == "float32"
    ids, mask = inputs()
    # bf16 -> fp32 is exact, so the reference is the bf16 weights run in fp32; loaded afresh, because
    # .float() of the bf16 model would keep its bf16-rounded RoPE frequency buffer
    fp32 = type(ref_model).from_pretrained(
        tmp_path / "bf16", dtype=torch.float32, attn_implementation="eager"
    )
    ref_hidden, ref_logits = torch_outputs(fp32.eval(), ids, mask)
    out = model(ids.astype(np.int32), attention_mask=mask)
    assert max_diff(out.hidden, ref_hidden, mask) <= 1e-5
    assert max_diff(out.logits, ref_logits, mask) <= 1e-5
    # written back in bf16, the file holds the original bits
    out_dir = save_hf(model, tmp_path / "again", dtype="bfloat16")
    ours = load_file(str(out_dir / "model.safetensors"))
    theirs = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key
    assert json.loads((out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    half = load_hf(tmp_path / "bf16", param_dtype="bfloat16", scan_layers=False)
    assert str(half.stack.blocks[0].attn.wq[...].dtype) == "bfloat16"


def test_real_minilm_matches_pytorch(minilm_dir):
    torch = require("torch")
    transformers = require("transformers")
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "jaxslim loads a real sentence encoder without torch.",
        "Short one.",
    ]
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    enc = tok(sentences, padding=True, return_tensors="np")
    ref = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        want = ref(
            input_ids=torch.tensor(enc["input_ids"]),
            attention_mask=torch.tensor(enc["attention_mask"]),
            token_type_ids=torch.tensor(enc["token_type_ids"]),
        )
    model = load_hf(minilm_dir)
    assert model.cfg == ModelConfig.minilm_l6(pooler=True)
    got = model(
        enc["input_ids"].astype(np.int32),
        attention_mask=enc["attention_mask"],
        token_type_ids=enc["token_type_ids"].astype(np.int32),
    )
    mask = enc["attention_mask"].astype(bool)
    assert mask.sum() < mask.size  # the batch really is padded
    assert np.abs(np.asarray(got.hidden) - want.last_hidden_state.numpy())[mask].max() <= 1e-4
    assert np.abs(np.asarray(got.pooled) - want.pooler_output.numpy()).max() <= 1e-4
