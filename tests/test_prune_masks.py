"""Pruning masks: tree structure and sharding, exact-k allocation per layer and global, N:M on the
contraction axis, structured units, statistics, identical masks on 1 and 8 devices, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.config import MeshConfig, ModelConfig
from jaxslim.models import Transformer
from jaxslim.prune.masks import (
    apply_masks,
    compute_masks,
    compute_scores,
    contraction_axes,
    default_filter,
    mask_counts,
    nm_axis,
    nm_masks,
    sparsity_summary,
    summary_table,
    unit_masks,
    unstructured_masks,
)
from jaxslim.sharding import create_sharded, make_mesh

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
GPT2 = ModelConfig.gpt2(**TINY)
LLAMA = ModelConfig.llama(**TINY)


def _is_var(x):
    return isinstance(x, nnx.Variable)


def _params(cfg=GPT2, seed=0):
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)[1]


def _named(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_var)[0]
    return {".".join(str(k.key) for k in p): v for p, v in flat}


def _pruned(masks):
    return {k: np.asarray(v.get_value()) for k, v in _named(masks).items() if v.get_value() is not None}


@pytest.fixture(scope="module")
def gpt2():
    return _params()


def test_masks_keep_the_params_structure_and_metadata(gpt2):
    masks = compute_masks(gpt2, 0.5)
    assert jax.tree.structure(masks, is_leaf=_is_var) == jax.tree.structure(gpt2, is_leaf=_is_var)
    params, named = _named(gpt2), _named(masks)
    assert named.keys() == params.keys()
    pruned = set()
    for name, m in named.items():
        p = params[name]
        assert type(m) is type(p)
        assert m.get_metadata() == p.get_metadata(), name  # logical axes carry over
        if m.get_value() is not None:
            assert m.get_value().dtype == jnp.bool_ and m.get_value().shape == p.get_value().shape
            pruned.add(name)
    # kernels only: no embeddings, norms or biases (the [layers, heads, head_dim] q/k/v biases too)
    assert pruned == {f"stack.blocks.attn.{w}" for w in ("wq", "wk", "wv", "wo")} | {
        "stack.blocks.mlp.wi",
        "stack.blocks.mlp.wo",
    }
    # masked weights are exact zeros, others untouched
    out = _named(apply_masks(gpt2, masks))
    for name, m in named.items():
        w, got = np.asarray(params[name].get_value()), np.asarray(out[name].get_value())
        keep = np.ones_like(w, bool) if m.get_value() is None else np.asarray(m.get_value())
        np.testing.assert_array_equal(got, np.where(keep, w, 0.0))
        assert np.all(got[~keep] == 0)


def test_custom_filter_and_lm_head():
    params = _params(LLAMA)
    masks = compute_masks(params, 0.5)
    assert "lm_head" in _pruned(masks) and "stack.blocks.mlp.wu" in _pruned(masks)
    only_mlp = compute_masks(params, 0.5, filter=lambda path, axes, shape: ".mlp." in f".{path}.")
    assert set(_pruned(only_mlp)) == {f"stack.blocks.mlp.{w}" for w in ("wi", "wu", "wo")}
    assert not default_filter("embed.tokens", ("vocab", "embed"), (64, 32))
    assert not default_filter("x.scale", ("layers", "norm"), (2, 32))


def test_contraction_axes_from_logical_names():
    assert contraction_axes("attn.wq", ("layers", "embed", "heads", "head_dim")) == (1,)
    assert contraction_axes("attn.wk", ("embed", "kv_heads", "head_dim")) == (0,)
    assert contraction_axes("attn.wo", ("layers", "heads", "head_dim", "embed")) == (1, 2)
    assert contraction_axes("mlp.wi", ("layers", "embed", "mlp")) == (1,)
    assert contraction_axes("mlp.wo", ("mlp", "embed")) == (0,)
    assert contraction_axes("lm_head", ("embed", "vocab")) == (0,)
    assert nm_axis("attn.wo", ("layers", "heads", "head_dim", "embed")) == 2  # never straddles heads


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_groups_along_the_contraction_axis(n, m):
    params = _params(LLAMA)
    masks = _pruned(compute_masks(params, kind="nm", n=n, m=m))
    axes = {k: tuple(v.get_metadata()["out_sharding"]) for k, v in _named(params).items()}
    expected_axis = {
        "stack.blocks.attn.wq": 1,
        "stack.blocks.attn.wk": 1,
        "stack.blocks.attn.wv": 1,
        "stack.blocks.attn.wo": 2,
        "stack.blocks.mlp.wi": 1,
        "stack.blocks.mlp.wu": 1,
        "stack.blocks.mlp.wo": 1,
        "lm_head": 0,
    }
    assert set(masks) == set(expected_axis)
    for name, mask in masks.items():
        ax = expected_axis[name]
        assert nm_axis(name, axes[name]) == ax
        groups = np.moveaxis(mask, ax, -1).reshape(-1, m)
        assert np.all(groups.sum(-1) == n), name  # exactly n kept per group (scores have no ties)
        # along another axis the pattern does not hold (the check above is not vacuous)
        other = next(i for i in range(mask.ndim) if i != ax and axes[name][i] != "layers")
        if mask.shape[other] % m == 0:
            along = np.moveaxis(mask, other, -1).reshape(-1, m).sum(-1)
            assert np.any(along > n), name
    assert (
        abs(
            float(sparsity_summary(compute_masks(params, kind="nm", n=n, m=m))["sparsity/overall"])
            - (1 - n / m)
        )
        < 1e-6
    )


def test_nm_ties_are_exact_and_deterministic():
    w = nnx.Param(jnp.ones((8, 4)), out_sharding=("embed", "mlp"), eager_sharding=False)
    masks = nm_masks(compute_scores({"mlp": {"wi": w}}, "magnitude"), 2, 4)
    m = np.asarray(masks["mlp"]["wi"].get_value())
    # groups of 4 along axis 0 (embed); ties keep the later elements
    np.testing.assert_array_equal(m[:, 0], [False, False, True, True] * 2)


def test_per_layer_allocation_reaches_each_layer_separately(gpt2):
    # layer 0 of every kernel is 100x smaller: a global threshold would prune it almost entirely
    def shrink(v):
        axes = tuple(v.get_metadata().get("out_sharding") or ())
        if "layers" not in axes:
            return v
        scale = jnp.asarray([0.01, 1.0]).reshape((2,) + (1,) * (v.get_value().ndim - 1))
        return v.replace(v.get_value() * scale)

    params = jax.tree.map(shrink, gpt2, is_leaf=_is_var)
    for s in (0.25, 0.5, 0.9):
        masks = compute_masks(params, s)
        for name, (kept, per_layer) in mask_counts(masks).items():
            assert kept.shape == (2,), name
            expected = per_layer - int(np.floor(s * per_layer + 0.5))
            np.testing.assert_array_equal(np.asarray(kept), [expected, expected], err_msg=name)
        summary = sparsity_summary(masks)
        assert abs(float(summary["sparsity/stack.blocks.mlp.wi/layer_0"]) - s) < 1e-3
        assert abs(float(summary["sparsity/stack.blocks.mlp.wi/layer_1"]) - s) < 1e-3
    glob = sparsity_summary(compute_masks(params, 0.5, allocation="global"))
    assert float(glob["sparsity/stack.blocks.mlp.wi/layer_0"]) > 0.9
    assert float(glob["sparsity/stack.blocks.mlp.wi/layer_1"]) < 0.1


@pytest.mark.parametrize("s", [0.3, 0.5, 0.77])
def test_global_allocation_hits_the_overall_sparsity_exactly(gpt2, s):
    masks = compute_masks(gpt2, s, allocation="global")
    counts = mask_counts(masks)
    kept = sum(int(np.sum(k)) for k, _ in counts.values())
    total = sum(per * (k.size if k.ndim else 1) for k, per in counts.values())
    assert total - kept == int(np.floor(s * total + 0.5))
    layer_sparsities = {k: float(v) for k, v in sparsity_summary(masks).items() if "layer_" in k}
    assert max(layer_sparsities.values()) - min(layer_sparsities.values()) > 0.01  # layers differ


def test_exact_k_with_ties_and_at_least_one_kept():
    tree = {"a": jnp.ones((10, 10)), "b": jnp.zeros((4, 5))}
    scores = compute_scores(tree, "magnitude", filter=lambda *_: True)
    masks = unstructured_masks(scores, 0.37)
    a = np.asarray(masks["a"]).reshape(-1)
    assert a.sum() == 63 and not a[:37].any() and a[37:].all()  # ties: earliest pruned first
    glob = unstructured_masks(scores, 0.5, allocation="global")
    assert int(np.sum(glob["a"])) + int(np.sum(glob["b"])) == 60 and not np.any(glob["b"])
    tiny = unstructured_masks(scores, 0.999)
    assert int(np.sum(tiny["a"])) == 1  # never everything


def test_scores():
    params = _params()
    g = jax.tree.map(lambda v: v.replace(jnp.full(v.get_value().shape, -2.0)), params, is_leaf=_is_var)
    sal = _named(compute_scores(params, "saliency", grads=g))
    w = _named(params)["stack.blocks.mlp.wi"].get_value()
    np.testing.assert_allclose(sal["stack.blocks.mlp.wi"].get_value(), np.abs(w) * 2, rtol=1e-6)
    r1 = _pruned(compute_masks(params, 0.5, criterion="random", rng=jax.random.key(1)))
    r2 = _pruned(compute_masks(params, 0.5, criterion="random", rng=jax.random.key(1)))
    r3 = _pruned(compute_masks(params, 0.5, criterion="random", rng=jax.random.key(2)))
    assert all(np.array_equal(r1[k], r2[k]) for k in r1)
    assert not all(np.array_equal(r1[k], r3[k]) for k in r1)


def test_structured_heads_neurons_channels():
    params = _params(LLAMA)
    named = _named(params)
    heads = unit_masks(compute_scores(params, kind="heads"), 0.5, kind="heads")
    assert set(heads) == {"stack.blocks.attn"} and heads["stack.blocks.attn"].shape == (2, 4)
    assert np.all(np.asarray(heads["stack.blocks.attn"]).sum(-1) == 2)
    masks = _pruned(compute_masks(params, 0.5, kind="heads"))
    hm = np.asarray(heads["stack.blocks.attn"])
    assert set(masks) == {f"stack.blocks.attn.{w}" for w in ("wq", "wk", "wv", "wo")}  # MHA: k/v too
    for w, ax in (("wq", 2), ("wk", 2), ("wv", 2), ("wo", 1)):
        m = np.moveaxis(masks[f"stack.blocks.attn.{w}"], ax, 1)  # [layers, heads, ...]
        per_head = m.reshape(2, 4, -1)
        assert np.all(per_head.all(-1) | ~per_head.any(-1))  # whole heads
        np.testing.assert_array_equal(per_head.all(-1), hm)
    # grouped-query attention: only query heads (wq, wo) are masked
    gqa = _pruned(compute_masks(_params(ModelConfig.llama(**TINY, n_kv_heads=2)), 0.5, kind="heads"))
    assert set(gqa) == {"stack.blocks.attn.wq", "stack.blocks.attn.wo"}

    neurons = _pruned(compute_masks(params, 0.25, kind="neurons"))
    assert set(neurons) == {f"stack.blocks.mlp.{w}" for w in ("wi", "wu", "wo")}
    keep = neurons["stack.blocks.mlp.wi"].all(1)  # [layers, mlp]
    assert np.all(keep.sum(-1) == 48)
    np.testing.assert_array_equal(neurons["stack.blocks.mlp.wu"].all(1), keep)
    np.testing.assert_array_equal(neurons["stack.blocks.mlp.wo"].all(2), keep)

    channels = _pruned(compute_masks(params, 0.5, kind="channels"))
    col = channels["lm_head"].all(1)  # [embed]
    assert col.sum() == 16
    np.testing.assert_array_equal(channels["stack.blocks.mlp.wi"][0].all(1), col)
    np.testing.assert_array_equal(channels["stack.blocks.attn.wo"][1].all((0, 1)), col)
    assert named["lm_head"].get_value().shape == channels["lm_head"].shape


def test_summary_table_and_metrics_under_jit(gpt2):
    masks = compute_masks(gpt2, 0.5)
    metrics = jax.jit(sparsity_summary)(masks)
    assert set(metrics) >= {"sparsity/stack.blocks.attn.wq/layer_0", "sparsity/stack.blocks.mlp.wo/layer_1"}
    assert float(metrics["sparsity/overall"]) == pytest.approx(0.5)
    table = summary_table(masks)
    assert "stack.blocks.attn.wq" in table and "overall" in table and "0.5000" in table


def test_bad_inputs_raise_clear_errors(gpt2):
    masks = compute_masks(gpt2, 0.5)
    bad = jax.tree.map(
        lambda v: (
            v.replace(v.get_value()[:1]) if v.get_value() is not None and v.get_value().shape[-1] == 64 else v
        ),
        masks,
        is_leaf=_is_var,
    )
    with pytest.raises(
        ValueError,
        match=r"stack\.blocks\.mlp\.wi: mask shape \(1, 32, 64\) does not match parameter shape \(2, 32, 64\)",
    ):
        apply_masks(gpt2, bad)
    for s in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
            compute_masks(gpt2, s)
    with pytest.raises(ValueError, match=r"stack\.blocks\.\w+\.w\w: N:M 2:3 .* not divisible by m=3"):
        compute_masks(gpt2, kind="nm", n=2, m=3)
    for n, m in ((4, 4), (5, 4), (0, 4)):
        with pytest.raises(ValueError, match="1 <= n < m"):
            compute_masks(gpt2, kind="nm", n=n, m=m)
    with pytest.raises(ValueError, match="criterion must be one of"):
        compute_masks(gpt2, 0.5, criterion="taylor")
    with pytest.raises(ValueError, match="needs grads"):
        compute_masks(gpt2, 0.5, criterion="saliency")


def test_masks_identical_on_one_and_eight_devices(devices):
    mesh_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
    mesh = make_mesh(mesh_cfg, devices)
    cfg = LLAMA
    with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
        model = create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh, mesh_cfg.rules)
        sharded = nnx.split(model, nnx.Param, ...)[1]
    local = _params(cfg)
    leaves = [v.get_value() for v in jax.tree.leaves(sharded, is_leaf=_is_var)]
    assert sum(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in leaves) > 5
    grads = jax.tree.map(lambda v: v.replace(jnp.sin(v.get_value() * 7.0)), local, is_leaf=_is_var)
    cases = [
        dict(sparsity=0.6),
        dict(sparsity=0.6, allocation="global"),
        dict(sparsity=0.6, criterion="random"),
        dict(kind="nm", n=2, m=4),
        dict(sparsity=0.5, kind="heads"),
        dict(sparsity=0.5, criterion="saliency"),
    ]
    for kw in cases:
        kw = dict(kw)
        s = kw.pop("sparsity", 0.0)
        fn = jax.jit(lambda p, g, kw=kw, s=s: compute_masks(p, s, grads=g, rng=jax.random.key(3), **kw))
        want = _pruned(fn(local, grads))
        with jax.set_mesh(mesh), nnx.logical_axis_rules(mesh_cfg.rules):
            sg = jax.tree.map(
                lambda v, p: v.replace(jax.device_put(v.get_value(), p.get_value().sharding)),
                grads,
                sharded,
                is_leaf=_is_var,
            )
            got_tree = fn(sharded, sg)
        got = _pruned(got_tree)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{kw} {k}")
