"""Annealed Gaussian gradient noise (Neelakantan et al. 2015), maskable, from ``optax.add_noise``.

The noise added to the gradient at step ``t`` (0-based) has variance ``eta / (1 + t)^gamma``.
``optax.add_noise`` draws it with one key split per leaf; with JAX's partitionable threefry (the
default) each device generates only its own shard of a sharded parameter's noise, so nothing is
gathered. Put the transform first in a chain, before the optimizer's moments.

Example:
    >>> import optax
    >>> tx = optax.chain(add_gradient_noise(0.01, 0.55, seed=0), optax.adam(1e-3))
"""

from __future__ import annotations

import jax
import optax

from jaxslim.optim.masks import Mask, checked_mask


def noise_variance(eta: float, gamma: float, step) -> jax.Array:
    """``eta / (1 + step)^gamma``: the variance of the noise added at 0-based ``step``."""
    return eta / (1.0 + jax.numpy.asarray(step, jax.numpy.float32)) ** gamma


def add_gradient_noise(
    eta: float, gamma: float = 0.55, *, seed: int = 0, mask: Mask = True
) -> optax.GradientTransformation:
    """Adds ``N(0, eta / (1 + t)^gamma)`` noise to the gradients of the leaves where ``mask`` is True.

    Args:
        eta: the variance at step 0 (the paper uses 0.01, 0.3 or 1.0).
        gamma: the decay exponent (0.55 in the paper).
        seed: seed of the noise stream (kept in the state, so a resumed run continues it).
        mask: a bool tree, ``params -> tree`` or ``True`` (every leaf).

    Raises:
        ValueError: a negative ``eta`` or ``gamma``; a mask not matching the params raises at init.
    """
    for name, v in (("eta", eta), ("gamma", gamma)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
            raise ValueError(f"gradient noise {name} must be a number >= 0, got {v!r}")
    noise = optax.add_noise(float(eta), float(gamma), key=jax.random.key(seed))
    m = checked_mask("noise mask", mask)
    if m is True:
        return noise
    if m is False:
        return optax.identity()
    return optax.masked(noise, m)
