"""Train and eval steps: plain ``jax.jit`` over the train state, with explicit shardings and donation.

The gradient is taken over the ``nnx.Param`` slice only. A step may accumulate gradients over
micro-batches (``lax.scan``), adds any auxiliary loss terms (the hook later features use for MoE
balance losses, THOR consistency and the like) and metric functions, and never applies a
non-finite update: it keeps the previous parameters and reports ``nonfinite=1`` so the loop can stop
with the step named while the last good checkpoint stays intact.

Steps own their context: each traces under the setup's mesh and logical axis rules
(:func:`jaxslim.sharding.step_context`), so a step a user builds and lowers without any
``jax.set_mesh`` / ``nnx.logical_axis_rules`` is the executable ``jaxslim-train`` runs and
``jaxslim-aot`` compiles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxslim.engine.losses import causal_lm_loss, chunked_causal_lm_loss, mlm_loss
from jaxslim.engine.state import TrainSetup, TrainState
from jaxslim.sharding import compiler_options, context_shards, in_step_context

Batch = Mapping[str, jax.Array]
# (model, batch, rng) -> (loss, metrics, model output)
Objective = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, dict, Any]]
# (model output, batch) -> (weighted loss term, metrics)
LossTerm = Callable[[Any, Batch], tuple[jax.Array, dict]]
# (new state, grads, updates) -> metrics
MetricFn = Callable[[TrainState, Any, Any], dict]
# (params, opt_state) -> the params the forward pass sees (e.g. straight-through masked weights)
ParamsView = Callable[[Any, Any], Any]


# the causal LM loss holds at most this many bytes of float32 logits per device at a time; a batch
# whose logits exceed it is scored in pieces (each piece's logits recomputed in the backward pass).
# Every piece gathers the LM head's weight anew under FSDP, so the pieces are as few as fit.
LM_LOSS_LOGITS_BYTES = 512 * 2**20
# logits up to this size per device are scored whole, kept for the backward pass; larger ones go
# through the chunked loss (even in one piece), which recomputes them instead
LM_LOSS_WHOLE_BYTES = 256 * 2**20


def logits_bytes(batch: int, length: int, vocab: int) -> int:
    """Bytes of float32 logits per device under the active mesh and rules."""
    sb, sl, sv = context_shards(("batch", "length", "act_vocab"), (batch, length, vocab))
    return batch // sb * (length // sl) * (vocab // sv) * 4


def loss_pieces(batch: int, length: int, vocab: int, budget: int) -> int:
    """The fewest pieces (a divisor of ``length``) whose float32 logits stay under ``budget`` bytes
    per device, under the active mesh and rules (each piece's length must also split over the
    context axes); the most pieces allowed when none does."""
    sl = context_shards(("batch", "length"), (batch, length))[1]
    valid = [n for n in range(1, length + 1) if length % n == 0 and (length // n) % sl == 0]
    whole = logits_bytes(batch, length, vocab)
    fits = [n for n in valid if whole // n <= budget]
    return fits[0] if fits else valid[-1]


def lm_objective(model, batch, rng):
    """Causal LM on ``batch["tokens"]: [b, t + 1]`` (inputs and shifted targets); optional
    ``batch["weights"]: [b, t]`` zeroes the loss of padding (the last validation batch).

    A batch whose float32 logits per device exceed ``LM_LOSS_WHOLE_BYTES`` is scored by the
    chunked loss (:func:`~jaxslim.engine.losses.chunked_causal_lm_loss`), in as few pieces as keep
    each under ``LM_LOSS_LOGITS_BYTES``; the output's ``logits`` are None then.
    """
    tokens = batch["tokens"]
    b, t = tokens.shape[0], tokens.shape[1] - 1
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", 0)
    if vocab and hasattr(model, "lm_logits") and logits_bytes(b, t, vocab) > LM_LOSS_WHOLE_BYTES:
        pieces = loss_pieces(b, t, vocab, LM_LOSS_LOGITS_BYTES)
        out = model(tokens[:, :-1], rng=rng, logits=False)
        loss, metrics = chunked_causal_lm_loss(
            model.lm_logits, out.hidden, tokens[:, 1:], batch.get("weights"), chunk=t // pieces
        )
        return loss, metrics, out
    out = model(tokens[:, :-1], rng=rng)
    loss, metrics = causal_lm_loss(out.logits, tokens[:, 1:], batch.get("weights"))
    return loss, metrics, out


def mlm_objective(model, batch, rng):
    """Masked LM on ``batch["tokens"]`` with ``batch["labels"]`` (-100 where not masked)."""
    out = model(batch["tokens"], attention_mask=batch.get("attention_mask"), rng=rng)
    loss, metrics = mlm_loss(out.logits, batch["labels"])
    return loss, metrics, out


def _global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


def _learning_rate(opt_state) -> jax.Array | None:
    # inject_hyperparams keeps the value (an array) and, for a schedule, its state under the same
    # name: only the array is the learning rate
    found = optax.tree_utils.tree_get(
        opt_state, "learning_rate", default=None, filtering=lambda _, v: isinstance(v, jax.Array)
    )
    return None if found is None else jnp.asarray(found, jnp.float32)


def _half_batch_grads(grad_fn, state: TrainState, batch: Batch, rng):
    """Loss, metrics and gradient of each half of ``batch``, stacked on a leading axis of 2."""

    def split(x):
        if x.shape[0] % 2:
            raise ValueError(f"AGVM splits the batch in two halves: batch size {x.shape[0]} is odd")
        return x.reshape((2, x.shape[0] // 2) + x.shape[1:])

    halves = jax.tree.map(split, batch)
    rngs = jax.random.split(rng, 2)
    return jax.vmap(grad_fn, in_axes=(None, None, 0, 0, None))(
        state.params, state.rest, halves, rngs, state.opt_state
    )


def _merge_half_metrics(metrics: dict) -> dict:
    return {
        k: jnp.sum(v, 0) if k in ("loss_sum", "count", "correct") else jnp.mean(v, 0)
        for k, v in metrics.items()
    }


def make_train_step(
    setup: TrainSetup,
    objective: Objective = lm_objective,
    *,
    accum_steps: int = 1,
    loss_terms: Sequence[LossTerm] = (),
    metric_fns: Sequence[MetricFn] = (),
    batch_sharding: Any = None,
    donate: bool = True,
    params_view: ParamsView | None = None,
    agvm_every: int = 0,
    agvm_start: int = 0,
):
    """Builds ``step(state, batch) -> (state, metrics)``, jitted with the setup's shardings.

    Args:
        setup: from :func:`~jaxslim.engine.state.create_train_state`.
        objective: the task loss, e.g. :func:`lm_objective` or :func:`mlm_objective`.
        accum_steps: micro-batches per step; the batch's leading axis must divide by it.
        loss_terms: auxiliary losses added to the objective (already weighted).
        metric_fns: extra metrics computed from the new state, the gradients and the updates.
        batch_sharding: sharding of every batch array (default: let jit infer from the input).
        donate: donate the input state's buffers.
        params_view: ``(params, opt_state) -> params`` seen by the forward pass (differentiated
            through), e.g. :func:`jaxslim.prune.straight_through_params`; default: the params.
        agvm_every / agvm_start: on steps ``agvm_start + k * agvm_every`` the gradient is taken on
            each half of the batch and both are passed to the optimizer as ``agvm_grads`` (for
            :func:`jaxslim.optim.agvm`); their mean is the step's gradient. 0 turns this off.
    """
    if not isinstance(accum_steps, int) or accum_steps < 1:
        raise ValueError(f"accum_steps must be an integer >= 1, got {accum_steps!r}")
    if agvm_every and accum_steps != 1:
        raise ValueError(f"AGVM's half-batch gradients need accum_steps=1, got accum_steps={accum_steps}")
    graphdef, tx = setup.graphdef, setup.tx

    def loss_fn(params, rest, batch, rng, opt_state):
        if params_view is not None:
            params = params_view(params, opt_state)
        model = nnx.merge(graphdef, params, rest)
        loss, metrics, out = objective(model, batch, rng)
        metrics = dict(metrics)
        for term in loss_terms:
            extra, extra_metrics = term(out, batch)
            loss = loss + extra
            metrics.update(extra_metrics)
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_batches(batch):
        def split(x):
            if x.shape[0] % accum_steps:
                raise ValueError(f"batch size {x.shape[0]} is not divisible by accum_steps={accum_steps}")
            return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

        return jax.tree.map(split, batch)

    def step(state: TrainState, batch: Batch):
        rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
        if agvm_every:
            pass  # both gradients are taken inside the lax.cond below
        elif accum_steps == 1:
            (loss, metrics), grads = grad_fn(state.params, state.rest, batch, step_rng, state.opt_state)
        else:
            rngs = jax.random.split(step_rng, accum_steps)

            def body(carry, xs):
                mb, r = xs
                (loss, metrics), grads = grad_fn(state.params, state.rest, mb, r, state.opt_state)
                acc = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
                return acc, None

            zeros = jax.eval_shape(
                grad_fn,
                state.params,
                state.rest,
                jax.tree.map(lambda x: x[0], micro_batches(batch)),
                rngs[0],
                state.opt_state,
            )
            zeros = jax.tree.map(
                lambda s: jnp.zeros(s.shape, s.dtype), ((zeros[0][0], zeros[0][1], zeros[1]))
            )
            (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (micro_batches(batch), rngs))
            loss = loss / accum_steps
            grads = jax.tree.map(lambda g: g / accum_steps, grads)
            metrics = {
                k: v if k in ("loss_sum", "count", "correct") else v / accum_steps for k, v in metrics.items()
            }
        if agvm_every:
            # the halves' gradients average to the full batch's (equal halves, mean losses)
            def halves():
                (l2, m2), g2 = _half_batch_grads(grad_fn, state, batch, step_rng)
                g = jax.tree.map(lambda x: jnp.mean(x, axis=0), g2)
                u, o = tx.update(g, state.opt_state, state.params, agvm_grads=g2)
                return jnp.mean(l2), _merge_half_metrics(m2), g, u, o

            def whole():
                (ls, m), g = grad_fn(state.params, state.rest, batch, step_rng, state.opt_state)
                u, o = tx.update(g, state.opt_state, state.params)
                return ls, m, g, u, o

            due = (state.step >= agvm_start) & ((state.step - agvm_start) % agvm_every == 0)
            loss, metrics, grads, updates, opt_state = jax.lax.cond(due, halves, whole)
        else:
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = _global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = TrainState(
            params=keep(params, state.params),
            rest=state.rest,
            opt_state=keep(opt_state, state.opt_state),
            step=state.step + 1,
            rng=jax.random.key_data(rng),
        )
        metrics = dict(metrics)
        metrics.update(
            loss=loss,
            grad_norm=grad_norm,
            update_norm=_global_norm(updates),
            param_norm=_global_norm(new_state.params),
            nonfinite=(~finite).astype(jnp.int32),
        )
        lr = _learning_rate(opt_state)  # the rate this update used (the old state holds the previous one)
        if lr is not None:
            metrics["learning_rate"] = lr
        for fn in metric_fns:
            metrics.update(fn(new_state, grads, updates))
        return new_state, metrics

    in_shardings = (setup.shardings, batch_sharding)
    return jax.jit(
        in_step_context(step, setup.mesh, setup.rules),
        in_shardings=in_shardings,
        out_shardings=(setup.shardings, None),
        donate_argnums=(0,) if donate else (),
        compiler_options=compiler_options(setup.mesh),
    )


def make_eval_step(
    setup: TrainSetup,
    objective: Objective = lm_objective,
    *,
    batch_sharding: Any = None,
    params_view: ParamsView | None = None,
):
    """Builds ``eval_step(state, batch) -> {"loss_sum", "count", ...}`` (sums, to average exactly);
    ``params_view`` as in :func:`make_train_step`. The model runs in eval mode (``model.eval()``)."""
    graphdef = setup.graphdef

    def eval_step(state: TrainState, batch: Batch):
        params = state.params if params_view is None else params_view(state.params, state.opt_state)
        model = nnx.merge(graphdef, params, state.rest)
        model.eval()  # inference behaviour: eval capacity factor, THOR's eval mode, no dropout
        _, metrics, _ = objective(model, batch, jax.random.wrap_key_data(state.rng))
        return metrics

    return jax.jit(
        in_step_context(eval_step, setup.mesh, setup.rules),
        in_shardings=(setup.shardings, batch_sharding),
        compiler_options=compiler_options(setup.mesh),
    )
