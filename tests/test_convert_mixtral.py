"""Mixtral (``MixtralForCausalLM``) <-> jaxslim: PyTorch parity both ways, both expert layouts,
the logit checker, and the errors for checkpoints and configs that do not fit.

The torch tests build tiny random Mixtrals from configs (never downloaded); the others write
checkpoints with ``save_hf`` from random jaxslim models.
"""

import json
import re

import jax
import numpy as np
import pytest
from flax import nnx
from hf_models import build_hf
from safetensors.numpy import load_file, save_file

from conftest import require
from jaxslim.cli.convert import main
from jaxslim.config import ModelConfig, MoeConfig
from jaxslim.convert import (
    ConversionError,
    check,
    config_from_hf,
    config_to_hf,
    flat_params,
    load_hf,
    save_hf,
)
from jaxslim.convert.hf import model_from_flat, param_shapes

VOCAB = 128
MIXTRAL = ModelConfig.llama(
    vocab_size=VOCAB,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    max_len=64,
    moe=MoeConfig(
        num_experts=4, top_k=2, router="topk", dispatch="dropless", every=1, renormalize=True, z_loss_coef=0.0
    ),
)


def _tiny_torch(kind: str):
    """A seeded tiny PyTorch Mixtral: ``untied`` (4 experts, top-2) or ``tied`` (tied head, head_dim
    other than d_model / n_heads, one KV head, 3 experts, top-1, router jitter, another RoPE base)."""
    require("torch")
    require("transformers")
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    if kind == "untied":
        kw |= dict(num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    else:
        kw |= dict(
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            num_local_experts=3,
            num_experts_per_tok=1,
            tie_word_embeddings=True,
            router_jitter_noise=0.1,  # training only: eval mode must switch it off on both sides
            router_aux_loss_coef=0.02,
            rope_parameters={"rope_type": "default", "rope_theta": 123.0},
        )
    return build_hf("MixtralConfig", "MixtralForCausalLM", kw)


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (3, 12))
    mask = np.ones(ids.shape, np.int64)
    mask[1, -4:] = 0  # right padding on one row
    return ids, mask


def _torch_logits(model, ids, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def _jax_logits(model, ids, mask):
    """The logits of ``model`` in eval mode, run as one jitted program (one cached compile instead
    of one per op)."""
    model.eval()
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, attention_mask=m).logits)
    return np.asarray(run(state, ids.astype(np.int32), mask.astype(np.int32)))


def _max_diff(a, b, mask) -> float:
    return float(np.abs(np.asarray(a) - b)[mask.astype(bool)].max())


def _random_model(cfg: ModelConfig, seed: int = 0):
    """A model of ``cfg`` with random weights, built from numpy (no per-op XLA compiles)."""
    rng = np.random.default_rng(seed)
    return model_from_flat(
        cfg, {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in param_shapes(cfg).items()}
    )


@pytest.fixture(scope="module", params=["untied", "tied"])
def saved(request, tmp_path_factory):
    model = _tiny_torch(request.param)
    path = tmp_path_factory.mktemp(f"mixtral_{request.param}")
    model.save_pretrained(path)
    return request.param, model, path


@pytest.fixture(scope="module")
def jax_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixtral_jax")
    save_hf(_random_model(MIXTRAL), path)
    return path


@pytest.mark.torch
def test_save_pretrained_writes_the_per_expert_layout(saved):
    _, _, path = saved
    names = load_file(str(path / "model.safetensors")).keys()
    assert "model.layers.1.block_sparse_moe.experts.0.w1.weight" in names
    assert "model.layers.1.block_sparse_moe.gate.weight" in names
    assert not any(".mlp." in n for n in names)


@pytest.mark.torch
def test_parity_scanned_and_unscanned(saved):
    kind, ref_model, path = saved
    ids, mask = _inputs()
    ref = _torch_logits(ref_model, ids, mask)
    params = {}
    for scan in (True, False):
        model = load_hf(path, scan_layers=scan)
        assert model.cfg.scan_layers == scan and model.cfg.moe.dispatch == "dropless"
        assert (model.lm_head is None) == (kind == "tied")
        assert _max_diff(_jax_logits(model, ids, mask), ref, mask) <= 1e-5
        params[scan] = flat_params(model)
    # the scanned stack holds the unscanned layers' arrays stacked on a leading layers axis
    for key, value in params[True].items():
        if key.startswith("stack.blocks."):
            per_layer = [params[False][key.replace("stack.blocks.", f"stack.blocks.{i}.")] for i in range(2)]
            np.testing.assert_array_equal(value, np.stack(per_layer), err_msg=key)
        else:
            np.testing.assert_array_equal(value, params[False][key], err_msg=key)


