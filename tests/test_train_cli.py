"""The training entry points end to end: presets, overrides, the run directory, resume, and every
kind of bad input (unknown preset, wrong override type, incompatible resume, missing corpus, NaN)."""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.checkpoint import Checkpointer, IncompatibleCheckpointError
from jaxslim.cli import train as cli
from jaxslim.cli.presets import PresetError, available_presets, load_preset
from jaxslim.config import CodecConfig, TrainConfig
from jaxslim.data import CorpusError
from jaxslim.method import Method
from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer
from jaxslim.training import NonFiniteLossError, abstract_train_state, train

PRESETS = ["gpt2_small", "kjv_llama", "kjv_llama:tiny", "shakespeare_bert", "shakespeare_bert:tiny"]
PRESETS += ["shakespeare_gpt", "shakespeare_gpt:tiny"]
PRESETS += ["switch_shakespeare", "switch_shakespeare:tiny,experts=8,dropless"]
PRESETS += ["thor_shakespeare", "thor_shakespeare:tiny,per=token,alpha=0"]
PRESETS += ["staged_shakespeare", "staged_shakespeare:tiny"]
PRESETS += ["llama2_7b", "llama2_7b:tiny", "llama3_8b", "llama3_8b:2k", "mixtral_8x7b", "mixtral_8x7b:tiny"]
PRESETS += ["llama3_70b", "llama3_70b:v5e"]


def test_every_preset_is_listed_and_tested():
    assert sorted({p.split(":")[0] for p in PRESETS}) == available_presets()


@pytest.mark.parametrize("spec", PRESETS)
def test_preset_builds_model_and_optimizer_abstractly(spec):
    cfg = load_preset(spec)
    assert isinstance(cfg, TrainConfig)
    model = nnx.eval_shape(lambda: Transformer(cfg.model, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n > 10_000
    opt = jax.eval_shape(build_optimizer(cfg.optim, cfg.steps).init, params)
    assert len(jax.tree.leaves(opt)) >= 2 * len(jax.tree.leaves(params))
    x = jax.ShapeDtypeStruct((2, cfg.data.seq_len), jnp.int32)
    logits = jax.eval_shape(lambda m, t: m(t, rng=jax.random.key(0)).logits, model, x)
    assert logits.shape == (2, cfg.data.seq_len, cfg.model.vocab_size)


def test_overrides_reach_the_config():
    cfg = cli.parse(["shakespeare_gpt:tiny", "--optim.lr", "3e-4", "--data.batch-size", "16", "--steps", "7"])
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.steps) == (3e-4, 16, 7)
    assert cfg.model == load_preset("shakespeare_gpt:tiny").model


def test_moe_overrides_and_preset_options():
    cfg = cli.parse(["switch_shakespeare:tiny", "model.moe:moe-config", "--model.moe.num-experts", "8"])
    assert (cfg.model.moe.num_experts, cfg.model.moe.offset) == (8, 1)  # the rest stays the preset's
    assert cli.parse(["switch_shakespeare:tiny", "model.moe:none"]).model.moe is None
    with pytest.raises(ValueError, match="preset option 'dropless' is not one of"):
        load_preset("thor_shakespeare:tiny,dropless")


def test_codec_flags_and_their_flat_shorthand():
    parse = cli.parse
    tyro_form = [
        "checkpoint.codec:codec-config",
        "--checkpoint.codec.mode",
        "excp",
        "--checkpoint.codec.weight-bits",
        "3",
    ]
    flat = ["--checkpoint.compression=excp", "--checkpoint.weight-bits", "3"]
    assert parse(["shakespeare_gpt:tiny", "--steps", "7", *tyro_form]).checkpoint.codec == CodecConfig(
        weight_bits=3
    )
    cfg = parse(
        ["switch_shakespeare:tiny", *flat, "--steps", "7", "model.moe:moe-config", "--model.moe.top-k", "2"]
    )
    assert (cfg.checkpoint.codec, cfg.model.moe.top_k, cfg.steps) == (CodecConfig(weight_bits=3), 2, 7)
    lossless = parse(["shakespeare_gpt:tiny", "--checkpoint.compression", "lossless"]).checkpoint.codec
    assert lossless == CodecConfig(mode="lossless")
    assert parse(["shakespeare_gpt:tiny", "--checkpoint.compression", "none"]).checkpoint.codec is None
    assert parse(["shakespeare_gpt:tiny"]).checkpoint.codec is None
    # boolean codec fields are switches, in both spellings
    switched = parse(["shakespeare_gpt:tiny", *flat, "--checkpoint.no-momentum-gain", "--steps", "7"])
    assert switched.checkpoint.codec == CodecConfig(weight_bits=3, momentum_gain=False)
    on = ["--checkpoint.compression", "excp", "--checkpoint.no-residual-gain", "--checkpoint.residual-gain"]
    assert parse(["shakespeare_gpt:tiny", *on]).checkpoint.codec == CodecConfig()


def test_stages_that_do_not_fit_the_model_are_refused_before_the_run(capsys):
    assert cli.main(["staged_shakespeare:tiny", "--model.n-layers", "3", "--workdir", "never"]) == 2
    assert "TrainConfig.stages[0] does not fit the model" in capsys.readouterr().err
    assert not pathlib.Path("never").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        # seq_len 28 over a context axis of 8 (the suite's 8 CPU devices)
        (
            ["--mesh.data", "1", "--mesh.context", "8", "--data.seq-len", "28"],
            "DataConfig.seq_len=28 must be a multiple of the 8 chunks",
        ),
        (
            ["--mesh.data", "8", "--data.batch-size", "12"],
            "DataConfig.batch_size=12 must be a multiple of the 8 devices",
        ),
    ],
    ids=["context", "batch"],
)
def test_batch_or_sequence_the_mesh_cannot_split_is_refused_before_the_run(capsys, argv, message):
    assert cli.main(["shakespeare_gpt:tiny", *argv, "--workdir", "never"]) == 2
    assert message in capsys.readouterr().err
    assert not pathlib.Path("never").exists()


