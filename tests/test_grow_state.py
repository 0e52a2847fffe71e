"""Growth of whole training states: logits, first optimizer updates, masks, shardings, schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxslim.config import MeshConfig, ModelConfig, MoeConfig, OptimConfig, PruneConfig
from jaxslim.engine.state import create_train_state, make_setup, merge_model
from jaxslim.engine.step import lm_objective, make_train_step, mlm_objective
from jaxslim.grow import Deepen, Widen, narrow_config
from jaxslim.grow.state import grow_train_state, set_schedule_step
from jaxslim.grow.width import gradient_scale, grown_axes
from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer, warmup_decay_schedule
from jaxslim.optim.rewarm import grown_schedule_step, rewarm_schedule
from jaxslim.prune.transform import from_config as prune_from_config
from jaxslim.prune.transform import masked_params
from jaxslim.sharding import logical_axes, make_mesh

TINY = dict(vocab_size=64, d_model=16, n_layers=2, n_heads=4, d_ff=32, max_len=16)
FAMILIES = {
    "gpt2": ModelConfig.gpt2(**TINY),
    "llama-gqa": ModelConfig.llama(**TINY, n_kv_heads=2),
    "bert": ModelConfig.bert(**TINY, head="mlm"),
}
MESH = MeshConfig(data=2, fsdp=2, tensor=2)
RNG = np.random.default_rng(0)
TOKENS = jnp.asarray(RNG.integers(4, 64, (8, 12)), jnp.int32)
LABELS = jnp.where(jnp.asarray(RNG.random((8, 12)) < 0.3), TOKENS, -100)


def _batch(cfg):
    return {"tokens": TOKENS, "labels": LABELS} if cfg.arch == "bert" else {"tokens": TOKENS}


def _objective(cfg):
    return mlm_objective if cfg.arch == "bert" else lm_objective


def _trained(cfg, tx, steps=3):
    """A state of ``cfg`` after a few steps (non-trivial moments), its setup, mesh and rules."""
    mesh, rules = make_mesh(MESH), MESH.rules
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        state, setup = create_train_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), tx, mesh, rules)
        step = make_train_step(setup, _objective(cfg), donate=False)
        for _ in range(steps):
            state, _ = step(state, _batch(cfg))
    return state, setup, mesh, rules


def _grow(state, cfg, op, tx, mesh, rules, **kw):
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        big, big_cfg = grow_train_state(state, cfg, op, tx=tx, mesh=mesh, rules=rules, **kw)
        return big, big_cfg, make_setup(lambda: Transformer(big_cfg, rngs=nnx.Rngs(0)), tx, mesh, rules)


def _logits(setup, state, cfg):
    model = merge_model(setup, state)
    return np.asarray(model(TOKENS[:, :-1] if cfg.arch != "bert" else TOKENS).logits)


def _step(setup, state, cfg, mesh, rules):
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        return make_train_step(setup, _objective(cfg), donate=False)(state, _batch(cfg))[0]


def _flat(params):
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(params)}


def _diagonal_blocks(big, small_shape, grown, k):
    """The k diagonal blocks of ``big`` along its ``grown`` axes."""
    for c in range(k):
        idx = tuple(
            slice(c * n, (c + 1) * n) if i in grown else slice(None) for i, n in enumerate(small_shape)
        )
        yield big[idx]


CASES = [
    ("gpt2", Widen(2), "adamw"),
    ("gpt2", Widen(3), "adamw"),
    ("llama-gqa", Widen(2), "adamw"),
    ("llama-gqa", Widen(2), "sgd"),
    ("bert", Widen(2), "adamw"),
    ("gpt2", Deepen("identity"), "adamw"),
    ("llama-gqa", Deepen("identity", "append", 1), "adamw"),
]


@pytest.mark.parametrize("family,op,opt", CASES, ids=[f"{f}-{o}-{n}" for f, o, n in CASES])
def test_grown_state_keeps_logits_and_first_update(family, op, opt):
    """Adam's step is scale-free, so with m/k, v/k^2 every copied block moves exactly as the small
    model's weight; momentum SGD's copies move by the small step times their gradient scale."""
    cfg = FAMILIES[family]
    # clipping off: the grown gradient has another global norm (documented); tiny eps so that
    # Adam's direction is scale-free to float precision
    tx = build_optimizer(OptimConfig(name=opt, clip_norm=0.0, warmup_steps=2, eps=1e-12), 100)
    small, setup, mesh, rules = _trained(cfg, tx)
    big, big_cfg, big_setup = _grow(small, cfg, op, tx, mesh, rules)
    np.testing.assert_allclose(_logits(big_setup, big, big_cfg), _logits(setup, small, cfg), atol=1e-5)

    before_s, before_b = _flat(small.params), _flat(big.params)
    after_s = _flat(_step(setup, small, cfg, mesh, rules).params)
    after_b = _flat(_step(big_setup, big, big_cfg, mesh, rules).params)
    axes = {".".join(map(str, p)): tuple(a) for p, a in nnx.to_flat_state(logical_axes(small.params))}
    checked = 0
    for path, w in before_s.items():
        if path.endswith("attn.bk"):
            # the key bias shifts every score of a query equally and softmax ignores the shift: its
            # gradient is rounding noise, which Adam normalises to full-size steps in either model
            continue
        du = after_s[path] - w
        if isinstance(op, Widen):
            grown = grown_axes(path, axes[path])
            if opt == "sgd":  # not scale-free: each copy moves by its own (1/k-scaled) gradient
                du = du * gradient_scale(path, axes[path], op.k)
            blocks = _diagonal_blocks(after_b[path] - before_b[path], w.shape, grown, op.k)
        else:  # the old blocks sit where the plan put them; compare layer by layer (scanned stack)
            if not path.startswith("stack."):
                blocks = [after_b[path] - before_b[path]]
            else:
                from jaxslim.grow import deepen_plan

                plan = deepen_plan(cfg.n_layers, op.placement, op.n_new)
                old = [i for i, (_, new) in enumerate(plan) if not new]
                blocks = [(after_b[path] - before_b[path])[old]]
        for block in blocks:
            np.testing.assert_allclose(block, du, atol=1e-6, rtol=0, err_msg=path)
            checked += 1
    assert checked >= len(before_s) - 1
    assert np.abs(np.concatenate([v.ravel() for v in after_s.values()]) - 0).max() > 0


def test_grown_state_is_created_in_the_grown_models_shardings():
    cfg = FAMILIES["llama-gqa"]
    tx = build_optimizer(OptimConfig(), 100)
    small, _, mesh, rules = _trained(cfg, tx, steps=1)
    for op in (Widen(2), Deepen()):
        big, _, big_setup = _grow(small, cfg, op, tx, mesh, rules)
        leaves = jax.tree_util.tree_leaves_with_path(big)
        want = jax.tree.leaves(big_setup.shardings)
        assert len(leaves) == len(want)
        sharded = 0
        for (path, x), w in zip(leaves, want, strict=True):
            assert x.sharding.is_equivalent_to(w, x.ndim), jax.tree_util.keystr(path)
            sharded += any(a is not None for a in w.spec)
        assert sharded > 10  # params and both Adam moments are really split over the mesh


def test_masks_are_tiled_and_sparsity_kept():
    cfg = FAMILIES["gpt2"]
    prune = PruneConfig(kind="unstructured", sparsity=0.5, begin_step=0, num_updates=1, update_every=1)
    tx = prune_from_config(prune, build_optimizer(OptimConfig(clip_norm=0.0), 100))
    small, setup, mesh, rules = _trained(cfg, tx, steps=2)
    big, big_cfg, big_setup = _grow(small, cfg, Widen(2), tx, mesh, rules)
    masks_s = jax.tree.leaves(small.opt_state.masks)
    masks_b = jax.tree.leaves(big.opt_state.masks)
    assert masks_s and len(masks_s) == len(masks_b)
    for ms, mb in zip(masks_s, masks_b, strict=True):
        ms, mb = np.asarray(ms), np.asarray(mb)
        assert mb.dtype == bool and mb.size > ms.size
        assert mb.mean() == pytest.approx(ms.mean())
    view_s = merge_model(setup, small._replace(params=masked_params(small.params, small.opt_state)))
    view_b = merge_model(big_setup, big._replace(params=masked_params(big.params, big.opt_state)))
    np.testing.assert_allclose(view_b(TOKENS).logits, view_s(TOKENS).logits, atol=1e-5)


def test_schedule_step_is_mapped_and_rewarmed():
    base = warmup_decay_schedule(1e-3, warmup_steps=10, total_steps=200, decay="linear", final_ratio=0.0)
    r, w = 60, 20
    sched = rewarm_schedule(base, r, w)
    for t in range(0, 200):
        want = base(r + w) * (t - r) / w if r <= t < r + w else base(t)
        assert abs(float(sched(t)) - float(want)) <= 1e-9, t
    assert grown_schedule_step(r) == r + 1
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=sched)
    state = tx.init({"w": jnp.ones(3)})
    state = set_schedule_step(state, grown_schedule_step(r))
    _, state = tx.update({"w": jnp.ones(3)}, state, {"w": jnp.ones(3)})
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(float(base(r + w)) / w, rel=1e-6)
    assert int(state.inner_state[0].count) == 1  # Adam's bias-correction count is not touched


def test_restart_step_moves_every_schedule_count_in_the_grown_state():
    cfg = FAMILIES["gpt2"]
    tx = build_optimizer(OptimConfig(), 100)
    small, _, mesh, rules = _trained(cfg, tx, steps=2)
    big, _, _ = _grow(small, cfg, Widen(2), tx, mesh, rules, restart_step=41)
    assert int(big.opt_state.count) == 41
    assert [int(s.count) for s in big.opt_state.hyperparams_states.values()] == [41]
    assert int(big.step) == int(small.step) == 2


def test_growth_errors_are_named():
    with pytest.raises(ValueError, match="does not divide n_heads=6"):
        narrow_config(ModelConfig.gpt2(vocab_size=64, d_model=24, n_layers=2, n_heads=6, d_ff=48), 4)
    assert narrow_config(FAMILIES["llama-gqa"], 2).kv_heads == 1
    with pytest.raises(ValueError, match="integer >= 2"):
        Widen(1)
    with pytest.raises(ValueError, match="mode must be"):
        Deepen("zero")
    slim = FAMILIES["gpt2"].replace(scan_layers=False, layer_heads=(4, 2), layer_ffn=(32, 16))
    with pytest.raises(ValueError, match="per-layer widths"):
        Widen(2).config(slim)
    with pytest.raises(ValueError, match="post|pre-norm"):
        Deepen("identity").config(FAMILIES["bert"])
    cfg = FAMILIES["gpt2"]
    tx = optax.chain(optax.scale_by_adam(), _OddState())
    small, _, mesh, rules = _trained(cfg, tx, steps=1)
    with pytest.raises(ValueError, match="cannot grow the optimizer state.*known fields"):
        _grow(small, cfg, Widen(2), tx, mesh, rules)


class _OddState(optax.GradientTransformation):
    """An optimizer keeping parameter-shaped float state under a field growth does not know."""

    def __new__(cls):
        from typing import NamedTuple

        class Odd(NamedTuple):
            ema: object

        return optax.GradientTransformation(
            lambda p: Odd(jax.tree.map(jnp.zeros_like, p)), lambda u, s, p=None: (u, s)
        )


def test_lamb_moments_follow_the_policy_and_experts_are_carried():
    """LAMB keeps Adam's moments: copied blocks m/k and v/k^2, new blocks zero; a mixture of
    experts grows with its experts and keeps its logits."""
    cfg = ModelConfig.llama(**TINY, moe=MoeConfig(num_experts=4, top_k=2, dispatch="dropless"))
    tx = build_optimizer(OptimConfig(name="lamb", clip_norm=0.0), 100)
    small, setup, mesh, rules = _trained(cfg, tx, steps=2)
    big, big_cfg, big_setup = _grow(small, cfg, Widen(2), tx, mesh, rules)
    adam_s, adam_b = small.opt_state.inner_state[0], big.opt_state.inner_state[0]

    def experts_wi(tree):  # [groups, exp, embed, mlp] of the expert slot of the scanned groups
        return next(np.asarray(b["moe"]["wi"][...]) for b in tree["stack"]["blocks"].values() if "moe" in b)

    wi_s, wi_b = experts_wi(adam_s.mu), experts_wi(adam_b.mu)
    nu_s, nu_b = experts_wi(adam_s.nu), experts_wi(adam_b.nu)
    e, m = wi_s.shape[2], wi_s.shape[3]
    np.testing.assert_allclose(wi_b[..., :e, :m], wi_s / 2, rtol=1e-6)
    np.testing.assert_allclose(wi_b[..., e:, m:], wi_s / 2, rtol=1e-6)
    np.testing.assert_allclose(nu_b[..., e:, m:], nu_s / 4, rtol=1e-6)
    assert not wi_b[..., :e, m:].any() and not nu_b[..., e:, :m].any()
    assert big_cfg.moe.num_experts == 4 and wi_b.shape[1] == 4
    small_model, big_model = merge_model(setup, small), merge_model(big_setup, big)
    small_model.eval()
    big_model.eval()
    np.testing.assert_allclose(big_model(TOKENS).logits, small_model(TOKENS).logits, atol=1e-5)
