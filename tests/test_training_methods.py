"""A user's own method plugs into ``train()`` as one ``Method``: its hooks run at their points
every ``every`` steps, its log metrics reach metrics.jsonl, its checkpoint state survives a resume,
and its loss term and optimizer wrapper take effect; the loop names no method."""

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import optax
import pytest

from jaxslim.cli.presets import load_preset
from jaxslim.method import Hook, Method
from jaxslim.training import methods_of, train


class Counter(Method):
    """Counts its hook calls and keeps the count in every checkpoint."""

    name = "counter"

    def __init__(self):
        self.calls: dict[str, list[int]] = {"before_step": [], "after_step": [], "eval": [], "save": []}
        self.total = 0
        self.hooks = (
            Hook(lambda run: self.calls["before_step"].append(run.step), every=4, at="before_step"),
            Hook(self._after, every=3, at="after_step"),
            Hook(lambda run: {"counter/total": float(self.total)}, every=1, at="log"),
            Hook(lambda run: self.calls["eval"].append(run.step), at="eval"),
            Hook(lambda run: self.calls["save"].append(run.step), at="save"),
        )

    def _after(self, run):
        self.calls["after_step"].append(run.step)
        self.total += 1

    def extra(self):
        return {"counter": self.total}

    def restore(self, extra):
        self.total = extra.get("counter", 0)


@pytest.fixture(autouse=True)
def _relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/... below are relative paths, as a user writes them


def _cfg(workdir, **changes):
    cfg = load_preset("shakespeare_gpt:tiny")
    return dataclasses.replace(cfg, workdir=str(workdir), tensorboard=False, sample_tokens=0, **changes)


def test_hooks_run_at_their_points_and_state_survives_resume():
    cfg = _cfg("runs/methods", steps=8)
    counter = Counter()
    train(cfg, methods=(counter,), progress=False)
    assert counter.calls["before_step"] == [0, 4]
    assert counter.calls["after_step"] == [3, 6]
    assert counter.calls["save"] == [
        cfg.checkpoint.every * k for k in range(1, 8 // cfg.checkpoint.every + 1)
    ]
    assert counter.calls["eval"][-1] == 8
    records = [
        json.loads(line) for line in pathlib.Path("runs/methods/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["counter/total"] for r in records if "counter/total" in r][-1] == 2.0

    again = Counter()
    train(dataclasses.replace(cfg, steps=12), methods=(again,), progress=False)
    assert again.calls["after_step"] == [9, 12]
    assert again.total == 4  # 2 restored from the checkpoint of step 8, then 2 more


def test_a_methods_loss_term_and_optimizer_wrapper_take_effect():
    class Frozen(Method):
        name = "frozen"

        def optimizer(self, tx, wrap_schedule):
            return optax.chain(tx, optax.scale(0.0))  # no update ever reaches the weights

    term = Method("aux", loss_terms=(lambda out, batch: (jnp.float32(100.0), {"aux": jnp.float32(1.0)}),))
    r = train(
        _cfg("runs/frozen", steps=2, checkpoint=dataclasses.replace(_cfg("x").checkpoint, every=0)),
        methods=(Frozen(), term),
        progress=False,
    )
    base = train(
        _cfg("runs/base", steps=2, checkpoint=dataclasses.replace(_cfg("x").checkpoint, every=0)),
        progress=False,
    )
    assert r.last_metrics["loss"] == pytest.approx(base.last_metrics["loss"] + 100.0, abs=0.5)
    assert r.last_metrics["aux"] == 1.0
    first = [
        json.loads(x)["loss"]
        for x in pathlib.Path("runs/frozen/metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(x)
    ]
    assert first[0] == pytest.approx(first[-1], abs=1e-6)  # frozen weights: the same loss at every step


def test_methods_of_lists_the_configs_methods_in_wrapper_order():
    cfg = load_preset("shakespeare_gpt:tiny")
    assert [m.name for m in methods_of(cfg)] == ["optim", "growth"]
    pruned = dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, kind="unstructured", sparsity=0.5))
    assert [m.name for m in methods_of(pruned)] == ["optim", "growth", "prune"]


def test_bad_hooks_and_parts_are_refused():
    with pytest.raises(ValueError, match=r"Hook.at must be one of .*got 'after'"):
        Hook(lambda run: None, at="after")
    with pytest.raises(ValueError, match="Hook.every must be an integer >= 1, got 0"):
        Hook(lambda run: None, every=0)
    with pytest.raises(TypeError, match=r"unknown: \['losses'\]"):
        Method("x", losses=())