def test_unknown_preset_is_a_clear_error(capsys):
    assert cli.main(["no_such_preset"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'no_such_preset'" in err and "shakespeare_gpt" in err
    with pytest.raises(PresetError, match="takes '' or 'tiny'"):
        load_preset("shakespeare_gpt:huge")


def test_wrong_override_type_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(["shakespeare_gpt:tiny", "--optim.lr", "fast"])
    assert e.value.code == 2
    assert "--optim.lr" in capsys.readouterr().err


def test_invalid_override_value_is_a_clear_error(capsys):
    assert cli.main(["shakespeare_gpt:tiny", "--optim.lr", "-1"]) == 2
    assert "OptimConfig.lr must be a number > 0, got -1.0" in capsys.readouterr().err


def _tiny(tmp_path: pathlib.Path, **changes) -> TrainConfig:
    cfg = load_preset("shakespeare_gpt:tiny")
    return dataclasses.replace(cfg, workdir=str(tmp_path / "run"), tensorboard=True, **changes)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = _tiny(tmp, steps=8, profile_start=2, profile_steps=2)
    return cfg, train(cfg, progress=False)


def test_run_directory_holds_everything(finished_run):
    cfg, result = finished_run
    run = pathlib.Path(cfg.workdir)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == cfg.steps // cfg.log_every and losses[-1] < losses[0]
    assert any("eval_loss" in r for r in records)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "config.json").read_text())["steps"] == cfg.steps
    assert (run / "tokenizer.json").exists()
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]
    assert result.sample and (run / "samples.txt").read_text().strip() == result.sample.strip()
    assert set(result.baselines) >= {"unigram", "bigram"}
    assert np.isfinite(result.eval_metrics["eval_loss"])
    assert list((run / "profile").rglob("*.xplane.pb"))  # the jax.profiler window


