"""jaxslim's pieces in a Flax NNX model of one's own, trained with the standard ``nnx.Optimizer``.

The model is not a jaxslim model: its kernels carry our own axis names (``"model"``), its blocks
are stacked in ``[layers, in, out]`` kernels (the ``"layers"`` name is what ``nnx.vmap`` /
``nnx.scan`` give a stacked axis), its norms are ``[layers, d]``. Into it go:

1. gradual magnitude pruning to 80% (Zhu & Gupta), exact in every layer of the stack, around
   LAMB with one trust ratio per layer;
2. 2:4 sparsity along each kernel's input (contraction) axis, never along the layer axis;
3. an MoE FFN: ``jaxslim.moe.MoeLayer`` on its own, with no jaxslim model config;
4. compressed checkpoints: save the whole training state (model and optimizer, under our own
   keys), restore it into a fresh model and optimizer, and keep training.

Run: ``python examples/nnx_own_model.py`` (a few seconds on a laptop CPU).
"""

import pathlib
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxslim
from jaxslim.checkpoint import CodecConfig, CompressedCheckpointer, abstract_like
from jaxslim.config import MoeConfig
from jaxslim.moe import MoeLayer

VOCAB, D, F, LAYERS = 64, 32, 64, 4


class TinyLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        normal = nnx.initializers.normal(0.05)

        def param(shape, axes, init=normal):
            # out_sharding holds the axis names; no mesh here, so no eager placement
            return nnx.Param(init(rngs.params(), shape), out_sharding=axes, eager_sharding=False)

        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.norm = param((LAYERS, D), ("layers", None), nnx.initializers.ones)
        self.w_up = param((LAYERS, D, F), ("layers", None, "model"))
        self.w_down = param((LAYERS, F, D), ("layers", "model", None))
        moe = MoeConfig(num_experts=4, top_k=2, dispatch="dropless")
        self.moe = MoeLayer(moe, d_model=D, d_ff=F, rngs=rngs)
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        for i in range(LAYERS):
            x = h * self.norm[i] * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)
            h = h + jax.nn.gelu(x @ self.w_up[i]) @ self.w_down[i]
        y, metrics = self.moe(h)
        return self.head(h + y), metrics["aux_loss"]


def batches(steps: int, seed: int = 0):
    """Sequences that count up modulo the vocabulary from a random start: learnable quickly."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        start = rng.integers(0, VOCAB, size=(8, 1))
        seq = (start + np.arange(17)) % VOCAB
        yield jnp.asarray(seq[:, :-1]), jnp.asarray(seq[:, 1:])


@nnx.jit
def train_step(model, opt, tokens, targets):
    def loss_fn(m):
        logits, aux = m(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean() + 0.01 * aux

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


def train(model, opt, steps, seed=0):
    losses = [float(train_step(model, opt, x, y)) for x, y in batches(steps, seed)]
    return losses[0], losses[-1]


def per_layer_zeros(w) -> np.ndarray:
    w = np.asarray(w)
    return (w == 0).reshape(w.shape[0], -1).mean(axis=1)


def main():
    # 1. gradual pruning to 80% around per-layer LAMB -----------------------------------------
    model = TinyLM(nnx.Rngs(0))
    lamb = jaxslim.optim.lamb(3e-2, weight_decay=0.01)
    tx = jaxslim.prune.gradual_pruning(lamb, 0.8, begin_step=5, num_updates=4, update_every=5)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    first, last = train(model, opt, 40)
    print(f"80% unstructured + LAMB: loss {first:.3f} -> {last:.3f}")
    for name in ("w_up", "w_down"):
        zeros = per_layer_zeros(getattr(model, name)[...])
        print(f"  {name} zeros per layer: {zeros}")
        assert np.allclose(zeros, 0.8, atol=1 / (D * F)), zeros
    assert (np.asarray(model.embed.embedding[...]) != 0).all()  # embeddings are not kernels
    assert (np.asarray(model.norm[...]) != 0).all()  # nor are [layers, d] norm scales
    ratios = jaxslim.optim.trust_ratio_metrics(opt.opt_state)
    print(
        f"  LAMB trust ratios over {int(jaxslim.optim.find_trust_ratio_states(opt.opt_state)[0].groups)} "
        f"groups (each stacked layer its own): min {float(ratios['trust_ratio/min']):.3g}, "
        f"max {float(ratios['trust_ratio/max']):.3g}"
    )
    assert last < first

    # 2. 2:4 sparsity ----------------------------------------------------------------------------
    model24 = TinyLM(nnx.Rngs(1))
    opt24 = nnx.Optimizer(model24, jaxslim.prune.prune(optax.adamw(1e-2), kind="nm", n=2, m=4), wrt=nnx.Param)
    first, last = train(model24, opt24, 20)
    w = np.asarray(model24.w_up[...])  # [layers, in, out]: groups of 4 along "in"
    kept = (w != 0).reshape(LAYERS, D // 4, 4, F).sum(axis=2)
    print(f"2:4: loss {first:.3f} -> {last:.3f}; every group of 4 inputs keeps {set(kept.ravel().tolist())}")
    assert (kept == 2).all()

    # 3. compressed checkpoints of the whole training state, under our own keys ---------------
    def training_state(model, opt):
        return {"net": nnx.state(model, nnx.Param), "optimizer": nnx.state(opt, nnx.Not(nnx.Param))}

    with tempfile.TemporaryDirectory() as d:
        raw_dir, small_dir = f"{d}/raw", f"{d}/compressed"
        codec = CodecConfig(mode="excp", min_size=256)
        with CompressedCheckpointer(small_dir, codec, async_save=False) as ckpt:
            ckpt.save(40, training_state(model, opt))
        with CompressedCheckpointer(
            raw_dir, CodecConfig(mode="excp", min_size=10**9), async_save=False
        ) as ckpt:
            with warnings.catch_warnings():  # a codec that codes nothing says so; here on purpose
                warnings.simplefilter("ignore")
                ckpt.save(40, training_state(model, opt))
        size = {
            k: sum(f.stat().st_size for f in pathlib.Path(p).rglob("*") if f.is_file())
            for k, p in (("raw", raw_dir), ("compressed", small_dir))
        }
        print(f"checkpoint: {size['raw'] / 1e3:.0f} kB raw, {size['compressed'] / 1e3:.0f} kB compressed")
        assert size["compressed"] < size["raw"]

        fresh = TinyLM(nnx.Rngs(7))
        fresh_opt = nnx.Optimizer(fresh, tx, wrt=nnx.Param)
        with CompressedCheckpointer(small_dir, codec) as ckpt:
            restored, _ = ckpt.restore(abstract_like(training_state(fresh, fresh_opt)))
        nnx.update(fresh, restored["net"])
        nnx.update(fresh_opt, restored["optimizer"])
    w_saved, w_back = np.asarray(model.w_up[...]), np.asarray(fresh.w_up[...])
    err = float(np.linalg.norm(w_back - w_saved) / np.linalg.norm(w_saved))
    print(
        f"restored (8-bit codes): relative error {err:.2e}; pruned weights still zero: "
        f"{bool((w_back[w_saved == 0] == 0).all())}"
    )
    assert err < 0.02 and (w_back[w_saved == 0] == 0).all()
    first, last = train(fresh, fresh_opt, 10, seed=1)
    print(f"resumed: loss {first:.3f} -> {last:.3f}; zeros per layer {per_layer_zeros(fresh.w_up[...])}")
    assert np.allclose(per_layer_zeros(fresh.w_up[...]), 0.8, atol=1 / (D * F))


if __name__ == "__main__":
    main()
