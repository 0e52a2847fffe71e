"""Transforms drop into anyone's training code: the same parameters after 20 steps under
``nnx.Optimizer``, under optax on ``nnx.split`` state and on a plain pytree, for a user's own model
(own axis names, a stacked ``[layers, in, out]`` kernel, 2-D stacked norms and biases), with
per-layer behaviour (sparsity, N:M groups, LAMB trust ratios) per layer in every case."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxslim
from jaxslim.optim import lamb, lars, scale_by_layer_trust_ratio
from jaxslim.prune import get_masks, gradual_pruning, prune
from jaxslim.prune.masks import default_filter, mask_template
from jaxslim.tree import named_leaves, resolve_axes

L, D, F, V = 4, 8, 20, 12  # 0.8 * D * F is a whole number of weights
STEPS = 20


def _init_values(seed: int = 0) -> dict:
    k = jax.random.split(jax.random.key(seed), 5)
    return {
        "embedding": jax.random.normal(k[0], (V, D)),
        "w_in": jax.random.normal(k[1], (L, D, F)) / np.sqrt(D),
        "b_in": 0.1 * jax.random.normal(k[2], (L, F)),
        "norm_scale": 1.0 + 0.1 * jax.random.normal(k[3], (L, D)),
        "w_out": jax.random.normal(k[4], (L, F, D)) / np.sqrt(F),
    }


# the user's own axis names: "model" for the tensor-parallel dimension, nothing else but the
# stacking axis that nnx.vmap / nnx.scan name "layers"
AXES = {
    "embedding": (None, "model"),
    "w_in": ("layers", None, "model"),
    "b_in": ("layers", "model"),
    "norm_scale": ("layers", None),
    "w_out": ("layers", "model", None),
}


def apply(p: dict, tokens: jax.Array) -> jax.Array:
    """The forward pass on plain arrays: embeddings, L residual MLP blocks, tied read-out."""
    h = p["embedding"][tokens]
    for i in range(L):
        x = h * p["norm_scale"][i][None, None] / jnp.sqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)
        h = h + jax.nn.gelu(x @ p["w_in"][i] + p["b_in"][i][None, None]) @ p["w_out"][i]
    return h @ p["embedding"].T


def loss_fn(p: dict, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    logits = apply(p, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


class UserModel(nnx.Module):
    """A user's NNX model: parameters annotated with the user's own axis names."""

    def __init__(self, seed: int = 0):
        for name, v in _init_values(seed).items():
            setattr(self, name, nnx.Param(v, out_sharding=AXES[name], eager_sharding=False))

    def __call__(self, tokens):
        return apply({k: getattr(self, k)[...] for k in AXES}, tokens)


def _batches():
    rng = np.random.default_rng(0)
    toks = rng.integers(0, V, size=(STEPS, 4, 6))
    return [(jnp.asarray(t), jnp.asarray(np.roll(t, -1, axis=1))) for t in toks]


def run_nnx_optimizer(tx):
    model = UserModel()
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        grads = nnx.grad(lambda m: loss_fn({k: getattr(m, k)[...] for k in AXES}, x, y))(model)
        opt.update(model, grads)

    for x, y in _batches():
        step(model, opt, x, y)
    return {k: np.asarray(getattr(model, k)[...]) for k in AXES}, opt.opt_state


def run_split_state(tx):
    _, params, _ = nnx.split(UserModel(), nnx.Param, ...)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        grads = jax.grad(lambda p: loss_fn({k: v[...] for k, v in p.items()}, x, y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for x, y in _batches():
        params, opt_state = step(params, opt_state, x, y)
    return {k: np.asarray(v[...]) for k, v in params.items()}, opt_state


def run_pytree(make_tx):
    params = _init_values()
    tx = make_tx(AXES)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for x, y in _batches():
        params, opt_state = step(params, opt_state, x, y)
    return {k: np.asarray(v) for k, v in params.items()}, opt_state


TRANSFORMS = {
    "gradual_unstructured": lambda axes=None: gradual_pruning(
        optax.adamw(3e-2, weight_decay=0.1), 0.8, num_updates=4, update_every=4, axes=axes
    ),
    "nm_2_4": lambda axes=None: prune(optax.adam(3e-2), kind="nm", n=2, m=4, axes=axes),
    "lamb": lambda axes=None: lamb(3e-2, weight_decay=0.01, axes=axes),
    # inject_hyperparams builds a new lamb on every init and update call
    "lamb_injected": lambda axes=None: optax.inject_hyperparams(
        lambda learning_rate: lamb(learning_rate, weight_decay=0.01, axes=axes)
    )(learning_rate=3e-2),
    "lars": lambda axes=None: lars(0.5, weight_decay=1e-3, axes=axes),
    "trust_ratio": lambda axes=None: optax.chain(
        optax.scale_by_adam(), scale_by_layer_trust_ratio(axes=axes), optax.scale_by_learning_rate(3e-2)
    ),
    "pruned_lamb": lambda axes=None: gradual_pruning(
        lamb(3e-2, weight_decay=0.01, axes=axes), 0.5, num_updates=2, update_every=5, axes=axes
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_same_parameters_under_nnx_optimizer_split_state_and_pytree(name):
    make = TRANSFORMS[name]
    a, _ = run_nnx_optimizer(make())
    b, _ = run_split_state(make())
    c, _ = run_pytree(make)
    for k in AXES:
        np.testing.assert_allclose(
            a[k], b[k], atol=1e-6, rtol=0, err_msg=f"{name}: {k} nnx.Optimizer vs split"
        )
        np.testing.assert_allclose(
            a[k], c[k], atol=1e-6, rtol=0, err_msg=f"{name}: {k} nnx.Optimizer vs pytree"
        )
    # the run trained: the parameters moved
    assert not np.allclose(a["w_in"], np.asarray(_init_values()["w_in"]))


def test_per_layer_sparsity_exact_in_every_layer_under_nnx_optimizer():
    params, opt_state = run_nnx_optimizer(TRANSFORMS["gradual_unstructured"]())
    for k in ("w_in", "w_out"):
        per_layer = (params[k] == 0).reshape(L, -1).mean(axis=1)
        np.testing.assert_array_equal(per_layer, np.full(L, 0.8), err_msg=k)
    # what is not a kernel is never pruned: the embedding table, the stacked biases and norms
    for k in ("embedding", "b_in", "norm_scale"):
        assert (params[k] != 0).all(), k
    masks = {
        n: m for n, m in named_leaves(get_masks(opt_state)) if m is not None and m.get_value() is not None
    }
    assert sorted(masks) == ["w_in", "w_out"]


def test_nm_groups_run_along_the_contraction_axis_never_the_layer_axis():
    params, _ = run_nnx_optimizer(TRANSFORMS["nm_2_4"]())
    # w_in [L, D, F] contracts over D, w_out [L, F, D] over F: groups of 4 along axis 1
    for k in ("w_in", "w_out"):
        w = params[k]
        groups = (w != 0).reshape(L, w.shape[1] // 4, 4, w.shape[2]).sum(axis=2)
        np.testing.assert_array_equal(groups, np.full_like(groups, 2), err_msg=k)


def test_lamb_first_step_relative_update_is_the_learning_rate_in_every_layer():
    lr = 1e-2
    model = UserModel()
    before = {k: np.asarray(getattr(model, k)[...]) for k in ("w_in", "w_out")}
    opt = nnx.Optimizer(model, lamb(lr, trust_mask=True), wrt=nnx.Param)
    x, y = _batches()[0]
    grads = nnx.grad(lambda m: loss_fn({k: getattr(m, k)[...] for k in AXES}, x, y))(model)
    opt.update(model, grads)
    for k, w0 in before.items():
        dw = np.asarray(getattr(model, k)[...]) - w0
        ratio = np.linalg.norm(dw.reshape(L, -1), axis=1) / np.linalg.norm(w0.reshape(L, -1), axis=1)
        np.testing.assert_allclose(ratio, np.full(L, lr), rtol=1e-5, err_msg=k)


def test_stacked_biases_are_not_decayed_under_nnx_optimizer():
    # a zero gradient leaves only the decay: kernels shrink, a [layers, d] bias and norm do not
    model = UserModel()
    before = {k: np.asarray(getattr(model, k)[...]) for k in AXES}
    opt = nnx.Optimizer(model, lamb(1e-2, weight_decay=0.5), wrt=nnx.Param)
    opt.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = {k: np.asarray(getattr(model, k)[...]) for k in AXES}
    for k in ("b_in", "norm_scale"):
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    for k in ("w_in", "w_out", "embedding"):
        assert not np.array_equal(after[k], before[k]), k


def test_default_target_by_shape_and_role_whatever_the_axis_names():
    class Unannotated(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(V, D, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(2, D, qkv_features=D, decode=False, rngs=rngs)
            self.dense = nnx.Linear(D, F, rngs=rngs)
            self.norm = nnx.LayerNorm(F, rngs=rngs)

    params = nnx.state(Unannotated(nnx.Rngs(0)), nnx.Param)
    pruned = sorted(
        n for n, m in named_leaves(mask_template(params)) if m is not None and m.get_value() is not None
    )
    # kernels only: not the embedding table, not the [heads, head_dim] attention biases, not the norm
    assert pruned == [f"attn.{p}.kernel" for p in ("key", "out", "query", "value")] + ["dense.kernel"]
    # the user's own names: (None, "model") kernels are pruned, never jaxslim's embed/mlp/vocab
    assert default_filter("blocks.proj.kernel", (None, "model"), (D, F))
    assert not default_filter("blocks.ln.scale", ("layers", None), (L, D))
    assert not default_filter("stack.bias", (None, None), (L, D))
    assert not default_filter("tok.embedding", (None, "model"), (V, D))
    assert not default_filter("wte", (None, None), (V, D))


def test_a_transform_that_would_prune_nothing_says_so():
    params = {"scale": jnp.ones(8), "bias": jnp.zeros(8)}
    with pytest.raises(ValueError, match=r"found nothing to prune among the 2 parameters \(bias, scale\)"):
        prune(optax.sgd(0.1), 0.5).init(params)
    with pytest.raises(ValueError, match=r"found nothing to prune.*'heads'"):
        prune(optax.sgd(0.1), 0.5, kind="heads").init({"w": jnp.ones((4, 4))})


def test_axes_prefix_tree_is_checked():
    params = _init_values()
    table = resolve_axes(params, {"w_in": ("layers", None, None)})
    assert table["w_in"] == ("layers", None, None) and table["w_out"] is None
    with pytest.raises(ValueError, match=r"'b_in' name 3 dimensions, the array has 2"):
        resolve_axes(params, {"b_in": ("layers", None, None)})
    with pytest.raises(ValueError, match=r"none of which is a parameter or subtree"):
        resolve_axes(params, {"w_typo": ("layers", None, None)})


def test_plain_pytree_without_axes_treats_each_array_as_one_layer():
    # no metadata, no axes=: the stacked kernel is one tensor (documented; pass axes= for layers)
    params = {"k": jnp.asarray(np.random.default_rng(1).normal(size=(L, D, F)), jnp.float32)}
    tx = prune(optax.sgd(0.0), 0.5, axes=None)
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert float(jnp.mean(~state.masks["k"])) == 0.5
    tx = prune(optax.sgd(0.0), 0.5, axes={"k": ("layers", None, None)})
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    np.testing.assert_array_equal(np.mean(~np.asarray(state.masks["k"]), axis=(1, 2)), np.full(L, 0.5))


def test_import_jaxslim_exposes_subpackages_lazily():
    assert jaxslim.prune.gradual_pruning is gradual_pruning
    assert jaxslim.optim.lamb is lamb
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        jaxslim.nonexistent  # noqa: B018


def test_moe_layer_stands_alone_and_matches_the_model_built_one():
    from jaxslim.config import ModelConfig, MoeConfig
    from jaxslim.moe import MoeLayer

    moe = MoeConfig(num_experts=4, top_k=2, dispatch="dropless", every=1)
    # one layer of a model with layer-count constraints never enters: no ModelConfig at all
    alone = MoeLayer(moe, d_model=16, d_ff=32, activation="silu", gated=True, rngs=nnx.Rngs(0))
    cfg = ModelConfig.llama(vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_ff=32, moe=moe)
    built = MoeLayer(cfg, rngs=nnx.Rngs(0))
    assert (cfg.activation, cfg.gated_mlp, cfg.mlp_bias, cfg.param_dtype) == ("silu", True, False, "float32")
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    (ya, ma), (yb, mb) = alone(x), built(x)
    np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
    np.testing.assert_array_equal(np.asarray(ma["load"]), np.asarray(mb["load"]))
    with pytest.raises(ValueError, match=r"stand-alone MoeLayer needs d_model"):
        MoeLayer(moe, d_ff=32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"needs d_ff \(or MoeConfig.d_ff\)"):
        MoeLayer(moe, d_model=16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"activation must be one of"):
        MoeLayer(moe, d_model=16, d_ff=32, activation="tanh", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"d_model=8 contradicts the ModelConfig's 16"):
        MoeLayer(cfg, d_model=8, rngs=nnx.Rngs(0))


def test_keep_masks_follow_optax_conventions_under_nnx_optimizer():
    from jaxslim.prune import keep_masks

    params, opt_state = run_nnx_optimizer(TRANSFORMS["gradual_unstructured"]())
    keep = dict(keep_masks(opt_state))  # an nnx.State, like the model's params; here beside a dict
    assert keep["embedding"] is True and keep["norm_scale"] is True
    applied = jax.tree.map(lambda m, p: np.where(m, p, 0.0), keep, params)
    for k in AXES:  # the pruned weights are already zero: applying the masks changes nothing
        np.testing.assert_array_equal(applied[k], params[k])
    assert float(np.mean(~np.asarray(keep["w_in"]))) == 0.8


@pytest.mark.slow
def test_jaxslim_model_under_nnx_optimizer_nm_and_per_layer_sparsity():
    # the reported failure: a jaxslim model (scanned stack, 2-D norms and biases) in nnx.Optimizer
    from jaxslim.config import ModelConfig
    from jaxslim.models import Transformer

    cfg = ModelConfig.gpt2(vocab_size=64, d_model=32, n_layers=4, n_heads=4, d_ff=64, max_len=16)
    for tx, check in (
        (prune(optax.adamw(1e-3), kind="nm"), "nm"),
        (prune(optax.adamw(1e-3), 0.5), "layer"),
    ):
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
        grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
        opt.update(model, grads)
        wi = np.asarray(model.stack.blocks.mlp.wi[...])  # [layers, embed, mlp]
        if check == "nm":
            groups = (wi != 0).reshape(4, 32 // 4, 4, 64).sum(axis=2)
            np.testing.assert_array_equal(groups, np.full_like(groups, 2))
        else:
            np.testing.assert_array_equal((wi == 0).reshape(4, -1).mean(axis=1), np.full(4, 0.5))
        assert (np.asarray(model.stack.blocks.attn_norm.scale[...]) != 0).all()
