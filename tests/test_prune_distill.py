"""Prune -> distill: residual-channel slicing, disturbed-Taylor channel scores, distillation."""

import numpy as np
import pytest
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.convert import load_jaxslim, save_jaxslim
from jaxslim.models import Transformer
from jaxslim.prune import BudgetError, bucket_batches
from jaxslim.prune.distill import (
    _distill_objective,
    channel_scores,
    distill,
    model_macs,
    prune_distill,
    slim_channels,
)
from jaxslim.prune.flops import cost_model
from jaxslim.prune.slim import slim

CONFIGS = {
    "bert": ModelConfig.bert(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32),
    "gpt2": ModelConfig.gpt2(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32),
    "llama": ModelConfig.llama(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48),
}


def _batches(n=64, batch_size=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = [list(rng.integers(1, 64, size=int(rng.integers(6, 30)))) for _ in range(n)]
    return bucket_batches(ids, batch_size=batch_size)


def _hidden(model, b):
    return np.asarray(model(b["tokens"], attention_mask=b["attention_mask"]).hidden)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("scan", [True, False])
def test_keeping_every_channel_is_the_identity_and_a_subset_narrows_every_residual_weight(arch, scan):
    model = Transformer(CONFIGS[arch].replace(scan_layers=scan), rngs=nnx.Rngs(0))
    b = _batches()[0]
    same = slim_channels(model, np.arange(32))
    np.testing.assert_array_equal(_hidden(same, b), _hidden(model, b))
    keep = np.arange(0, 32, 2)
    small = slim_channels(model, keep[::-1])  # order does not matter
    assert small.cfg.d_model == 16 and small.cfg.head_dim_ == model.cfg.head_dim_
    old = dict(nnx.to_flat_state(nnx.state(model)))
    for path, v in nnx.to_flat_state(nnx.state(small)):
        x, y = np.asarray(old[path].get_value()), np.asarray(v.get_value())
        for ax in [i for i, (a, c) in enumerate(zip(x.shape, y.shape, strict=True)) if a != c]:
            x = np.take(x, keep, axis=ax)
        np.testing.assert_array_equal(x, y, err_msg=str(path))
    assert _hidden(small, b).shape == (*b["tokens"].shape, 16)


def test_channel_slicing_composes_with_head_and_neuron_slimming():
    model = Transformer(CONFIGS["bert"], rngs=nnx.Rngs(1))
    hm = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], np.float32)
    nm = (np.random.default_rng(0).random((2, 64)) > 0.5).astype(np.float32)
    keep = np.arange(5, 29)
    b = _batches()[0]
    a = slim_channels(slim(model, hm, nm), keep)
    c = slim(slim_channels(model, keep), hm, nm)
    np.testing.assert_allclose(_hidden(a, b), _hidden(c, b), atol=1e-5)


def test_bad_channel_lists_are_refused():
    model = Transformer(CONFIGS["gpt2"], rngs=nnx.Rngs(0))
    for keep, match in (([], "distinct"), ([1, 1, 2], "distinct"), ([0, 40], "outside")):
        with pytest.raises(ValueError, match=match):
            slim_channels(model, keep)


def test_a_dead_channel_scores_zero_and_is_cut_first():
    model = Transformer(CONFIGS["bert"], rngs=nnx.Rngs(0))
    dead = 7
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        x, axes = np.array(v.get_value()), v.get_metadata()["out_sharding"]
        for i, a in enumerate(axes):
            if a in ("embed", "norm") and x.shape[i] == 32:
                idx = [slice(None)] * x.ndim
                idx[i] = dead
                x[tuple(idx)] = 0.0
        v.set_value(x)
    scores = channel_scores(model, _batches())
    assert scores[dead] == 0.0
    assert np.all(np.delete(scores, dead) > 0)
    result = prune_distill(model, _batches(), channel_keep=31 / 32, inner_budget=1.0, steps=1)
    assert dead not in result.channels and len(result.channels) == 31


def test_the_noise_is_what_makes_the_importance_nonzero():
    model = Transformer(CONFIGS["gpt2"], rngs=nnx.Rngs(0))
    assert np.all(channel_scores(model, _batches(), noise_std=0.0) == 0.0)
    assert np.all(channel_scores(model, _batches(), noise_std=0.01) > 0.0)


def test_distillation_lowers_the_distance_to_the_teacher():
    teacher = Transformer(CONFIGS["gpt2"], rngs=nnx.Rngs(0))
    keep = np.arange(0, 32, 2)
    student = slim_channels(teacher, keep)
    batches = _batches()

    def distance(s):
        total = 0.0
        for b in batches:
            out = teacher(b["tokens"], attention_mask=b["attention_mask"])
            batch = dict(
                b, target_hidden=np.asarray(out.hidden)[..., keep], target_logits=np.asarray(out.logits)
            )
            total += float(_distill_objective(s, batch, None)[0])
        return total / len(batches)

    before = distance(student)
    trained, losses = distill(student, teacher, batches, channels=keep, steps=40, lr=3e-3, warmup_steps=2)
    after = distance(trained)
    assert len(losses) == 40 and np.all(np.isfinite(losses))
    assert after < 0.8 * before, (before, after)
    with pytest.raises(ValueError, match="d_model=16 but 32"):
        distill(student, teacher, batches, steps=1)


def test_prune_distill_end_to_end_is_smaller_and_round_trips(tmp_path):
    teacher = Transformer(CONFIGS["llama"], rngs=nnx.Rngs(0))
    batches = _batches()
    r = prune_distill(teacher, batches, channel_keep=0.75, inner_budget=0.5, steps=5, lr=1e-3)
    cfg = r.model.cfg
    assert cfg.d_model == 24 and len(r.channels) == 24
    assert not cfg.uniform and sum(cfg.layer_heads) + sum(cfg.layer_ffn) < 8 + 96
    assert 0.0 < r.flops < 0.75
    assert set(r.losses) == {"embedding", "inner"} and len(r.losses["inner"]) == 5
    save_jaxslim(r.model, tmp_path / "student")
    back = load_jaxslim(tmp_path / "student")
    b = batches[0]
    np.testing.assert_array_equal(_hidden(back, b), _hidden(r.model, b))
    for bad in (dict(channel_keep=0.0), dict(inner_budget=1.5)):
        with pytest.raises(BudgetError):
            prune_distill(teacher, batches, steps=1, **bad)


def test_macs_of_a_uniform_model_match_the_cost_model():
    cfg = CONFIGS["llama"]
    cm = cost_model(cfg, 20.0)
    assert model_macs(cfg, 20.0) == pytest.approx(cm.dense_macs)
    half = cfg.replace(scan_layers=False, layer_heads=(2, 4), layer_ffn=(10, 48))
    expect = (1 + 2) * cm.group_macs + (10 + 48) * cm.neuron_macs
    assert model_macs(half, 20.0) == pytest.approx(expect)
