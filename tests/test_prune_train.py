"""Gradual pruning from the training config: exact zeros per layer, logged sparsity, resume, N:M STE."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from jaxslim.cli.presets import load_preset
from jaxslim.config import PruneConfig
from jaxslim.data import TextData
from jaxslim.engine.step import make_eval_step
from jaxslim.prune import masked_params
from jaxslim.prune.masks import _named_leaves, _value, nm_axis
from jaxslim.training import evaluate, train


def _tiny(tmp_path, name="run", **prune):
    cfg = load_preset("shakespeare_gpt:tiny")
    return dataclasses.replace(
        cfg,
        workdir=str(tmp_path / name),
        tensorboard=False,
        sample_tokens=0,
        prune=PruneConfig(**prune),
    )


def _pruned_leaves(params):
    names = {
        "stack.blocks.attn.wq",
        "stack.blocks.attn.wk",
        "stack.blocks.attn.wv",
        "stack.blocks.attn.wo",
        "stack.blocks.mlp.wi",
        "stack.blocks.mlp.wo",
    }
    found = {n: (np.asarray(_value(x)), x.get_metadata()["out_sharding"]) for n, x in _named_leaves(params)}
    assert names <= set(found), sorted(found)
    return {n: found[n] for n in names}


UNSTRUCTURED = dict(kind="unstructured", sparsity=0.8, initial_sparsity=0.2, num_updates=2, update_every=4)


def test_unstructured_run_ends_at_the_sparsity_in_every_layer_and_logs_it(tmp_path):
    result = train(_tiny(tmp_path, **UNSTRUCTURED), progress=False)
    for name, (w, axes) in _pruned_leaves(result.state.params).items():
        assert axes[0] == "layers"
        for layer in range(w.shape[0]):
            zeros = float(np.mean(w[layer] == 0))
            assert zeros == pytest.approx(0.8, abs=1e-3), (name, layer, zeros)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "sparsity/overall" in r}
    assert sorted(logged) == [2, 4, 6, 8, 10, 12]
    # the cubic schedule, updated in the optimizer updates of steps 0, 4 and 8 (the 1st, 5th and
    # 9th update): logged after `step` updates, a row shows the masks of the last update step
    assert logged[2]["sparsity/overall"] == pytest.approx(0.2, abs=1e-3)
    assert logged[4]["sparsity/overall"] == pytest.approx(0.2, abs=1e-3)
    expected_4 = 0.8 + (0.2 - 0.8) * (1 - 4 / 8) ** 3
    assert logged[6]["sparsity/overall"] == pytest.approx(expected_4, abs=1e-3)
    assert logged[8]["sparsity/overall"] == pytest.approx(expected_4, abs=1e-3)
    assert logged[10]["sparsity/overall"] == pytest.approx(0.8, abs=1e-3)
    assert logged[12]["sparsity/overall"] == pytest.approx(0.8, abs=1e-3)
    assert logged[12]["sparsity/stack.blocks.mlp.wi/layer_1"] == pytest.approx(0.8, abs=1e-3)
    assert result.last_metrics["sparsity/overall"] == pytest.approx(0.8, abs=1e-3)


def test_a_resumed_pruning_run_matches_an_uninterrupted_one(tmp_path):
    cfg = _tiny(tmp_path, "whole", **UNSTRUCTURED)
    cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, keep=3))
    whole = train(cfg, progress=False)
    # the same run stopped after its step-4 checkpoint (mid-schedule), then resumed
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "whole", split)
    for step in ("8", "12"):
        shutil.rmtree(split / "checkpoints" / step)
    resumed = train(dataclasses.replace(cfg, workdir=str(split)), progress=False)
    assert resumed.resumed_from == 4
    for tree in ("params", "opt_state"):
        a, b = jax.device_get((getattr(whole.state, tree), getattr(resumed.state, tree)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)


def test_two_four_straight_through_keeps_dense_weights_and_a_valid_pattern(tmp_path):
    cfg = _tiny(tmp_path, kind="nm", n=2, m=4, update_every=2, ste=True, sr_ste_decay=2e-4)
    result = train(cfg, progress=False)
    dense = _pruned_leaves(result.state.params)
    sparse = _pruned_leaves(masked_params(result.state.params, result.state.opt_state))
    for name, (w, axes) in sparse.items():
        ax = nm_axis(name, axes)
        groups = np.moveaxis(w, ax, -1).reshape(-1, 4)
        nonzero = (groups != 0).sum(-1)
        assert nonzero.max() <= 2, name
        assert float(np.mean(w == 0)) == pytest.approx(0.5, abs=1e-3), name
        # straight-through: the stored weights stay dense, so a mask can still flip
        assert float(np.mean(dense[name][0] == 0)) < 0.01, name
    assert result.last_metrics["sparsity/overall"] == pytest.approx(0.5, abs=1e-6)
    # the reported validation loss is the sparse model's, not the dense weights'
    data = TextData(cfg.data)
    eval_fn = make_eval_step(result.setup)
    mesh, rules = result.setup.mesh, cfg.mesh.rules

    def loss_of(params):
        state = result.state._replace(params=params)
        return evaluate(eval_fn, state, data.val_batches(), mesh, rules, max_batches=cfg.eval_batches)[
            "eval_loss"
        ]

    sparse_loss = loss_of(masked_params(result.state.params, result.state.opt_state))
    assert result.eval_metrics["eval_loss"] == pytest.approx(sparse_loss, rel=1e-6)
    assert abs(loss_of(result.state.params) - sparse_loss) > 1e-4


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(kind="unstructured"), "sparsity must be in \\(0, 1\\)"),
        (dict(kind="unstructured", sparsity=1.0), "sparsity must be a number in \\[0, 1\\)"),
        (dict(kind="nm", n=4, m=4), "0 < n < m"),
        (dict(kind="nm", sr_ste_decay=1e-4), "needs ste=True"),
        (dict(kind="heads", sparsity=0.5, allocation="global"), "global"),
        (dict(kind="dense"), "kind must be one of"),
        (dict(kind="unstructured", sparsity=0.5, initial_sparsity=0.6), "must not exceed"),
    ],
)
def test_bad_prune_configs_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kw)
