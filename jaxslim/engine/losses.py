"""Task losses: causal LM, masked LM and sequence classification.

Each returns ``(mean loss, metrics)`` where metrics hold the summed loss and the token (or example)
count, so gradient accumulation and evaluation can average exactly over micro-batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

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
