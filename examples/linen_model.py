"""jaxslim's transforms on a Flax Linen model, in a plain optax training loop.

Linen parameters are plain dicts of arrays, so the axis names that per-layer behaviour needs are
given once, as ``axes=``: here they come from the model's own ``nn.with_logical_partitioning``
annotations, and ``nn.scan`` names the stacked layer axis ``"layers"``. With them, gradual pruning
reaches 80% in every scanned layer separately and LAMB computes one trust ratio per layer.

Run: ``python examples/linen_model.py`` (a few seconds on a laptop CPU).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

import jaxslim

VOCAB, D, F, LAYERS = 64, 32, 64, 4


def annotated(init, names):
    return nn.with_logical_partitioning(init, names)


class Block(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        ones, zeros = nn.initializers.ones, nn.initializers.zeros
        x = nn.LayerNorm(scale_init=annotated(ones, ("norm",)), bias_init=annotated(zeros, ("norm",)))(h)
        x = nn.Dense(F, kernel_init=annotated(nn.initializers.lecun_normal(), (None, "model")))(x)
        x = nn.Dense(D, kernel_init=annotated(nn.initializers.lecun_normal(), ("model", None)))(nn.gelu(x))
        return h + x, None


class LM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(VOCAB, D)(tokens)
        stack = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=LAYERS,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        h, _ = stack()(h, None)
        return nn.Dense(VOCAB)(h)


def axes_of(variables):
    """Each parameter's logical axes from its annotation (``None`` where there is none)."""
    specs = nn.get_partition_spec(variables)
    return jax.tree.map(
        lambda s, x: tuple(s) + (None,) * (np.ndim(x) - len(s)) if len(s) else None,
        specs,
        nn.unbox(variables),
        is_leaf=lambda s: isinstance(s, PartitionSpec),
    )


def batches(steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        seq = (rng.integers(0, VOCAB, size=(8, 1)) + np.arange(17)) % VOCAB
        yield jnp.asarray(seq[:, :-1]), jnp.asarray(seq[:, 1:])


def main():
    model = LM()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    axes = axes_of(variables)["params"]
    params = nn.unbox(variables)["params"]

    lamb = jaxslim.optim.lamb(3e-2, weight_decay=0.01, axes=axes)
    tx = jaxslim.prune.gradual_pruning(lamb, 0.8, begin_step=5, num_updates=4, update_every=5, axes=axes)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for x, y in batches(40):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    print(
        f"Linen + optax, 80% gradual pruning around per-layer LAMB: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    assert losses[-1] < losses[0]

    stack = params["ScanBlock_0"]
    for name in ("Dense_0", "Dense_1"):
        w = np.asarray(stack[name]["kernel"])  # [layers, in, out]
        zeros = (w == 0).reshape(LAYERS, -1).mean(axis=1)
        print(f"  {name} zeros per scanned layer: {zeros}")
        assert np.allclose(zeros, 0.8, atol=1 / w[0].size), zeros
    assert (np.asarray(params["Embed_0"]["embedding"]) != 0).all()
    assert (np.asarray(stack["LayerNorm_0"]["scale"]) != 0).all()
    groups = int(jaxslim.optim.find_trust_ratio_states(opt_state)[0].groups)
    print(f"  LAMB trust-ratio groups: {groups} (one per scanned layer of each kernel, + embedding and head)")
    assert groups == 2 * LAYERS + 2
    print(jaxslim.prune.summary_table(jaxslim.prune.get_masks(opt_state), axes=axes))


if __name__ == "__main__":
    main()
