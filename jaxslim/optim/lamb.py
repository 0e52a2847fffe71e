"""LAMB and LARS built from optax pieces, with per-layer / per-expert trust ratios and presets.

Both are ``optax.chain``s of optax's own transforms (``clip_by_global_norm``, ``scale_by_adam``,
``add_decayed_weights``, ``masked``, ``scale_by_learning_rate``, ``trace``, ``scale_by_schedule``)
around one new piece, :func:`~jaxslim.optim.trust.scale_by_layer_trust_ratio`, whose ratio is
computed per layer of a scanned stack and per expert of stacked experts. What the reference
implementations disagree on is an argument here:

========================  ===========================  =========================  ==========================
preset                    trust ratio applied to       clipping / clamp           bias correction
========================  ===========================  =========================  ==========================
``"tf_addons"``           the weight-decay mask        none                       on the moments
``"apex"``                decayed params if wd != 0    global grad norm 1.0       on the moments
``"nvlamb"``              every param                  global grad norm 1.0       on the moments
``"deepspeed"``           every param                  ratio in [0.01, 10]        on the step size
``"optax"``               every param                  none                       on the moments
========================  ===========================  =========================  ==========================

Example:
    >>> import jax.numpy as jnp
    >>> tx = lamb(1e-3, weight_decay=0.01)  # biases and norm scales: no decay, no trust ratio
    >>> tx = lamb_preset("apex", 1e-3)      # NVIDIA apex FusedLAMB: clip to 1.0, wd 0.01
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxslim.optim.masks import Mask, checked_mask, decay_mask
from jaxslim.optim.trust import GROUP_AXES, scale_by_layer_trust_ratio

PRESETS = ("tf_addons", "apex", "nvlamb", "deepspeed", "optax")
Preset = Literal["tf_addons", "apex", "nvlamb", "deepspeed", "optax"]


def _check_number(name: str, value: Any, *, low: float = 0.0, high: float | None = None, open_high=False):
    if callable(value) or isinstance(value, jax.Array):  # a schedule, or injected by inject_hyperparams
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    if not ok:
        bound = f">= {low}" + ("" if high is None else f" and {'<' if open_high else '<='} {high}")
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def _with_axes(mask: Mask, axes: Any) -> Mask:
    """The default decay mask reads the same ``axes=`` as the trust ratio."""
    if mask is decay_mask and axes is not None:
        return functools.partial(decay_mask, axes=axes)
    return mask


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    *,
    bias_correction: bool = True,
) -> optax.GradientTransformation:
    """Adam's ``m / (sqrt(v) + eps)``; ``optax.scale_by_adam`` itself when ``bias_correction``.

    Without bias correction the raw moments are used (apex's ``bias_correction=False``, and
    DeepSpeed's LAMB, which corrects the step size instead). The state is optax's
    ``ScaleByAdamState`` either way, so checkpoints and ``tree_map_params`` treat both alike.
    """
    if bias_correction:
        return optax.scale_by_adam(b1, b2, eps, eps_root)

    def init(params):
        mu = optax.tree.zeros_like(params)
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), mu, optax.tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        new = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu, nu)
        return new, optax.ScaleByAdamState(optax.safe_increment(state.count), mu, nu)

    return optax.GradientTransformation(init, update)


def adam_step_size_correction(b1: float, b2: float) -> optax.GradientTransformation:
    """Multiplies the update by ``sqrt(1 - b2^t) / (1 - b1^t)`` (t = 1, 2, ...): bias correction
    applied to the step size instead of the moments, as DeepSpeed's fused LAMB does."""

    def factor(count):
        t = count.astype(jnp.float32) + 1.0
        return jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t)

    return optax.scale_by_schedule(factor)


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    *,
    weight_decay_mask: Mask = decay_mask,
    trust_mask: Mask | None = None,
    min_ratio: float | None = None,
    max_ratio: float | None = None,
    bias_correction: bool | Literal["step_size"] = True,
    clip_norm: float | None = None,
    axes: Any = None,
    group_axes: Sequence[str] = GROUP_AXES,
) -> optax.GradientTransformation:
    """LAMB (You et al. 2020) with a per-layer / per-expert trust ratio.

    ``u = m̂ / (sqrt(v̂) + eps) + weight_decay * w`` (decay only where ``weight_decay_mask``), then
    ``w <- w - lr * ratio * u`` with ``ratio = ||w_l|| / ||u_l||`` per layer ``l`` where
    ``trust_mask`` is True (1 elsewhere).

    Args:
        learning_rate: a float or an optax schedule.
        b1, b2, eps, eps_root: Adam's.
        weight_decay: decoupled decay coefficient.
        weight_decay_mask: bool tree or ``params -> tree``; default :func:`~jaxslim.optim.decay_mask`
            (biases and norm scales excluded).
        trust_mask: where the trust ratio applies; ``None`` uses ``weight_decay_mask`` (TF-addons'
            ``exclude_from_layer_adaptation`` default), ``True`` every parameter.
        min_ratio, max_ratio: optional trust-ratio clamp (DeepSpeed).
        bias_correction: ``True`` (moments), ``False`` (none) or ``"step_size"`` (DeepSpeed).
        clip_norm: clip the global gradient norm to this before the moments (apex: 1.0).
        axes, group_axes: see :func:`~jaxslim.optim.trust.scale_by_layer_trust_ratio`.

    Returns:
        An ``optax.GradientTransformation`` (a chain); ``update`` needs ``params``.

    Raises:
        ValueError: a negative rate, ``b1``/``b2`` outside ``[0, 1)``, a negative ``eps`` or
            ``weight_decay``, a non-positive ``clip_norm``, a bad clamp, an unknown
            ``bias_correction``; a mask that does not match the params raises when the optimizer
            is initialised.
    """
    _check_number("learning_rate", learning_rate)
    _check_number("b1", b1, high=1.0, open_high=True)
    _check_number("b2", b2, high=1.0, open_high=True)
    for name, v in (("eps", eps), ("eps_root", eps_root), ("weight_decay", weight_decay)):
        _check_number(name, v)
    if clip_norm is not None:
        _check_number("clip_norm", clip_norm)
        if clip_norm == 0:
            raise ValueError("clip_norm must be > 0 or None, got 0")
    if bias_correction not in (True, False, "step_size"):
        raise ValueError(f"bias_correction must be True, False or 'step_size', got {bias_correction!r}")
    wd_mask = checked_mask("weight_decay_mask", _with_axes(weight_decay_mask, axes))
    tr_mask = wd_mask if trust_mask is None else checked_mask("trust_mask", _with_axes(trust_mask, axes))
    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(scale_by_adam(b1, b2, eps, eps_root, bias_correction=bias_correction is True))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, wd_mask))
    trust = scale_by_layer_trust_ratio(
        axes=axes, group_axes=group_axes, min_ratio=min_ratio, max_ratio=max_ratio
    )
    if tr_mask is not False:
        parts.append(trust if tr_mask is True else optax.masked(trust, tr_mask))
    if bias_correction == "step_size":
        parts.append(adam_step_size_correction(b1, b2))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def lars(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.0,
    *,
    weight_decay_mask: Mask = decay_mask,
    trust_mask: Mask | None = None,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    min_ratio: float | None = None,
    max_ratio: float | None = None,
    axes: Any = None,
    group_axes: Sequence[str] = GROUP_AXES,
) -> optax.GradientTransformation:
    """LARS (You et al. 2017) as ``optax.lars`` composes it, with a per-layer / per-expert ratio.

    ``g' = g + weight_decay * w``; ``v <- momentum * v + lr * trust_coefficient * ||w_l|| /
    (||g'_l|| + eps) * g'``; ``w <- w - v``. Masks as in :func:`lamb`.
    """
    _check_number("learning_rate", learning_rate)
    _check_number("weight_decay", weight_decay)
    _check_number("eps", eps)
    _check_number("momentum", momentum, high=1.0, open_high=True)
    wd_mask = checked_mask("weight_decay_mask", _with_axes(weight_decay_mask, axes))
    tr_mask = wd_mask if trust_mask is None else checked_mask("trust_mask", _with_axes(trust_mask, axes))
    trust = scale_by_layer_trust_ratio(
        axes=axes,
        group_axes=group_axes,
        trust_coefficient=trust_coefficient,
        eps=eps,
        min_ratio=min_ratio,
        max_ratio=max_ratio,
    )
    parts = [optax.add_decayed_weights(weight_decay, wd_mask)] if weight_decay else []
    if tr_mask is not False:
        parts.append(trust if tr_mask is True else optax.masked(trust, tr_mask))
    parts += [optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum, nesterov=nesterov)]
    return optax.chain(*parts)


