"""Staged training in the trainer: growth mid-run, checkpoints around it, exact resume across it,
and the planner's rules."""

import json

import jax
import numpy as np
import pytest

from jaxslim.config import CheckpointConfig, DataConfig, ModelConfig, OptimConfig, StageConfig, TrainConfig
from jaxslim.grow.bundle import GrowthMethod
from jaxslim.grow.planner import (
    CONSTANTS,
    THRESHOLDS,
    kaplan_curve,
    kaplan_plan,
    restart_step,
    slope_growth_index,
)
from jaxslim.grow.stages import Staging, stage_models, start_model
from jaxslim.training import loop

STAGE = StageConfig(width=2, depth=2, at_step=10, restart_step=6, rewarm_steps=3)


def _cfg(workdir, **kw):
    return TrainConfig(
        model=ModelConfig.gpt2(vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=64),
        data=DataConfig(seq_len=32, batch_size=8, bpe_vocab_size=512),
        optim=OptimConfig(warmup_steps=5, lr=1e-3),
        checkpoint=CheckpointConfig(every=5, keep=10, async_save=False),
        steps=30,
        log_every=1,
        eval_every=5,
        eval_batches=2,
        tensorboard=False,
        workdir=str(workdir),
        stages=(STAGE,),
        **kw,
    )


class _Crash(Exception):
    pass


def _crash_at(monkeypatch, n_steps):
    """Makes the loop raise during its ``n_steps``-th training step of this invocation."""
    calls = {"n": 0}
    real = Staging.step_flops

    def step_flops(self):
        calls["n"] += 1
        if calls["n"] == n_steps:
            raise _Crash
        return real(self)

    monkeypatch.setattr(Staging, "step_flops", step_flops)


