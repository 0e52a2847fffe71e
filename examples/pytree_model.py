"""jaxslim's transforms on a model that is just a dict of arrays and a function.

No Flax at all: the parameters are a plain pytree and the forward pass a function. The blocks are
stacked in ``[layers, ...]`` arrays, which ``axes=`` says once (a prefix of the params' tree, as
optax masks are). With it, 2:4 sparsity groups run along each kernel's input axis in every layer,
and LAMB's first step moves every layer by exactly the learning rate, relative to its norm.

Run: ``python examples/pytree_model.py`` (a few seconds on a laptop CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxslim

VOCAB, D, F, LAYERS = 64, 32, 64, 4


def init_params(key):
    k = jax.random.split(key, 4)
    return {
        "embedding": 0.05 * jax.random.normal(k[0], (VOCAB, D)),
        "blocks": {
            "scale": jnp.ones((LAYERS, D)),
            "w_in": jax.random.normal(k[1], (LAYERS, D, F)) / np.sqrt(D),
            "b_in": jnp.zeros((LAYERS, F)),
            "w_out": jax.random.normal(k[2], (LAYERS, F, D)) / np.sqrt(F),
        },
        "head": jax.random.normal(k[3], (D, VOCAB)) / np.sqrt(D),
    }


# which axis of each array is the layer axis; the rest need no names
AXES = {
    "blocks": {
        "scale": ("layers", None),
        "w_in": ("layers", None, None),
        "b_in": ("layers", None),
        "w_out": ("layers", None, None),
    }
}


def forward(params, tokens):
    h = params["embedding"][tokens]
    b = params["blocks"]
    for i in range(LAYERS):
        x = h * b["scale"][i] * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)
        h = h + jax.nn.gelu(x @ b["w_in"][i] + b["b_in"][i]) @ b["w_out"][i]
    return h @ params["head"]


def loss_fn(params, tokens, targets):
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, tokens), targets).mean()


def batches(steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        seq = (rng.integers(0, VOCAB, size=(8, 1)) + np.arange(17)) % VOCAB
        yield jnp.asarray(seq[:, :-1]), jnp.asarray(seq[:, 1:])


def main():
    params = init_params(jax.random.key(0))

    # LAMB's first step: ||dW_l|| / ||W_l|| = learning rate for every layer l of the stack
    lr = 1e-2
    tx = jaxslim.optim.lamb(lr, trust_mask=True, axes=AXES)
    x, y = next(batches(1))
    updates, _ = tx.update(jax.grad(loss_fn)(params, x, y), tx.init(params), params)
    for name in ("w_in", "w_out"):
        u, w = updates["blocks"][name], params["blocks"][name]
        rel = jnp.linalg.norm(u.reshape(LAYERS, -1), axis=1) / jnp.linalg.norm(w.reshape(LAYERS, -1), axis=1)
        print(f"LAMB first step, {name}: relative update per layer {np.round(np.asarray(rel), 6)}")
        assert np.allclose(rel, lr, rtol=1e-5)

    # 2:4 sparsity with LAMB in a plain optax loop
    tx = jaxslim.prune.prune(jaxslim.optim.lamb(3e-2, axes=AXES), kind="nm", n=2, m=4, axes=AXES)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for x, y in batches(30):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    print(f"2:4 + LAMB on a plain pytree: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0]
    w = np.asarray(params["blocks"]["w_in"])  # [layers, in, out]: groups of 4 inputs
    kept = (w != 0).reshape(LAYERS, D // 4, 4, F).sum(axis=2)
    print(f"  w_in: every group of 4 inputs, in every layer, keeps {sorted(set(kept.ravel().tolist()))}")
    assert (kept == 2).all()
    pruned = sorted(jaxslim.prune.mask_counts(jaxslim.prune.get_masks(opt_state)))
    print(f"  pruned: {pruned} (not the embedding table, the biases or the norm scales)")
    assert pruned == ["blocks.w_in", "blocks.w_out", "head"]


if __name__ == "__main__":
    main()
