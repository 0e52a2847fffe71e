"""THOR's consistency-regularised objective: two views of each batch with independent expert draws.

``loss = CE(p1) + CE(p2) + alpha * 0.5 * [KL(p1 || p2) + KL(p2 || p1)]``, the KL in float32 over
the positions that carry a loss, gradients through both views. The two views run as one batched
program (``jax.vmap`` over two PRNG keys), not two sequential calls.

Example:
    >>> from jaxslim.engine import lm_objective
    >>> objective = consistency_objective(lm_objective, alpha=5.0, positions=lm_positions)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from jaxslim.moe.losses import symmetric_kl

Batch = Mapping[str, jax.Array]
_SUMS = ("loss_sum", "count", "correct")  # metrics that are sums over the batch, not means


def lm_positions(batch: Batch) -> jax.Array:
    """Loss weights of a causal-LM batch (``tokens: [b, t + 1]``, optional ``weights: [b, t]``)."""
    tokens = batch["tokens"]
    w = batch.get("weights")
    return jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.float32) if w is None else w


def mlm_positions(batch: Batch) -> jax.Array:
    """Loss weights of a masked-LM batch: the masked positions (``labels != -100``)."""
    return (batch["labels"] != -100).astype(jnp.float32)


def consistency_objective(
    objective: Callable, alpha: float, positions: Callable[[Batch], jax.Array], *, fold_views: bool = False
):
    """Wraps a task objective ``(model, batch, rng) -> (loss, metrics, output)`` into THOR's.

    Args:
        objective: the task objective; it must pass ``rng`` on to the model and return the output
            with ``logits``.
        alpha: weight of the symmetric KL between the two views' output distributions.
        positions: ``batch -> [b, t]`` weights of the positions the KL averages over (those with
            a task loss), e.g. :func:`lm_positions`.
        fold_views: run the two views as one batch of twice the size with one key instead of
            ``vmap`` over two keys. For per-sequence and per-token draws this is the same
            distribution (every sequence or token draws on its own) and avoids batching grouped
            matmuls (``jax.lax.ragged_dot`` has no ``vmap`` rule); per-batch draws need ``vmap``.

    Returns:
        An objective whose loss is the sum of the two views' task losses plus ``alpha`` times the
        consistency term; metrics are the views' metrics averaged, plus ``thor/consistency`` (the
        symmetric KL) and ``thor/ce`` (the mean task loss of one view). The output is view 1's
        (with ``fold_views``, the folded batch's).
    """
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"consistency alpha must be a number >= 0, got {alpha!r}")

    def thor_objective(model, batch, rng):
        if fold_views:
            both = {k: jnp.concatenate([v, v]) for k, v in batch.items()}
            mean_loss, metrics, out = objective(model, both, rng)  # the two views' mean task loss
            logits = jnp.stack(jnp.split(out.logits, 2))
            losses = jnp.stack([mean_loss, mean_loss])  # only their sum enters the loss
            metrics = {k: v / 2 if k in _SUMS else v for k, v in metrics.items()}
        else:
            losses, metrics, outs = jax.vmap(lambda r: objective(model, batch, r))(jax.random.split(rng, 2))
            logits = outs.logits
            metrics = {k: jnp.mean(v, axis=0) for k, v in metrics.items()}
            out = jax.tree.map(lambda a: a[0], outs)
        kl = symmetric_kl(logits[0], logits[1], positions(batch))
        loss = losses[0] + losses[1] + alpha * kl
        metrics.update({"thor/consistency": kl, "thor/ce": jnp.mean(losses)})
        return loss, metrics, out

    return thor_objective
