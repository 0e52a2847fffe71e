"""``jaxslim-prune`` end to end on a small BERT with the real MiniLM tokenizer and sentences."""

import json
import shutil

import numpy as np
import pytest
from flax import nnx

from jaxslim.cli import prune as cli
from jaxslim.config import ModelConfig
from jaxslim.convert import load_jaxslim, save_jaxslim
from jaxslim.models import Transformer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_dir):
    """A 2-layer BERT with MiniLM's vocabulary and tokenizer, and a sentence file."""
    d = tmp_path_factory.mktemp("model")
    cfg = ModelConfig.bert(vocab_size=30522, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=64)
    save_jaxslim(Transformer(cfg, rngs=nnx.Rngs(0)), d, overwrite=True)
    shutil.copy(minilm_dir / "tokenizer.json", d / "tokenizer.json")
    rng = np.random.default_rng(0)
    words = "the cat dog sat ran on a mat hill quickly slowly under over big small red".split()
    lines = [" ".join(rng.choice(words, rng.integers(4, 14))) for _ in range(400)]
    (d / "sentences.txt").write_text("\n".join(lines))
    return d


def _args(model_dir, out, *extra):
    return [
        "--model", str(model_dir), "--samples", str(model_dir / "sentences.txt"), "--num-samples", "48",
        "--held-out", "16", "--latency-batch", "2", "--latency-seq", "16", "--out", str(out), *extra,
    ]  # fmt: skip


def test_prunes_several_budgets_and_writes_slim_models(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(_args(model_dir, out, "--flops", "0.5", "0.8")) == 0
    printed = capsys.readouterr().out
    assert "| flops 0.5 |" in printed and "| flops 0.8 |" in printed
    rows = json.loads((out / "summary.json").read_text())
    assert [r["budget"] for r in rows] == [0.5, 0.8]
    for r in rows:
        assert r["flops"] <= r["budget"] and r["params_slim"] < r["params_dense"]
        assert -1.0 <= r["cosine"] <= 1.0 + 1e-6
        small = load_jaxslim(out / f"flops-{r['budget']:g}" / "model")
        assert list(small.cfg.layer_heads) == r["layer_heads"] and list(small.cfg.layer_ffn) == r["layer_ffn"]
        masks = np.load(out / f"flops-{r['budget']:g}" / "masks.npz")
        assert masks["head_mask"].shape == (2, 4) and masks["neuron_mask"].shape == (2, 64)
    assert rows[0]["cosine"] <= rows[1]["cosine"] + 1e-3  # more FLOPs kept, closer to dense
    assert (out / "quality_vs_flops.png").stat().st_size > 1000


def test_latency_budget_runs_on_measured_tables(model_dir, tmp_path):
    out = tmp_path / "lat"
    assert cli.main(_args(model_dir, out, "--latency", "0.7", "--no-tune", "--export-hf")) == 0
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["predicted_latency"] <= 0.7 + 1e-9
    info = json.loads((out / "latency-0.7" / "hf" / "jaxslim_export.json").read_text())
    assert row["hf_export"] == info["format"] and info["format"] in ("slim", "masked-dense")
    assert (out / "latency-0.7" / "hf" / "config.json").is_file()


def test_bad_inputs_exit_2_and_keep_existing_outputs(model_dir, tmp_path, capsys):
    assert cli.main(_args(model_dir, tmp_path / "x", "--flops", "1.5")) == 2
    assert "in (0, 1]" in capsys.readouterr().err
    assert cli.main(_args(tmp_path / "missing", tmp_path / "x", "--flops", "0.5")) == 2
    assert "neither 'minilm' nor a model directory" in capsys.readouterr().err
    out = tmp_path / "kept"
    (out / "flops-0.5").mkdir(parents=True)
    (out / "flops-0.5" / "marker").write_text("earlier run")
    assert cli.main(_args(model_dir, out, "--flops", "0.5")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "flops-0.5" / "marker").read_text() == "earlier run"
