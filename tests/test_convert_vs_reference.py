"""Hugging Face PyTorch parity of the converter, both ways, on tiny random models and the real MiniLM."""

import numpy as np
import pytest
from conftest import require
from hf_models import inputs, tiny, torch_outputs

from jaxslim.cli.convert import main as convert_main
from jaxslim.convert import flat_params, load_hf, load_jaxslim, save_hf, save_jaxslim

KINDS = ["bert", "bert_mlm", "gpt2", "llama_tied", "llama_untied"]
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory):
    require("torch")
    model = tiny(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, path


def _max_diff(a, b, mask):
    return float(np.abs(np.asarray(a) - b)[mask.astype(bool)].max())


def test_parity_scanned_and_unscanned(saved):
    kind, ref_model, path = saved
    ids, mask = inputs()
    ref_hidden, ref_logits = torch_outputs(ref_model, ids, mask)
    outs = []
    for scan in (True, False):
        model = load_hf(path, scan_layers=scan)
        assert model.cfg.scan_layers == scan
        out = model(ids.astype(np.int32), attention_mask=mask)
        assert _max_diff(out.hidden, ref_hidden, mask) <= 1e-5
        if ref_logits is not None:
            assert _max_diff(out.logits, ref_logits, mask) <= 1e-5
        outs.append(out)
    np.testing.assert_allclose(outs[0].hidden, outs[1].hidden, atol=1e-6, rtol=0)
    if kind == "llama_tied":
        assert outs[0].logits is not None and load_hf(path).lm_head is None
    if kind == "llama_untied":
        assert load_hf(path).lm_head is not None


def test_save_hf_reloads_in_transformers_with_same_outputs(saved, tmp_path):
    kind, ref_model, path = saved
    ids, mask = inputs(seed=1)
    out_dir = save_hf(load_hf(path), tmp_path / "export")
    reloaded = type(ref_model).from_pretrained(out_dir, attn_implementation="eager").eval()
    for a, b in zip(torch_outputs(reloaded, ids, mask), torch_outputs(ref_model, ids, mask), strict=True):
        if b is not None:
            np.testing.assert_array_equal(a, b)


def test_round_trip_is_bit_exact(saved, tmp_path):
    _, _, path = saved
    first = load_hf(path, scan_layers=False)
    again = load_hf(save_hf(first, tmp_path / "once"), scan_layers=False)
    a, b = flat_params(first), flat_params(again)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sharded_checkpoint_with_index(saved, tmp_path):
    kind, ref_model, path = saved
    out = save_hf(load_hf(path), tmp_path / "sharded", max_shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("model-*.safetensors"))) > 1
    ids, mask = inputs()
    ref_hidden, _ = torch_outputs(ref_model, ids, mask)
    assert _max_diff(load_hf(out)(ids.astype(np.int32), attention_mask=mask).hidden, ref_hidden, mask) <= 1e-5


@pytest.mark.parametrize("kind", ["bert", "llama_untied"])
def test_cli_to_jax_to_hf_and_check(kind, tmp_path, capsys):
    require("torch")
    path = tmp_path / "src"
    tiny(kind).save_pretrained(path)
    assert convert_main(["to-jax", str(path), str(tmp_path / "jx")]) == 0
    model = load_jaxslim(tmp_path / "jx")
    assert model.cfg.scan_layers
    assert convert_main(["to-hf", str(tmp_path / "jx"), str(tmp_path / "hf")]) == 0
    assert convert_main(["check", str(tmp_path / "hf")]) == 0
    table = capsys.readouterr().out
    rows = [
        line.split("|")
        for line in table.splitlines()
        if line.startswith("| hidden") or line.startswith("| logits")
    ]
    assert rows and all(float(r[2]) <= 1e-5 for r in rows)
    save_jaxslim(model, tmp_path / "jx2")
    assert all(
        np.array_equal(v, flat_params(load_jaxslim(tmp_path / "jx2"))[k])
        for k, v in flat_params(model).items()
    )


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
            input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])
        )
    model = load_hf(minilm_dir)
    got = model(enc["input_ids"].astype(np.int32), attention_mask=enc["attention_mask"])
    mask = enc["attention_mask"].astype(bool)
    assert np.abs(np.asarray(got.hidden) - want.last_hidden_state.numpy())[mask].max() <= 1e-4
    assert np.abs(np.asarray(got.pooled) - want.pooler_output.numpy()).max() <= 1e-4
