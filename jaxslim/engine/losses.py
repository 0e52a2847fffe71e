"""Task losses: causal LM, masked LM and sequence classification.

Each returns ``(mean loss, metrics)`` where metrics hold the summed loss and the token (or example)
count, so gradient accumulation and evaluation can average exactly over micro-batches.
:func:`chunked_causal_lm_loss` computes the causal LM loss from hidden states a chunk of positions at
a time, so the float32 ``[tokens, vocab]`` logits are never whole in memory (Llama-3's 128K
vocabulary at 8K tokens per chip would need 4 GiB for them alone).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxslim.sharding import constrain

IGNORE = -100  # label of a position that carries no loss (MLM: unmasked tokens)


def _weighted_ce(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    safe = jnp.where(weights > 0, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    total = jnp.sum(ce * weights)
    count = jnp.sum(weights)
    return total / jnp.maximum(count, 1.0), {"loss_sum": total, "count": count}


def causal_lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None):
    """Next-token cross-entropy; ``logits[b, t]`` predicts ``targets[b, t]``.

    Example:
        >>> logits = jnp.zeros((1, 3, 5)); targets = jnp.array([[1, 2, 3]])
        >>> round(float(causal_lm_loss(logits, targets)[0]), 4)  # log(5)
        1.6094
    """
    w = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    return _weighted_ce(logits, targets, w)


def mlm_loss(logits: jax.Array, labels: jax.Array):
    """Masked-LM cross-entropy over positions whose label is not ``IGNORE`` (-100)."""
    return _weighted_ce(logits, labels, (labels != IGNORE).astype(jnp.float32))


def classification_loss(logits: jax.Array, labels: jax.Array):
    """Cross-entropy of ``[batch, classes]`` logits against integer labels, plus accuracy."""
    loss, metrics = _weighted_ce(logits, labels, jnp.ones(labels.shape, jnp.float32))
    metrics["correct"] = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return loss, metrics


def chunked_causal_lm_loss(
    head: Callable[[jax.Array], jax.Array],
    hidden: jax.Array,
    targets: jax.Array,
    weights: jax.Array | None = None,
    *,
    chunk: int,
):
    """:func:`causal_lm_loss` of ``head(hidden)``, computed ``chunk`` positions at a time.

    ``head`` maps ``[batch, chunk, d]`` hidden states to ``[batch, chunk, vocab]`` logits (e.g.
    :meth:`jaxslim.models.Transformer.lm_logits`). Each chunk's logits are recomputed in the backward
    pass (``jax.checkpoint``), so only one chunk's logits and their gradient exist at a time. The
    length must divide by ``chunk``; a chunk takes every ``length / chunk``-th position (the loss is
    a sum over positions), so a length split over devices stays split.

    Example:
        >>> h = jnp.zeros((1, 4, 2)); targets = jnp.array([[1, 2, 3, 0]])
        >>> head = lambda x: jnp.zeros(x.shape[:2] + (5,))
        >>> round(float(chunked_causal_lm_loss(head, h, targets, chunk=2)[0]), 4)  # log(5)
        1.6094
    """
    b, t = targets.shape
    if chunk < 1 or t % chunk:
        raise ValueError(f"chunked_causal_lm_loss: chunk={chunk} must be >= 1 and divide the length {t}")
    w = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    n = t // chunk

    def pieces(x):  # [b, t, ...] -> [n, b, chunk, ...]: piece i holds positions i, n + i, 2n + i, ...
        # strided, so that under context parallelism (the length split over devices) every piece
        # has positions of every device's chunk and the scan runs over an unsplit axis
        return jnp.moveaxis(x.reshape((b, chunk, n) + x.shape[2:]), 2, 0)

    @jax.checkpoint
    def body(carry, xs):
        h, y, wt = xs
        h = constrain(h, ("batch", "length", "act_embed"))
        logits = constrain(head(h), ("batch", "length", "act_vocab"))
        safe = jnp.where(wt > 0, y, 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
        return (carry[0] + jnp.sum(ce * wt), carry[1] + jnp.sum(wt)), None

    zero = jnp.zeros((), jnp.float32)
    (total, count), _ = jax.lax.scan(body, (zero, zero), (pieces(hidden), pieces(targets), pieces(w)))
    return total / jnp.maximum(count, 1.0), {"loss_sum": total, "count": count}