@pytest.mark.torch
def test_save_hf_reloads_in_transformers_bit_exact(saved, tmp_path):
    kind, ref_model, path = saved
    out_dir = save_hf(load_hf(path), tmp_path / "export")
    ours, theirs = load_file(str(out_dir / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    hf = json.loads((out_dir / "config.json").read_text())
    assert hf["architectures"] == ["MixtralForCausalLM"] and hf["model_type"] == "mixtral"
    reloaded = type(ref_model).from_pretrained(out_dir, attn_implementation="eager").eval()
    want = ref_model.state_dict()
    got = reloaded.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype and bool((got[key] == want[key]).all()), key
    assert reloaded.config.num_local_experts == ref_model.config.num_local_experts
    assert reloaded.config.router_jitter_noise == ref_model.config.router_jitter_noise
    ids, mask = _inputs(seed=1)
    np.testing.assert_array_equal(_torch_logits(reloaded, ids, mask), _torch_logits(ref_model, ids, mask))
    # the config survives the trip too
    assert config_from_hf(hf) == load_hf(path).cfg


@pytest.mark.torch
def test_fused_layout_of_transformers_5_loads(saved, tmp_path):
    kind, ref_model, path = saved
    ref_model.save_pretrained(tmp_path / "fused", save_original_format=False)
    names = load_file(str(tmp_path / "fused" / "model.safetensors")).keys()
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and not any("block_sparse" in n for n in names)
    fused, original = flat_params(load_hf(tmp_path / "fused")), flat_params(load_hf(path))
    assert fused.keys() == original.keys()
    for key in fused:
        np.testing.assert_array_equal(fused[key], original[key], err_msg=key)
    # and is written back in the original per-expert layout
    out = load_file(str(save_hf(load_hf(tmp_path / "fused"), tmp_path / "again") / "model.safetensors"))
    assert out.keys() == load_file(str(path / "model.safetensors")).keys()


@pytest.mark.torch
def test_logit_checker_and_cli(saved, capsys):
    _, _, path = saved
    result = check(path, batch=2, length=10)
    assert set(result) == {"hidden", "logits"}
    assert all(d["max_abs"] <= 1e-5 for d in result.values()), result
    capsys.readouterr()
    assert main(["check", str(path), "--atol", "1e-5"]) == 0
    assert "| logits |" in capsys.readouterr().out


@pytest.mark.torch
def test_cli_to_jax_and_back(tmp_path):
    ref_model = _tiny_torch("untied")
    ref_model.save_pretrained(tmp_path / "src")
    assert main(["to-jax", str(tmp_path / "src"), str(tmp_path / "jx")]) == 0
    assert main(["to-hf", str(tmp_path / "jx"), str(tmp_path / "hf")]) == 0
    a, b = (
        load_file(str(tmp_path / "src" / "model.safetensors")),
        load_file(str(tmp_path / "hf" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_round_trip_without_torch_is_bit_exact(jax_dir, tmp_path):
    first = load_hf(jax_dir)
    assert first.cfg == MIXTRAL
    again = load_hf(save_hf(first, tmp_path / "once"), scan_layers=False)
    a, b = flat_params(load_hf(jax_dir, scan_layers=False)), flat_params(again)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["stack.blocks.1.moe.wi"].shape == (4, 32, 48)


def _edit(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = edit(dict(load_file(str(src / "model.safetensors"))))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_extra_and_misshaped_experts_in_one_error(jax_dir, tmp_path):
    e = "model.layers.{}.block_sparse_moe.experts.{}.{}.weight"

    def damage(t):
        del t[e.format(1, 2, "w3")]  # one expert missing
        t[e.format(0, 4, "w1")] = t[e.format(0, 0, "w1")]  # an expert the config does not have
        t[e.format(0, 1, "w2")] = np.zeros((32, 47), np.float32)  # one mis-shaped expert
        for x in range(4):  # every expert of one layer mis-shaped alike: one line
            t[e.format(1, x, "w1")] = np.zeros((40, 32), np.float32)
        del t["model.layers.0.block_sparse_moe.gate.weight"]
        return t

    with pytest.raises(ConversionError) as info:
        load_hf(_edit(jax_dir, tmp_path / "bad", damage))
    msg = str(info.value)
    assert "experts=4, expert d_ff=48" in msg
    missing = msg.split("  2 missing:")[1]
    assert (
        "model.layers.1.block_sparse_moe.experts.2.w3.weight (expert 2 of stack.blocks.1.moe.wu)" in missing
    )
    assert "model.layers.0.block_sparse_moe.gate.weight (for stack.blocks.0.moe.router)" in missing
    assert re.search(r"experts\.4\.w1\.weight \(expert 4: the config has 4 experts\)", msg)
    assert "experts.1.w2.weight: shape (32, 47) cannot give stack.blocks.0.moe.wo[1] (48, 32)" in msg
    assert (
        "layers.1.block_sparse_moe.experts.*.w1.weight: shape (40, 32) cannot give stack.blocks.1.moe.wi[*]"
        in msg
    )
    assert msg.count("w1.weight: shape") == 1


def test_fused_and_per_expert_copies_of_one_tensor_are_reported(jax_dir, tmp_path):
    def both(t):
        t["model.layers.0.mlp.experts.down_proj"] = np.zeros((4, 32, 48), np.float32)
        del t["model.layers.1.block_sparse_moe.experts.0.w2.weight"]
        return t

    with pytest.raises(ConversionError) as info:
        load_hf(_edit(jax_dir, tmp_path / "both", both))
    msg = str(info.value)
    assert re.search(
        r"model\.layers\.0\.mlp\.experts\.down_proj \(duplicates "
        r"model\.layers\.0\.block_sparse_moe\.experts\.\*\.w2\.weight, which already gives stack\.blocks\.0\.moe\.wo\)",
        msg,
    )
    assert "experts.0.w2.weight (expert 0 of stack.blocks.1.moe.wo)" in msg


def test_config_to_hf_refuses_what_mixtral_cannot_express(tmp_path):
    m = MIXTRAL.moe
    cases = {
        "moe.dispatch='capacity'": MIXTRAL.replace(moe=m.replace(dispatch="capacity")),
        "moe.router='stochastic'": MIXTRAL.replace(moe=m.replace(router="stochastic", top_k=1)),
        "moe.renormalize=False": MIXTRAL.replace(moe=m.replace(renormalize=False)),
        "moe.every=2": MIXTRAL.replace(moe=m.replace(every=2)),
        "mlp_bias=True": MIXTRAL.replace(mlp_bias=True),
        "arch='gpt2'": ModelConfig.gpt2(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=48, moe=m),
    }
    for why, cfg in cases.items():
        with pytest.raises(
            ValueError, match=r"cannot express this model as a Hugging Face Mixtral: .*" + re.escape(why)
        ):
            config_to_hf(cfg)
    # save_hf refuses before writing anything
    with pytest.raises(ValueError, match="no Hugging Face equivalent|capacity limit"):
        save_hf(_random_model(cases["moe.dispatch='capacity'"]), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_config_mapping_and_unsupported_fields():
    hf = config_to_hf(MIXTRAL.replace(moe=MIXTRAL.moe.replace(jitter=0.05, aux_loss_coef=0.02)))
    assert hf["architectures"] == ["MixtralForCausalLM"]
    assert (hf["num_local_experts"], hf["num_experts_per_tok"]) == (4, 2)
    assert (hf["router_jitter_noise"], hf["router_aux_loss_coef"]) == (0.05, 0.02)
    cfg = config_from_hf(hf)
    assert cfg == MIXTRAL.replace(moe=MIXTRAL.moe.replace(jitter=0.05, aux_loss_coef=0.02))
    # MixtralConfig's own defaults fill fields a hand-written config.json leaves out
    bare = {"architectures": ["MixtralForCausalLM"], "vocab_size": 64, "hidden_size": 16}
    bare |= {
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 24,
        "sliding_window": None,
    }
    cfg = config_from_hf(bare)
    assert (cfg.rope_theta, cfg.norm_eps, cfg.moe.num_experts, cfg.moe.top_k) == (1e6, 1e-5, 8, 2)
    # Mixtral's window applies to every layer, as Mistral's
    assert (
        config_from_hf({**bare, "sliding_window": 4096, "max_position_embeddings": 32768}).sliding_window
        == 4096
    )
    assert config_from_hf({**bare, "sliding_window": 4096, "max_position_embeddings": 4096}).max_len == 4096
    with pytest.raises(ValueError, match="Mixtral rope type 'longrope' is not supported"):
        config_from_hf(
            {**bare, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e6, "factor": 4.0}}
        )
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        config_from_hf({**bare, "hidden_act": "gelu"})
