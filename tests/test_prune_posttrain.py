"""Post-training structured pruning: cost model, Fisher, searches, rearrangement, tuning, slimming."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.convert import load_jaxslim, save_jaxslim
from jaxslim.models import Transformer
from jaxslim.prune import (
    BudgetError,
    LatencyModel,
    bucket_batches,
    cost_model,
    distill_loss,
    fit_piecewise,
    lm_loss,
    mask_gradients,
    prune_post_training,
    rearrange,
    search_flops,
    search_latency,
    slim,
    tune_masks,
)
from jaxslim.prune.rearrange import objective, rearrange_layer

TINY = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, d_ff=48, max_len=16)
CONFIGS = {
    "bert": ModelConfig.bert(**TINY),
    "gpt2": ModelConfig.gpt2(**TINY),
    "llama": ModelConfig.llama(**TINY, n_kv_heads=2),
}


def _batches(n_batches=3, b=6, t=12, seed=0, lm=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        lengths = rng.integers(t // 2, t + 1, b)
        mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
        tokens = rng.integers(1, 64, (b, t + 1 if lm else t)).astype(np.int32)
        batch = {"tokens": tokens, "index": np.arange(b, dtype=np.int32) + i * b}
        if not lm:
            batch["attention_mask"] = mask
        out.append(batch)
    return out


def test_mac_counts_match_an_analytic_count():
    """Count every multiply-add of one layer by hand for MHA and GQA."""
    for cfg in (CONFIGS["bert"], CONFIGS["llama"]):
        s, dm, d, h, kv, f = 10, cfg.d_model, cfg.head_dim_, cfg.n_heads, cfg.kv_heads, cfg.d_ff
        per_layer = (
            s * dm * h * d  # Q
            + 2 * s * dm * kv * d  # K, V
            + 2 * s * s * h * d  # scores and weighted values
            + s * h * d * dm  # output projection
            + (3 if cfg.gated_mlp else 2) * s * dm * f  # FFN
        )
        cost = cost_model(cfg, s)
        assert cost.dense_macs == cfg.n_layers * per_layer
        full = np.ones((cfg.n_layers, h)), np.ones((cfg.n_layers, f))
        assert cost.macs(*full) == cost.dense_macs
        one_group = np.zeros((cfg.n_layers, h))
        one_group[0, : h // kv] = 1
        assert cost.macs(one_group, np.zeros((cfg.n_layers, f))) == cost.group_macs


def test_fisher_matches_a_direct_per_example_computation():
    cfg = CONFIGS["gpt2"]
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    batches = _batches(n_batches=2, b=3, lm=True)
    grads = mask_gradients(model, batches, lm_loss)
    rows_h, rows_n = [], []
    for batch in batches:
        for i in range(len(batch["tokens"])):
            tokens = jnp.asarray(batch["tokens"][i : i + 1])

            def loss(hm, nm, tokens=tokens):
                logits = model(tokens[:, :-1], head_mask=hm, neuron_mask=nm).logits
                logp = jax.nn.log_softmax(logits)
                return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

            gh, gn = jax.grad(loss, argnums=(0, 1))(
                jnp.ones((cfg.n_layers, cfg.n_heads)), jnp.ones((cfg.n_layers, cfg.d_ff))
            )
            rows_h.append(gh)
            rows_n.append(gn)
    np.testing.assert_allclose(grads.head, np.stack(rows_h), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grads.neuron, np.stack(rows_n), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grads.head_fisher, (np.stack(rows_h) ** 2).sum(0), rtol=1e-4)


def test_label_free_gradients_are_not_zero_thanks_to_the_disturbed_teacher():
    model = Transformer(CONFIGS["bert"], rngs=nnx.Rngs(2))
    batches = _batches(n_batches=1)
    assert np.all(mask_gradients(model, batches, distill_loss(noise_std=0.0)).head == 0)
    grads = mask_gradients(model, batches, distill_loss(noise_std=0.01))
    assert np.count_nonzero(grads.head) == grads.head.size
    # the noise of an example depends on its index, not on the batch it is in
    swapped = [{k: v[::-1] for k, v in batches[0].items()}]
    again = mask_gradients(model, swapped, distill_loss(noise_std=0.01))
    np.testing.assert_allclose(again.head[::-1], grads.head, rtol=1e-5, atol=1e-9)


def _brute_force(fh, fn, cost, budget):
    """Best kept Fisher over every (heads kept, neurons kept) count pair."""
    best = -1.0
    hs, ns = np.sort(fh.ravel())[::-1], np.sort(fn.ravel())[::-1]
    for a, b in itertools.product(range(hs.size + 1), range(ns.size + 1)):
        if a * cost.group_macs + b * cost.neuron_macs <= budget * cost.dense_macs:
            best = max(best, hs[:a].sum() + ns[:b].sum())
    return best


@pytest.mark.parametrize("budget", [0.05, 0.3, 0.5, 0.77, 1.0])
def test_flops_search_is_optimal_and_never_exceeds_the_budget(budget):
    cfg = ModelConfig.bert(vocab_size=16, d_model=16, n_layers=2, n_heads=2, d_ff=8, max_len=8)
    cost = cost_model(cfg, 7.5)
    rng = np.random.default_rng(int(budget * 100))
    fh, fn = rng.random((2, 2)) * 5, rng.random((2, 8))
    hm, nm = search_flops(fh, fn, cost, budget)
    assert hm.dtype == bool and hm.shape == (2, 2) and nm.shape == (2, 8)
    assert cost.macs(hm, nm) <= budget * cost.dense_macs
    assert np.isclose(fh[hm].sum() + fn[nm].sum(), _brute_force(fh, fn, cost, budget))


def test_flops_search_rounding_keeps_multiples_and_the_budget():
    cfg = CONFIGS["bert"].replace(d_ff=64)
    cost = cost_model(cfg, 12)
    rng = np.random.default_rng(0)
    fh, fn = rng.random((3, 4)), rng.random((3, 64))
    for budget in (0.3, 0.5, 0.8):
        hm, nm = search_flops(fh, fn, cost, budget, round_to=16)
        assert np.all(nm.sum(1) % 16 == 0)
        assert cost.macs(hm, nm) <= budget * cost.dense_macs


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.5, float("nan")])
def test_budget_outside_the_unit_interval_is_refused(budget):
    cost = cost_model(CONFIGS["bert"], 12)
    with pytest.raises(BudgetError, match=r"in \(0, 1\]"):
        search_flops(np.ones((3, 4)), np.ones((3, 48)), cost, budget)


def test_fisher_of_another_shape_is_refused():
    cost = cost_model(CONFIGS["bert"], 12)
    with pytest.raises(ValueError, match=r"expected \(3, 4\) and \(3, 48\)"):
        search_flops(np.ones((2, 4)), np.ones((3, 48)), cost, 0.5)


def _latency_model():
    """A synthetic table: each module costs 1 ms up to 2 units, then 0.5 ms per unit; base 2 ms."""
    mha = np.array([0.0] + [1e-3 + 0.5e-3 * max(n - 2, 0) for n in range(1, 5)])
    ffn = np.array([0.0] + [1e-3 + 0.05e-3 * max(n - 2, 0) for n in range(1, 49)])
    return LatencyModel(mha, ffn, 2e-3, n_layers=3, group_size=1, batch=1, seq_len=8)


def test_piecewise_fit_recovers_threshold_constant_and_slope():
    fit = fit_piecewise(_latency_model().mha)
    assert fit.threshold == 2 and np.isclose(fit.constant, 1e-3) and np.isclose(fit.slope, 0.5e-3)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7, 0.9])
def test_latency_search_meets_its_budget(budget):
    lat = _latency_model()
    rng = np.random.default_rng(1)
    fh, fn = rng.random((3, 4)), rng.random((3, 48)) * 0.2
    hm, nm = search_latency(fh, fn, lat, budget)
    assert lat.predict(hm, nm) <= budget * lat.dense() + 1e-12
    # the budget is used: adding the best excluded unit anywhere would break it or not exist
    assert lat.predict(hm, nm) > 0.6 * budget * lat.dense()


def test_latency_search_refuses_a_budget_below_the_fixed_cost():
    lat = _latency_model()
    with pytest.raises(
        BudgetError, match="below the latency of the model with every head and neuron removed"
    ):
        search_latency(np.ones((3, 4)), np.ones((3, 48)), lat, 0.05)


def test_rearrangement_keeps_counts_and_never_worsens_the_block_objective():
    rng = np.random.default_rng(3)
    # correlated gradients: pairs of units that cancel
    base = rng.normal(size=(64, 10))
    grads = np.concatenate([base, -base + 0.05 * rng.normal(size=(64, 10))], axis=1)
    for n_keep in (3, 10, 17):
        fisher = (grads**2).sum(0)
        keep = np.zeros(20, bool)
        keep[np.argsort(-fisher)[:n_keep]] = True
        new = rearrange_layer(grads, keep)
        assert new.sum() == n_keep
        assert objective(grads, new) <= objective(grads, keep) + 1e-9
    # two low-Fisher units pointing the same way cost 4|v|^2 together; two slightly larger ones that
    # cancel cost almost nothing: the diagonal prunes the first pair, the block objective the second
    v = rng.normal(size=(64, 1))
    units = np.concatenate([v, v, 1.1 * v, -1.1 * v, 3 * rng.normal(size=(64, 2))], axis=1)
    keep = np.array([False, False, True, True, True, True])
    new = rearrange_layer(units, keep)
    assert new.sum() == 4 and objective(units, new) < 0.01 * objective(units, keep)
    hm, nm = rearrange(
        rng.normal(size=(8, 2, 4)), rng.normal(size=(8, 2, 6)), np.ones((2, 4), bool), np.tile(keep, (2, 1))
    )
    assert hm.shape == (2, 4) and nm.shape == (2, 6) and nm.sum() == 2 * keep.sum()


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_tuning_reduces_the_layer_errors_and_the_output_error(arch):
    model = Transformer(CONFIGS[arch], rngs=nnx.Rngs(4))
    batches = _batches()
    rng = np.random.default_rng(5)
    hm = rng.random((3, 4)) > 0.4
    nm = rng.random((3, 48)) > 0.5
    hs, ns, report = tune_masks(model, batches, hm, nm)
    assert np.all((hs != 0) == hm) and np.all((ns != 0) == nm)
    assert all(after <= before for *_, before, after in report.rows)
    assert any(why == "tuned" for _, _, why, *_ in report.rows)

    def err(h, n):
        total = 0.0
        for b in batches:
            t, m = jnp.asarray(b["tokens"]), jnp.asarray(b["attention_mask"])
            ref = model(t, attention_mask=m).hidden
            out = model(
                t,
                attention_mask=m,
                head_mask=jnp.asarray(h, jnp.float32),
                neuron_mask=jnp.asarray(n, jnp.float32),
            ).hidden
            total += float(jnp.sum(((out - ref) ** 2) * m[..., None]))
        return total

    assert err(hs, ns) < err(hm, nm)


def test_tuning_safeguard_skips_only_the_failing_sublayer():
    model = Transformer(CONFIGS["bert"], rngs=nnx.Rngs(4))
    hm, nm = np.ones((3, 4), bool), np.ones((3, 48), bool)
    hm[:, 0] = nm[:, :20] = False
    _, _, report = tune_masks(model, _batches(), hm, nm, max_scale=1e-3)  # every scale is "too large"
    assert len(report.skipped()) == 6 and all("outside" in why for *_, why in report.skipped())


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("scan", [True, False])
def test_slim_model_equals_the_masked_model(arch, scan, tmp_path):
    cfg = CONFIGS[arch].replace(scan_layers=scan)
    model = Transformer(cfg, rngs=nnx.Rngs(6))
    rng = np.random.default_rng(7)
    g = cfg.n_heads // cfg.kv_heads
    hm = np.repeat(rng.random((3, cfg.kv_heads)) > 0.4, g, axis=1) * rng.uniform(0.5, 1.5, (3, 4))
    hm[2] = 0  # a layer with no attention left
    nm = (rng.random((3, 48)) > 0.5) * rng.uniform(0.5, 1.5, (3, 48))
    small = slim(model, hm, nm)
    assert small.cfg.layer_heads == tuple(int(x) for x in (hm != 0).sum(1))
    assert small.cfg.layer_ffn == tuple(int(x) for x in (nm != 0).sum(1))
    n_params = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    assert n_params(small) < n_params(model)
    batch = _batches(n_batches=1)[0]
    t, m = jnp.asarray(batch["tokens"]), jnp.asarray(batch["attention_mask"])
    ref = model(
        t, attention_mask=m, head_mask=jnp.asarray(hm, jnp.float32), neuron_mask=jnp.asarray(nm, jnp.float32)
    )
    out = small(t, attention_mask=m)
    np.testing.assert_allclose(out.hidden, ref.hidden, atol=1e-5, rtol=0)
    save_jaxslim(small, tmp_path / "slim")
    back = load_jaxslim(tmp_path / "slim")
    assert back.cfg == small.cfg
    np.testing.assert_array_equal(back(t, attention_mask=m).hidden, out.hidden)


def test_slim_refuses_bad_masks():
    model = Transformer(CONFIGS["llama"], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"head_mask must have shape \(3, 4\)"):
        slim(model, np.ones((3, 5)), np.ones((3, 48)))
    half_group = np.ones((3, 4))
    half_group[1, 0] = 0
    with pytest.raises(ValueError, match="keeps part of query group 0 in layer 1"):
        slim(model, half_group, np.ones((3, 48)))
    small = slim(model, np.ones((3, 4)), np.ones((3, 48)))
    with pytest.raises(ValueError, match="already slimmed"):
        slim(small, np.ones((3, 4)), np.ones((3, 48)))


def test_model_without_heads_to_prune_is_refused():
    cfg = ModelConfig.bert(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=8, max_len=8)
    empty = cfg.replace(scan_layers=False, layer_heads=(0,), layer_ffn=(0,))
    with pytest.raises(ValueError, match="uniform widths"):
        mask_gradients(Transformer(empty, rngs=nnx.Rngs(0)), _batches(n_batches=1, t=8), distill_loss())


def test_pipeline_meets_the_budget_and_beats_search_alone():
    model = Transformer(CONFIGS["bert"], rngs=nnx.Rngs(8))
    batches = _batches(n_batches=4, b=8)
    result = prune_post_training(model, batches, distill_loss(), budget=0.5)
    cost = cost_model(model.cfg, result.seq_len)
    assert result.flops <= 0.5 and result.flops == cost.fraction(result.head_mask, result.neuron_mask)
    assert set(result.seconds) == {"fisher", "search", "rearrange", "tune"}
    again = prune_post_training(model, batches, distill_loss(), budget=0.5, grads=result.grads, tune=False)
    assert np.array_equal(again.head_mask != 0, result.head_mask != 0)
    with pytest.raises(ValueError, match="needs latency_model"):
        prune_post_training(model, batches, distill_loss(), budget=0.5, metric="latency", grads=result.grads)


def test_batches_are_bucketed_and_indexed():
    ids = [[5] * n for n in (3, 17, 9, 1, 33)]
    batches = bucket_batches(ids, batch_size=2, bucket=16, labels=[0, 1, 0, 1, 1])
    assert [b["tokens"].shape for b in batches] == [(2, 16), (2, 32), (1, 48)]
    assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == list(range(5))
    for b in batches:
        for row, i in enumerate(b["index"]):
            assert b["attention_mask"][row].sum() == len(ids[i])
            assert b["label"][row] == [0, 1, 0, 1, 1][i]


def test_masks_are_identical_on_one_and_eight_devices():
    """Mask gradients of a model sharded over 8 devices (FSDP x tensor) with a data-sharded batch give
    the same Fisher, hence the same masks, as on one device."""
    from jaxslim.config import MeshConfig
    from jaxslim.sharding import make_mesh, shard_batch, shard_model

    cfg = CONFIGS["bert"].replace(n_heads=4, d_ff=48)
    batches = _batches(n_batches=2, b=8)
    one = mask_gradients(Transformer(cfg, rngs=nnx.Rngs(9)), batches, distill_loss())
    mesh_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
    mesh = make_mesh(mesh_cfg, jax.devices()[:8])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
        model = shard_model(Transformer(cfg, rngs=nnx.Rngs(9)), mesh, mesh_cfg.rules)
        assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(nnx.state(model)))
        sharded = [shard_batch(b, mesh, mesh_cfg.rules) for b in batches]
        eight = mask_gradients(model, sharded, distill_loss())
    np.testing.assert_allclose(eight.head, one.head, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(eight.neuron, one.neuron, rtol=1e-4, atol=1e-9)
    cost = cost_model(cfg, 10)
    for budget in (0.3, 0.5, 0.7):
        a = search_flops(one.head_fisher, one.neuron_fisher, cost, budget)
        b = search_flops(eight.head_fisher, eight.neuron_fisher, cost, budget)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
