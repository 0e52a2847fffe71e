"""Builds the optimizer a training config asks for, from optax pieces.

The learning rate is injected (``optax.inject_hyperparams``) so it is logged and can be changed
without rebuilding the state. Weight decay skips biases and norm scales (any parameter of rank < 2).
"""

from __future__ import annotations

import jax
import optax

from jaxslim.optim.schedules import warmup_decay_schedule


def decay_mask(params):
    """True for weights that get weight decay: matrices and higher-rank kernels, not vectors.

    A scanned stack adds a leading layers axis, so a stacked bias is rank 2: the rule counts the
    rank without that axis through the parameter's logical axes when they are available.
    """
    from flax import nnx

    def rank(v) -> int:
        if isinstance(v, nnx.Variable):
            axes = v.get_metadata().get("out_sharding") or ()
            return v.get_value().ndim - (1 if "layers" in tuple(axes) else 0)
        return jax.numpy.ndim(v)

    return jax.tree.map(lambda v: rank(v) >= 2, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def build_optimizer(cfg, total_steps: int, *, wrap_schedule=None) -> optax.GradientTransformation:
    """``cfg`` is an :class:`~jaxslim.config.OptimConfig`; ``wrap_schedule(schedule) -> schedule``
    edits the learning-rate schedule (e.g. the re-warm-up after a growth)."""
    schedule = warmup_decay_schedule(
        cfg.lr,
        warmup_steps=cfg.warmup_steps,
        total_steps=total_steps,
        decay=cfg.decay,
        final_ratio=cfg.final_lr_ratio,
    )
    if wrap_schedule is not None:
        schedule = wrap_schedule(schedule)

    def make(learning_rate):
        if cfg.name in ("adamw", "lamb"):
            # the two share Adam's moments and decoupled decay; LAMB adds the trust ratio
            build = optax.adamw if cfg.name == "adamw" else optax.lamb
            opt = build(
                learning_rate,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=decay_mask,
            )
        else:  # sgd
            opt = optax.sgd(learning_rate, momentum=cfg.b1 or None)
        if cfg.clip_norm:
            opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
        return opt

    return optax.inject_hyperparams(make)(learning_rate=schedule)