def test_rerun_resumes_and_says_so(finished_run, capsys):
    cfg, _ = finished_run
    result = train(dataclasses.replace(cfg, steps=10), progress=False)
    assert result.resumed_from == 8
    assert int(result.state.step) == 10
    assert "resuming from step 8" in capsys.readouterr().out


def test_incompatible_resume_names_the_parameters(tmp_path, capsys):
    cfg = _tiny(tmp_path, steps=4)
    train(cfg, progress=False)
    before = sorted(p.name for p in (pathlib.Path(cfg.workdir) / "checkpoints").iterdir())
    wider = dataclasses.replace(cfg, model=cfg.model.replace(d_model=96, n_heads=4), steps=6)
    with pytest.raises(
        IncompatibleCheckpointError, match=r"(?s)embed/tokens.*saved \(\d+, 64\).*expected \(\d+, 96\)"
    ):
        train(wider, progress=False)
    assert sorted(p.name for p in (pathlib.Path(cfg.workdir) / "checkpoints").iterdir()) == before
    args = ["shakespeare_gpt:tiny", f"--workdir={cfg.workdir}", "--model.d-model=96", "--steps=6"]
    assert cli.main(args) == 2
    assert "d_model: 64 -> 96" in capsys.readouterr().err


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_corpus.txt"
    with pytest.raises((CorpusError, FileNotFoundError), match="no_such_corpus.txt"):
        train(_tiny(tmp_path, data=dataclasses.replace(_tiny(tmp_path).data, corpus=str(missing))))
    assert cli.main(["shakespeare_gpt:tiny", f"--data.corpus={missing}", f"--workdir={tmp_path}"]) == 2
    assert "no_such_corpus.txt" in capsys.readouterr().err


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    cfg = _tiny(tmp_path, steps=4)
    good = train(cfg, progress=False)
    poison = lambda out, batch: (jnp.float32(jnp.nan), {})  # noqa: E731
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss or gradient at step 5 .*checkpoint \(step 4\) is kept"
    ):
        train(
            dataclasses.replace(cfg, steps=8),
            methods=(Method("poison", loss_terms=[poison]),),
            progress=False,
        )
    with Checkpointer(pathlib.Path(cfg.workdir) / "checkpoints", read_only=True) as ck:
        assert ck.all_steps() == [4]
        restored, _ = ck.restore(abstract_train_state(good.state))
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(good.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_large_batch_optimizer_from_the_command_line_logs_its_metrics(tmp_path):
    """LAMB with a WSD schedule, gradient noise and AGVM, all from flags: the run writes the trust
    ratios and AGVM multipliers to metrics.jsonl and the learning rate follows the schedule."""
    from jaxslim.optim import build_schedule

    cfg = cli.parse(
        [
            "shakespeare_gpt:tiny",
            *("--optim.name", "lamb", "--optim.decay", "wsd", "--optim.warmup-steps", "2"),
            *("--optim.noise-eta", "0.01", "--optim.agvm-every", "2", "--steps", "6", "--log-every", "1"),
            *("--checkpoint.every", "0", "--sample-tokens", "0", "--no-tensorboard"),
            f"--workdir={tmp_path / 'run'}",
        ]
    )
    assert (cfg.optim.name, cfg.optim.decay, cfg.optim.agvm_every) == ("lamb", "wsd", 2)
    train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    for r in steps:
        assert 0 < r["trust_ratio/min"] <= r["trust_ratio/mean"] <= r["trust_ratio/max"] < 100
        assert r["agvm/mu_0"] > 0
    schedule = build_schedule(cfg.optim, cfg.steps)
    np.testing.assert_allclose(
        [r["learning_rate"] for r in steps], [float(schedule(s - 1)) for s in range(1, 7)], rtol=1e-6
    )
