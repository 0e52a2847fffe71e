"""``jaxslim-convert`` through ``main([...])``, the jaxslim directory format, and conversion without torch."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hf_models import inputs, tiny, torch_outputs

from conftest import require
from jaxslim.cli.convert import main
from jaxslim.config import ModelConfig
from jaxslim.convert import ConversionError, flat_params, load_hf, load_jaxslim, save_jaxslim
from jaxslim.convert.hf import model_from_flat, param_shapes


def _random_model(cfg: ModelConfig, seed: int = 0):
    """A model of ``cfg`` with random weights, built from numpy (no per-op XLA compiles)."""
    rng = np.random.default_rng(seed)
    return model_from_flat(
        cfg, {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in param_shapes(cfg).items()}
    )


def _rows(table: str) -> dict[str, tuple[float, float]]:
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ") and "e" in line]
    return {r[1].strip(): (float(r[2]), float(r[3])) for r in rows if r[1].strip() != "output"}


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["bert", "llama_untied"])
def test_to_jax_to_hf_and_check(kind, tmp_path, capsys):
    require("torch")
    src = tmp_path / "src"
    tiny(kind).save_pretrained(src)
    assert main(["to-jax", str(src), str(tmp_path / "jx")]) == 0
    model = load_jaxslim(tmp_path / "jx")
    assert model.cfg.scan_layers
    assert json.loads((tmp_path / "jx" / "jaxslim_config.json").read_text())["arch"] == model.cfg.arch
    np.testing.assert_array_equal(
        flat_params(model)["embed.tokens"], flat_params(load_hf(src))["embed.tokens"]
    )
    assert main(["to-hf", str(tmp_path / "jx"), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "hf"), "--atol", "1e-5"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert (
        "hidden" in rows and ("logits" in rows) == (kind != "bert") and ("pooled" in rows) == (kind == "bert")
    )
    assert all(abs_diff <= 1e-5 for abs_diff, _ in rows.values())
    # an impossible tolerance is reported through the exit status
    assert main(["check", str(tmp_path / "hf"), "--atol", "-1"]) == 1


def test_cli_errors_exit_2_with_a_message(tmp_path, capsys):
    cfg = ModelConfig.bert(vocab_size=16, d_model=8, n_layers=1, n_heads=2, d_ff=8)
    model = _random_model(cfg)
    save_jaxslim(model, tmp_path / "jx")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"architectures": ["T5Model"]}))
    assert main(["to-jax", str(tmp_path / "t5"), str(tmp_path / "out")]) == 2
    assert "unsupported architecture 'T5Model'" in capsys.readouterr().err
    assert main(["to-hf", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "jaxslim_config.json is missing" in capsys.readouterr().err
    assert main(["to-hf", str(tmp_path / "jx"), str(tmp_path / "hf")]) == 0
    assert main(["to-hf", str(tmp_path / "jx"), str(tmp_path / "hf")]) == 2  # no silent overwrite
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["to-hf", str(tmp_path / "jx"), str(tmp_path / "hf"), "--overwrite"]) == 0
    assert main(["check", str(tmp_path / "t5")]) == 2
    with pytest.raises(SystemExit):
        main(["to-jax"])  # argparse usage error


def test_jaxslim_dir_keeps_per_layer_widths_and_dtype(tmp_path):
    cfg = ModelConfig.llama(
        vocab_size=16,
        d_model=16,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=24,
        scan_layers=False,
        layer_heads=(4, 2),
        layer_ffn=(24, 8),
        param_dtype="bfloat16",
    )
    model = _random_model(cfg)
    back = load_jaxslim(save_jaxslim(model, tmp_path / "slim"))
    assert back.cfg == cfg
    a, b = flat_params(model), flat_params(back)
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_jaxslim(model, tmp_path / "slim")


def test_jaxslim_dir_mismatch_is_listed(tmp_path):
    cfg = ModelConfig.gpt2(vocab_size=16, d_model=8, n_layers=2, n_heads=2, d_ff=16)
    save_jaxslim(_random_model(cfg), tmp_path / "jx")
    raw = json.loads((tmp_path / "jx" / "jaxslim_config.json").read_text())
    (tmp_path / "jx" / "jaxslim_config.json").write_text(json.dumps({**raw, "d_ff": 32}))
    with pytest.raises(
        ConversionError, match=r"mis-shaped:\n    stack\.blocks\.mlp\.bi: shape \(2, 16\), expected \(2, 32\)"
    ):
        load_jaxslim(tmp_path / "jx")
    (tmp_path / "jx" / "jaxslim_config.json").write_text(json.dumps({**raw, "n_experts": 4}))
    with pytest.raises(ValueError, match=r"unknown fields \['n_experts'\]"):
        load_jaxslim(tmp_path / "jx")


# Runs in a fresh interpreter where importing torch or transformers fails.
_NO_TORCH = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None
    sys.modules["transformers"] = None
    from jaxslim.convert import load_hf, save_hf
    for name in sys.argv[1:]:
        save_hf(load_hf(name + "/src"), name + "/out")
    cfg = json.load(open(sys.argv[1] + "/out/config.json"))
    assert "transformers_version" not in cfg, cfg  # the fallback config, built without transformers
    import pathlib, shutil
    old = pathlib.Path(sys.argv[1]) / "bin"
    old.mkdir()
    shutil.copy(sys.argv[1] + "/src/config.json", old / "config.json")
    (old / "pytorch_model.bin").write_bytes(b"")
    try:
        load_hf(old)
    except FileNotFoundError as e:  # the hint says how to convert it
        assert "reads only when torch is installed" in str(e) and "safetensors" in str(e), e
    else:
        raise AssertionError("a pytorch_model.bin loaded without torch")
    print("OK")
    """
)


@pytest.mark.torch
def test_load_and_save_without_torch_or_transformers(tmp_path):
    require("torch")
    refs = {}
    for kind in ("llama_untied", "bert_mlm"):
        refs[kind] = tiny(kind)
        refs[kind].save_pretrained(tmp_path / kind / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *(str(tmp_path / k) for k in refs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
    # the config written without transformers still loads in transformers and gives the same model
    ids, mask = inputs()
    for kind, ref in refs.items():
        reloaded = type(ref).from_pretrained(tmp_path / kind / "out", attn_implementation="eager").eval()
        for a, b in zip(torch_outputs(reloaded, ids, mask), torch_outputs(ref, ids, mask), strict=True):
            np.testing.assert_array_equal(a, b)