def lamb_preset(
    name: Preset,
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay_mask: Mask = decay_mask,
    **overrides: Any,
) -> optax.GradientTransformation:
    """:func:`lamb` configured as a reference implementation does it.

    - ``"tf_addons"``: TensorFlow Addons ``LAMB``: eps 1e-6, weight decay 0 by default, the trust
      ratio skips what weight decay skips (``exclude_from_layer_adaptation`` defaults to
      ``exclude_from_weight_decay``).
    - ``"apex"``: NVIDIA apex ``FusedLAMB`` (``adam_w_mode=True``): eps 1e-6, weight decay 0.01,
      the global gradient norm clipped to 1.0 first, the trust ratio only on parameters that are
      decayed with a non-zero coefficient.
    - ``"nvlamb"``: apex with ``use_nvlamb=True``: the trust ratio on every parameter.
    - ``"deepspeed"``: DeepSpeed ``FusedLamb``: eps 1e-8, the trust ratio on every parameter and
      clamped to ``[0.01, 10]``, the moments uncorrected and ``sqrt(1 - b2^t) / (1 - b1^t)``
      applied to the step size.
    - ``"optax"``: ``optax.lamb``'s choices (trust ratio everywhere, no clip), per layer.

    ``weight_decay_mask`` plays the part of the references' parameter groups (or TF-addons'
    regex list, see :func:`~jaxslim.optim.exclude_mask`); ``overrides`` go to :func:`lamb`.

    Raises:
        ValueError: an unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"LAMB preset must be one of {PRESETS}, got {name!r}")
    kw: dict[str, Any]
    if name == "tf_addons":
        kw = dict(eps=1e-6, weight_decay=0.0, trust_mask=None)
    elif name in ("apex", "nvlamb"):
        kw = dict(eps=1e-6, weight_decay=0.01, clip_norm=1.0)
    elif name == "deepspeed":
        kw = dict(eps=1e-8, weight_decay=0.0, trust_mask=True, min_ratio=0.01, max_ratio=10.0)
        kw["bias_correction"] = "step_size"
    else:
        kw = dict(eps=1e-6, trust_mask=True)
    kw.update(overrides)
    if name != "optax":
        # the reference kernels hold the betas as float32 and form 1 - beta in float32; optax forms
        # 1 - beta from the Python float, which differs by ~1e-5 relative for beta2 = 0.999
        for beta, default in (("b1", 0.9), ("b2", 0.999)):
            kw[beta] = float(np.float32(kw.get(beta, default)))
    if name == "apex" and "trust_mask" not in overrides:
        # apex: parameters whose group has weight decay 0 are stepped without the ratio
        kw["trust_mask"] = weight_decay_mask if kw.get("weight_decay", 0.0) else False
    if name == "nvlamb" and "trust_mask" not in overrides:
        kw["trust_mask"] = True
    return lamb(learning_rate, weight_decay_mask=weight_decay_mask, **kw)
