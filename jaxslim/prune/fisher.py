"""Per-example gradients of the head and neuron masks, and the Fisher information built from them.

The masks enter the forward pass as arguments (``model(..., head_mask=, neuron_mask=)``), so their
gradient at ``m = 1`` is one ``jax.grad`` with the weights closed over. ``vmap`` over the examples of
a batch gives true per-example gradients ``g_n`` at the cost of one batched backward pass (the
reference back-propagates mini-batch losses, so its "empirical Fisher" has 64 terms, not 2048). The
diagonal Fisher is ``Σ_n g_n²``; the rows ``g_n`` themselves feed the block-diagonal Fisher of mask
rearrangement.

Losses take one example (arrays without the batch axis) and the two masks and return a scalar:

* :func:`lm_loss` — causal LM on ``tokens [t + 1]`` (optional ``weights [t]``);
* :func:`classification_loss` — cross-entropy of a classifier on the model output, ``label``;
* :func:`distill_loss` — label-free: squared distance of the hidden states to the dense model's,
  disturbed by Gaussian noise (SlimSAM's trick: at ``m = 1`` student and teacher are equal, so
  without the noise every gradient would be zero). Works for encoders without a task head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# (model, one example, head_mask [L, H], neuron_mask [L, F]) -> scalar loss
MaskLoss = Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array, jax.Array], jax.Array]


class MaskGradients(NamedTuple):
    """Per-example mask gradients: ``head [n, layers, heads]`` and ``neuron [n, layers, d_ff]``."""

    head: np.ndarray
    neuron: np.ndarray

    @property
    def head_fisher(self) -> np.ndarray:
        """Diagonal Fisher of the head masks, ``[layers, heads]``."""
        return np.einsum("nlh,nlh->lh", self.head, self.head, dtype=np.float64)

    @property
    def neuron_fisher(self) -> np.ndarray:
        """Diagonal Fisher of the neuron masks, ``[layers, d_ff]``."""
        return np.einsum("nlf,nlf->lf", self.neuron, self.neuron, dtype=np.float64)


def _one(example):
    return jax.tree.map(lambda x: x[None], example)


def lm_loss(model, example, head_mask, neuron_mask) -> jax.Array:
    """Mean next-token cross-entropy of one ``tokens [t + 1]`` sequence."""
    tokens = example["tokens"][None]
    logits = model(tokens[:, :-1], head_mask=head_mask, neuron_mask=neuron_mask).logits[0]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[0, 1:, None], axis=-1)[:, 0]
    w = example.get("weights", jnp.ones_like(nll))
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def classification_loss(classifier: Callable[[object], jax.Array]) -> MaskLoss:
    """Cross-entropy of ``classifier(model_output) -> logits [1, classes]`` against ``label``."""

    def loss(model, example, head_mask, neuron_mask):
        ex = _one(example)
        out = model(
            ex["tokens"],
            attention_mask=ex.get("attention_mask"),
            head_mask=head_mask,
            neuron_mask=neuron_mask,
        )
        logp = jax.nn.log_softmax(classifier(out).astype(jnp.float32))[0]
        return -logp[example["label"]]

    return loss


def distill_loss(noise_std: float = 0.01, seed: int = 0) -> MaskLoss:
    """Label-free: ``Σ_t w_t ‖h_t(m) − (h_t(1) + ε_t)‖² / Σ_t w_t`` over the last hidden states, the
    dense teacher's disturbed by ``ε ~ N(0, noise_std²)``; the noise of each example is drawn from
    ``seed`` and the example's ``index``, so it is the same whichever batch the example is in."""

    def loss(model, example, head_mask, neuron_mask):
        ex = _one(example)
        mask = ex.get("attention_mask")
        h = model(ex["tokens"], attention_mask=mask, head_mask=head_mask, neuron_mask=neuron_mask).hidden
        t = jax.lax.stop_gradient(model(ex["tokens"], attention_mask=mask).hidden)
        key = jax.random.fold_in(jax.random.key(seed), example["index"])
        t = t + noise_std * jax.random.normal(key, t.shape, t.dtype)
        w = jnp.ones(h.shape[:2], h.dtype) if mask is None else mask.astype(h.dtype)
        err = jnp.sum(jnp.square(h - t), axis=-1)
        return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)

    return loss


def mask_shapes(model) -> tuple[tuple[int, int], tuple[int, int]]:
    cfg = model.cfg
    if not cfg.uniform:
        raise ValueError("mask gradients need a model with uniform widths (prune before slimming)")
    if cfg.n_heads == 0 or cfg.d_ff == 0:
        raise ValueError(f"model has nothing to prune: n_heads={cfg.n_heads}, d_ff={cfg.d_ff}")
    return (cfg.n_layers, cfg.n_heads), (cfg.n_layers, cfg.d_ff)


def mask_gradients(
    model: nnx.Module,
    batches: Iterable[Mapping[str, np.ndarray]],
    loss: MaskLoss,
    *,
    progress: Callable[[int], None] | None = None,
) -> MaskGradients:
    """Per-example gradients of ``loss`` w.r.t. all-ones head and neuron masks.

    Args:
        model: a jaxslim :class:`~jaxslim.models.Transformer` (any layout); its weights are constants.
        batches: dicts of arrays with a leading example axis (``tokens``, ``attention_mask``, ``label``,
            ``index`` … as the loss needs).
        loss: a :data:`MaskLoss`.
        progress: called with the number of examples after each batch.
    """
    hshape, nshape = mask_shapes(model)
    graphdef, state = nnx.split(model)

    @jax.jit
    def batch_grads(state, batch):
        m = nnx.merge(graphdef, state)
        ones_h, ones_n = jnp.ones(hshape, jnp.float32), jnp.ones(nshape, jnp.float32)
        grad = jax.grad(lambda hm, nm, ex: loss(m, ex, hm, nm), argnums=(0, 1))
        return jax.vmap(grad, in_axes=(None, None, 0))(ones_h, ones_n, batch)

    heads, neurons = [], []
    for batch in batches:
        gh, gn = batch_grads(state, dict(batch))
        heads.append(np.asarray(gh, np.float32))
        neurons.append(np.asarray(gn, np.float32))
        if progress is not None:
            progress(len(heads[-1]))
    if not heads:
        raise ValueError("mask_gradients got no batches: pass at least one example")
    return MaskGradients(np.concatenate(heads), np.concatenate(neurons))
