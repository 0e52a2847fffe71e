"""Builds the optimizer a training config asks for, from optax pieces.

The learning rate is injected (``optax.inject_hyperparams``) so it is logged and can be changed
without rebuilding the state. Weight decay skips biases and norm scales (any parameter of rank < 2,
not counting scanned-layer and expert axes). The chain is, outermost first: AGVM (when on), then
inside the injected optimizer: gradient noise, global-norm clipping, the optimizer itself.
"""

from __future__ import annotations

from typing import Any

import optax

from jaxslim.config import OptimConfig
from jaxslim.optim.agvm import agvm, agvm_metric_fn, module_labels
from jaxslim.optim.lamb import lamb, lamb_preset, lars
from jaxslim.optim.masks import decay_mask
from jaxslim.optim.noise import add_gradient_noise
from jaxslim.optim.schedules import (
    InfiniteSchedule,
    repeated_cosine_schedule,
    warmup_decay_schedule,
    wsd_schedule,
)
from jaxslim.optim.trust import trust_ratio_metric_fn

__all__ = ["build_optimizer", "build_schedule", "decay_mask", "optimizer_metric_fns"]


def build_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of an :class:`~jaxslim.config.OptimConfig` over ``total_steps``."""
    final = cfg.lr * cfg.final_lr_ratio
    tail = int(round(cfg.decay_fraction * total_steps))
    if cfg.decay == "wsd":
        return wsd_schedule(
            cfg.lr,
            total_steps=total_steps,
            warmup_steps=cfg.warmup_steps,
            decay_steps=min(tail, total_steps - cfg.warmup_steps),
            final_lr=final,
            decay=cfg.decay_shape or "linear",
        )
    if cfg.decay == "infinite":
        anneal = min(tail, max(total_steps - cfg.warmup_steps - cfg.cooldown_steps, 0))
        return InfiniteSchedule(
            cfg.lr,
            cfg.lr * cfg.constant_lr_ratio,
            warmup_steps=cfg.warmup_steps,
            cooldown_steps=cfg.cooldown_steps,
            cooldown=cfg.decay_shape or "cosine",
            anneal_start=total_steps - anneal if anneal else None,
            anneal_steps=anneal,
            final_lr=final,
        )
    if cfg.decay == "repeated_cosine":
        return repeated_cosine_schedule(
            cfg.lr, cycle_steps=cfg.cycle_steps, warmup_steps=cfg.warmup_steps, final_lr=final
        )
    return warmup_decay_schedule(
        cfg.lr,
        warmup_steps=cfg.warmup_steps,
        total_steps=total_steps,
        decay=cfg.decay,
        final_ratio=cfg.final_lr_ratio,
    )


def _lamb(cfg: OptimConfig, learning_rate):
    kw: dict[str, Any] = dict(b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    clamp: dict[str, Any] = dict(min_ratio=cfg.trust_min or None, max_ratio=cfg.trust_max or None)
    if cfg.lamb_preset:
        # a preset brings its own eps, trust mask, clamp, clip and bias correction; a clamp set in
        # the config replaces the preset's, and the config's clip is applied outside the preset
        extra = {k: v for k, v in clamp.items() if v is not None}
        return lamb_preset(cfg.lamb_preset, learning_rate, **kw, **extra)
    trust = None if cfg.trust_mask == "decay" else True
    return lamb(
        learning_rate, **kw, eps=cfg.eps, **clamp, trust_mask=trust, bias_correction=cfg.bias_correction
    )


def build_optimizer(
    cfg: OptimConfig, total_steps: int, *, wrap_schedule=None
) -> optax.GradientTransformation:
    """``cfg`` is an :class:`~jaxslim.config.OptimConfig`; ``wrap_schedule(schedule) -> schedule``
    edits the learning-rate schedule (e.g. the re-warm-up after a growth).

    Example:
        >>> from jaxslim.config import OptimConfig
        >>> tx = build_optimizer(OptimConfig(name="lamb", lr=2e-3, decay="wsd"), total_steps=1000)
    """
    schedule = build_schedule(cfg, total_steps)
    if wrap_schedule is not None:
        schedule = wrap_schedule(schedule)

    def make(learning_rate):
        if cfg.name == "adamw":
            opt = optax.adamw(
                learning_rate,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=decay_mask,
            )
        elif cfg.name == "lamb":
            opt = _lamb(cfg, learning_rate)
        elif cfg.name == "lars":
            trust = None if cfg.trust_mask == "decay" else True
            opt = lars(
                learning_rate,
                cfg.weight_decay,
                trust_mask=trust,
                trust_coefficient=cfg.trust_coefficient,
                momentum=cfg.b1,
                min_ratio=cfg.trust_min or None,
                max_ratio=cfg.trust_max or None,
            )
        else:  # sgd
            opt = optax.sgd(learning_rate, momentum=cfg.b1 or None)
        parts = []
        if cfg.noise_eta:
            parts.append(add_gradient_noise(cfg.noise_eta, cfg.noise_gamma))
        if cfg.clip_norm:
            parts.append(optax.clip_by_global_norm(cfg.clip_norm))
        return optax.chain(*parts, opt) if parts else opt

    tx = optax.inject_hyperparams(make)(learning_rate=schedule)
    if cfg.agvm_every:
        precondition = (cfg.b2, cfg.eps) if cfg.name in ("adamw", "lamb") else None
        tx = agvm(tx, module_labels(cfg.agvm_modules), len(cfg.agvm_modules), precondition=precondition)
    return tx


def optimizer_metric_fns(cfg: OptimConfig) -> tuple:
    """The training-step metric functions an :class:`~jaxslim.config.OptimConfig` implies: trust
    ratios for LAMB / LARS, AGVM multipliers when AGVM is on."""
    fns = []
    if cfg.name in ("lamb", "lars"):
        fns.append(trust_ratio_metric_fn)
    if cfg.agvm_every:
        fns.append(agvm_metric_fn)
    return tuple(fns)
