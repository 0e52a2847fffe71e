"""Sparse upcycling: a dense model -> a mixture of experts that starts from it.

Every expert of an expert layer is a copy of that layer's dense FFN; routers are freshly
initialised; everything else is kept. With identical experts the upcycled model computes the same
function as the dense one when the gates of a token sum to one (top-k with ``renormalize=True``, or
THOR's stochastic experts) and nothing is dropped (dropless, or enough capacity). Options break
the symmetry: Gaussian noise on the copies (levanter's N(0, 1e-3)), or Drop-Upcycling's partial
re-initialisation of a fraction of each expert's hidden units from the dense weights' statistics.
Optimizer state is not carried over: train the result from a fresh optimizer state.

Example:
    >>> from flax import nnx
    >>> from jaxslim.config import ModelConfig, MoeConfig
    >>> from jaxslim.models import Transformer
    >>> dense = Transformer(ModelConfig.gpt2(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32),
    ...                     rngs=nnx.Rngs(0))
    >>> moe = upcycle(dense, MoeConfig(num_experts=4, top_k=2, renormalize=True, dispatch="dropless"))
    >>> moe.cfg.moe.num_experts, moe.stack.blocks[0].moe.wi.shape  # scanned: [groups, E, d, f]
    (4, (1, 4, 16, 32))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxslim.config import ModelConfig, MoeConfig
from jaxslim.models.stack import rebuild

_ROUTER_STD = 0.02  # flaxformer's router init, normal(2e-2)


def upcycle(
    model,
    moe: MoeConfig,
    *,
    seed: int = 0,
    noise: float = 0.0,
    drop_fraction: float = 0.0,
):
    """A mixture-of-experts copy of the dense ``model`` (a :class:`~jaxslim.models.Transformer`).

    Args:
        model: a dense, uniform-width model, scanned or not (the result has the same layout).
        moe: the experts to create; ``moe.d_ff`` must be unset or equal the dense FFN width.
        seed: seed of the router initialisation, the noise and the re-initialised units.
        noise: std of Gaussian noise added to every expert's copy of the weights (0: exact copies).
        drop_fraction: Drop-Upcycling: in each expert, this fraction of hidden units (the same
            units in ``wi``, ``wu``, their biases and ``wo``) is re-drawn from a normal with the
            mean and std of the dense weight it replaces; a different random subset per expert.

    Raises:
        ValueError: the model already has experts, has per-layer widths, or the widths disagree.
    """

    cfg: ModelConfig = model.cfg
    if cfg.moe is not None:
        raise ValueError("upcycle needs a dense model; this one already has experts")
    if not cfg.uniform:
        raise ValueError("upcycle needs uniform layer widths; this model has per-layer widths (slimmed)")
    if moe.d_ff is not None and moe.d_ff != cfg.d_ff:
        raise ValueError(
            f"MoeConfig.d_ff={moe.d_ff} differs from the dense FFN width {cfg.d_ff}; experts copy it"
        )
    for name, v in (("noise", noise), ("drop_fraction", drop_fraction)):
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ValueError(f"upcycle {name} must be a number >= 0, got {v!r}")
    if drop_fraction > 1:
        raise ValueError(f"upcycle drop_fraction must be <= 1, got {drop_fraction}")
    new_cfg = cfg.replace(moe=moe)
    key = jax.random.key(seed)

    def edit(layers):
        out = []
        for i, tree in enumerate(layers):
            if not new_cfg.is_moe_layer(i):
                out.append(tree)
                continue
            tree = dict(tree)
            mlp = tree.pop("mlp")
            layer_key = jax.random.fold_in(key, i)
            tree["moe"] = _experts(mlp, moe, layer_key, noise, drop_fraction)
            if moe.router == "topk":
                wi = mlp["wi"]
                tree["moe"]["router"] = (
                    _ROUTER_STD
                    * jax.random.normal(jax.random.fold_in(layer_key, 3), (wi.shape[0], moe.num_experts))
                ).astype(wi.dtype)
            out.append(tree)
        return out

    return rebuild(model, new_cfg, edit)


def _experts(mlp: dict, moe: MoeConfig, key: jax.Array, noise: float, drop_fraction: float) -> dict:
    e = moe.num_experts
    experts = {name: jnp.broadcast_to(w, (e, *w.shape)) for name, w in mlp.items()}
    if drop_fraction:
        experts = _drop_upcycle(experts, jax.random.fold_in(key, 1), drop_fraction)
    if noise:
        keys = jax.random.split(jax.random.fold_in(key, 2), len(experts))
        experts = {
            name: (w + noise * jax.random.normal(k, w.shape, jnp.float32)).astype(w.dtype)
            for k, (name, w) in zip(keys, sorted(experts.items()), strict=True)
        }
    return {name: jnp.asarray(w) for name, w in experts.items()}


# hidden-unit axis of each expert FFN weight (after the leading expert axis)
_UNIT_AXIS = {"wi": 2, "wu": 2, "bi": 1, "bu": 1, "wo": 1}


def _drop_upcycle(experts: dict, key: jax.Array, fraction: float) -> dict:
    e, f = experts["wi"].shape[0], experts["wi"].shape[-1]
    n = int(round(fraction * f))
    if n == 0:
        return experts
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    redrawn = np.zeros((e, f), bool)
    for j in range(e):
        redrawn[j, rng.choice(f, n, replace=False)] = True
    out = {}
    for idx, (name, w) in enumerate(sorted(experts.items())):
        axis = _UNIT_AXIS.get(name)
        if axis is None:  # the output bias has no hidden-unit axis
            out[name] = w
            continue
        shape = [1] * w.ndim
        shape[0], shape[axis] = e, f
        mask = jnp.asarray(redrawn.reshape(shape))
        dense = w[0].astype(jnp.float32)
        fresh = jnp.mean(dense) + jnp.std(dense) * jax.random.normal(jax.random.fold_in(key, idx), w.shape)
        out[name] = jnp.where(mask, fresh.astype(w.dtype), w)
    return out