def _losses(workdir):
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def test_staged_run_grows_and_resumes_across_the_growth_exactly(tmp_path, monkeypatch):
    ref = loop.train(_cfg(tmp_path / "ref"), progress=False)
    # 30 schedule steps, jumping back from 10 to 6 (+1, the re-warm's first step): 33 updates
    assert int(ref.state.step) == 33
    assert ref.setup.graphdef is not None
    records = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    growth = [r for r in records if "growth" in r]
    assert [(r["step"], r["growth"], r["growth/restart_step"]) for r in growth] == [(10, 1, 6)]
    lr = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    # re-warm over 3 steps from schedule step R + 1 = 7: base(9) * (t - 6) / 3, then base(t)
    assert lr[11] == pytest.approx(lr[13] / 3, rel=1e-5)
    assert lr[12] == pytest.approx(lr[13] * 2 / 3, rel=1e-5)
    assert lr[13] > lr[14] and lr[10] == pytest.approx(lr[13], rel=1e-6)  # update 10 used base(9) too
    flops = [r["flops"] for r in records if "flops" in r and "eval_loss" in r]
    assert flops == sorted(flops) and len(flops) >= 6
    # the state before growth is the main directory's step 10, the state after it a stage checkpoint
    assert (tmp_path / "ref" / "checkpoints" / "10").is_dir()
    assert (tmp_path / "ref" / "stages" / "grown-1" / "10").is_dir()

    run = tmp_path / "run"
    with pytest.raises(_Crash):  # dies in the first step after the growth at step 10
        _train_until_growth(run, monkeypatch)
    monkeypatch.undo()
    _crash_at(monkeypatch, 13)  # resumes from step 10 (before growth), grows again, dies at step 23
    with pytest.raises(_Crash):
        loop.train(_cfg(run), progress=False)
    monkeypatch.undo()
    resumed = loop.train(_cfg(run), progress=False)  # from the grown model's checkpoint at step 20
    assert resumed.resumed_from == 20
    got, want = _losses(run), _losses(tmp_path / "ref")
    assert set(want) <= set(got)
    assert all(got[s] == want[s] for s in want)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(ref.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.eval_metrics["eval_loss"] == ref.eval_metrics["eval_loss"]


def _train_until_growth(run, monkeypatch):
    """Runs until the first step after the growth and dies there."""
    real_grow = GrowthMethod._maybe_grow
    state = {"armed": False}
    real = Staging.step_flops

    def grow(self, run):
        out = real_grow(self, run)
        state["armed"] = state["armed"] or out is not None
        return out

    def step_flops(self):
        if state["armed"]:
            raise _Crash
        return real(self)

    monkeypatch.setattr(GrowthMethod, "_maybe_grow", grow)
    monkeypatch.setattr(Staging, "step_flops", step_flops)
    loop.train(_cfg(run), progress=False)


def test_stage_models_and_errors():
    final = _cfg("unused").model
    start = start_model(final, (STAGE,))
    assert (start.d_model, start.n_heads, start.d_ff, start.n_layers) == (32, 2, 128, 1)
    assert stage_models(final, (STAGE,))[-1] == final
    with pytest.raises(ValueError, match=r"stages\[0\] does not fit.*does not divide n_heads=4"):
        start_model(final, (StageConfig(width=8),))
    with pytest.raises(ValueError, match="n_layers=3 must be even"):
        start_model(final.replace(n_layers=3), (StageConfig(depth=2, at_step=5),))
    bert = ModelConfig.bert(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=16)
    with pytest.raises(ValueError, match="pre-norm"):
        start_model(bert, (StageConfig(depth=2, at_step=5),))
    with pytest.raises(ValueError, match="must grow"):
        StageConfig()
    with pytest.raises(ValueError, match="at_step values must increase"):
        _cfg("x").replace(stages=(StageConfig(width=2, at_step=10), StageConfig(depth=2, at_step=5)))
    with pytest.raises(ValueError, match="set eval_every"):
        _cfg("x").replace(eval_every=0, stages=(StageConfig(width=2),))
    with pytest.raises(ValueError, match=r"StageConfig.threshold must be a number < 0 or None, got 0.1"):
        StageConfig(width=2, threshold=0.1)


def test_slope_rule_finds_where_a_power_law_flattens():
    # L = 2 + 10 * C**-0.5 flattens smoothly; the analytic slope d log L / d log C is
    # -0.5 * (L - 2) / L, so the threshold is crossed where L - 2 = 2 * 0.0475 * L / (0.5 - 0.0475 * ...)
    compute = np.logspace(0, 8, 400)
    loss = 2 + 10 * compute**-0.5
    i = slope_growth_index(compute, loss, THRESHOLDS["width"])
    analytic = -0.5 * (loss - 2) / loss
    crossing = int(np.nonzero(analytic > THRESHOLDS["width"])[0][0])
    assert abs(i - crossing) <= 3
    # the planner's curves: the small model grows before it stops improving fast
    plan = kaplan_plan(20e6, 80e6, "width")
    assert (
        plan.restart_step
        == restart_step(plan.grow_step, "width")
        == round(plan.grow_step / CONSTANTS["width"])
    )
    c, loss = kaplan_curve(20e6, np.arange(100, 200_001, 10))
    assert loss[(plan.grow_step - 100) // 10] == pytest.approx(plan.loss_at_growth)
    assert plan.optimality_step is not None
    with pytest.raises(ValueError, match="operator must be one of"):
        kaplan_plan(1e6, 2e6, "sideways")
    with pytest.raises(ValueError, match="n_small < n_target"):
        kaplan_plan(2e6, 1e6, "width")


def test_online_slope_planner_grows_when_the_curve_flattens():
    cfg = _cfg("x").replace(stages=(StageConfig(width=2, depth=2),))
    staging = Staging(cfg)
    compute = np.logspace(9, 16, 60)
    loss = 2 + 10 * (compute / 1e9) ** -0.5
    fired = None
    for i, (c, value) in enumerate(zip(compute, loss, strict=True)):
        staging.flops = float(c)
        staging.record_eval(float(value))
        if staging.due(step=i):
            fired = i
            break
    analytic = -0.5 * (loss - 2) / loss
    want = int(np.nonzero(analytic > THRESHOLDS["depth_width"])[0][0])
    assert fired is not None and abs(fired - want) <= 3
    assert Staging(cfg, staging.extra()).history == staging.history  # travels with checkpoints
