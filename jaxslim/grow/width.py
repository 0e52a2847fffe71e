"""Width growth by an integer factor k: a model k times as wide that computes the same logits.

Staged training's operator (Shen et al. 2022), generalised from 2 to k copies and driven by the
logical axes every weight carries: each axis of residual width (``embed``, ``norm``), FFN width
(``mlp``) or heads (``heads``, ``kv_heads``) grows k-fold, and a weight becomes block-diagonal
over its grown axes (copy c of the original sits at block c of every grown axis, zeros elsewhere).
So biases and norm parameters are repeated, embeddings concatenated along the width, kernels
block-diagonal, and the residual stream of the grown model is ``[x, x, ..., x]``: LayerNorm and
RMSNorm give the same statistics for it, each head copy attends as the original head (head
dimension unchanged, GQA groups preserved), and the norm feeding the output head (the final norm,
or BERT's MLM-head norm) is scaled by ``1/k`` so the head, whose input axis was repeated, returns
the original logits. Routers of expert layers are repeated and scaled by ``1/k`` the same way.

Optimizer state (see :mod:`jaxslim.grow.state`): the loss of the grown model sees each copy of an
ordinary weight with ``1/k`` of the small model's gradient, so Adam-style first and second moments
of the copied blocks become ``m/k`` and ``v/k**2`` (staged training's ``m/2, v/4``) and the first
update of every copied block equals the small model's update; the ``1/k``-scaled head inputs and
routers, and weights without a grown axis, get the full gradient per copy and keep their moments.
Off-diagonal (new) blocks start with zero moments. Pruning masks are tiled over the grown axes,
so every block keeps the small model's pattern (sparsity, N:M groups and pruned heads preserved).

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxslim.config import ModelConfig
    >>> from jaxslim.models import Transformer
    >>> small = Transformer(ModelConfig.gpt2(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32),
    ...                     rngs=nnx.Rngs(0))
    >>> big = grow_width(small, 2)
    >>> big.cfg.d_model, big.cfg.n_heads, big.cfg.d_ff
    (32, 4, 64)
    >>> t = jnp.ones((1, 5), jnp.int32)
    >>> bool(jnp.allclose(big(t).logits, small(t).logits, atol=1e-5))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from jaxslim.config import ModelConfig
from jaxslim.grow.tree import Kind, grow_model, map_paths

GROWN_AXES = frozenset({"embed", "norm", "mlp", "heads", "kv_heads"})
# weights whose unnamed axes are residual-width too (BERT's MLM-head transform and pooler)
_UNNAMED_WIDTH = ("mlm.w", "mlm.b", "pooler_w", "pooler_b")
# inputs of a head over a repeated axis, scaled by 1/k so the head's sum over copies is unchanged
_SCALED = ("final_norm.scale", "final_norm.bias", "mlm.norm.scale", "mlm.norm.bias", "moe.router")


def widen_config(cfg: ModelConfig, k: int) -> ModelConfig:
    """``cfg`` with residual width, heads, KV heads and FFN widths multiplied by ``k``."""
    _check_factor(k)
    if not cfg.uniform:
        raise ValueError(
            "width growth of a slimmed model with per-layer widths (layer_heads / layer_ffn) is not supported; "
            "grow the uniform model before slimming it"
        )
    moe = cfg.moe
    if moe is not None and moe.d_ff is not None:
        moe = moe.replace(d_ff=moe.d_ff * k)
    return cfg.replace(
        d_model=cfg.d_model * k,
        n_heads=cfg.n_heads * k,
        n_kv_heads=None if cfg.n_kv_heads is None else cfg.n_kv_heads * k,
        head_dim=cfg.head_dim_ if cfg.head_dim is not None else None,
        d_ff=cfg.d_ff * k,
        moe=moe,
    )


def narrow_config(cfg: ModelConfig, k: int) -> ModelConfig:
    """The model that :func:`widen_config` turns into ``cfg``: widths and head counts divided by ``k``.

    Raises:
        ValueError: ``k`` does not divide a width or head count (each is named).
    """
    _check_factor(k)
    if not cfg.uniform:
        raise ValueError("a model with per-layer widths (layer_heads / layer_ffn) has no narrower start")
    fields = {
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.kv_heads,
        "d_ff": cfg.d_ff,
    }
    if cfg.moe is not None and cfg.moe.d_ff is not None:
        fields["moe.d_ff"] = cfg.moe.d_ff
    bad = [f"{name}={value}" for name, value in fields.items() if value % k]
    if bad:
        raise ValueError(
            f"width factor {k} must divide every width and head count of the model; it does not divide "
            + ", ".join(bad)
        )
    if cfg.head_dim is None and (cfg.d_model // k) // (cfg.n_heads // k) != cfg.head_dim_:
        raise AssertionError("narrowing changed the head dimension")
    moe = cfg.moe
    if moe is not None and moe.d_ff is not None:
        moe = moe.replace(d_ff=moe.d_ff // k)
    return cfg.replace(
        d_model=cfg.d_model // k,
        n_heads=cfg.n_heads // k,
        n_kv_heads=None if cfg.n_kv_heads is None else cfg.n_kv_heads // k,
        head_dim=cfg.head_dim,
        d_ff=cfg.d_ff // k,
        moe=moe,
    )


def _check_factor(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(
            f"width growth factor must be an integer >= 2 (the model is copied block-diagonally), got {k!r}"
        )


def block_diagonal(w, grown: tuple[int, ...], k: int, scale: float = 1.0, *, tile: bool = False):
    """``k`` copies of ``w`` (times ``scale``) on the diagonal blocks of its ``grown`` axes, zeros
    elsewhere; with ``tile`` every block is a copy. Works on NumPy and JAX arrays (and under jit)."""
    w = jnp.asarray(w)
    if scale != 1.0:
        w = w * jnp.asarray(scale, w.dtype)
    if not grown:
        return w
    if tile:
        return jnp.tile(w, [k if i in grown else 1 for i in range(w.ndim)])
    out = jnp.zeros(tuple(n * k if i in grown else n for i, n in enumerate(w.shape)), w.dtype)
    for c in range(k):
        block = tuple(slice(c * n, (c + 1) * n) if i in grown else slice(None) for i, n in enumerate(w.shape))
        out = out.at[block].set(w)
    return out


def grown_axes(path: str, axes: tuple) -> tuple[int, ...]:
    """Positions of the axes of weight ``path`` (dotted) that width growth enlarges."""
    unnamed = any(path.endswith(p) for p in _UNNAMED_WIDTH)
    return tuple(i for i, a in enumerate(axes) if a in GROWN_AXES or (a is None and unnamed))


def gradient_scale(path: str, axes: tuple, k: int) -> float:
    """How the gradient of each copy of ``path`` compares with the small model's: ``1/k`` for a
    copied weight, ``1`` for the ``1/k``-scaled head inputs and for weights without a grown axis."""
    if not grown_axes(path, axes) or any(path.endswith(s) for s in _SCALED):
        return 1.0
    return 1.0 / k


@dataclass(frozen=True)
class Widen:
    """Width growth by ``k`` as a growth operator (:mod:`jaxslim.grow.state`)."""

    k: int = 2

    def __post_init__(self):
        _check_factor(self.k)

    def config(self, cfg: ModelConfig) -> ModelConfig:
        return widen_config(cfg, self.k)

    def apply(self, cfg: ModelConfig, tree: dict, axes: dict, kind: Kind) -> dict:
        """Grows a params-shaped nested dict: weights (``"param"``), moments (``"moment1"``,
        ``"moment2"``) or masks (``"mask"``); ``axes`` holds each leaf's logical axes."""
        k = self.k

        def leaf(path: str, w, ax):
            grown = grown_axes(path, ax)
            if kind == "mask":
                return block_diagonal(w, grown, k, tile=True)
            if kind == "param":
                scale = 1.0 / k if any(path.endswith(s) for s in _SCALED) else 1.0
            else:
                scale = gradient_scale(path, ax, k) ** (1 if kind == "moment1" else 2)
            return block_diagonal(w, grown, k, scale)

        return map_paths(leaf, tree, axes)


def grow_width(model, k: int = 2):
    """A model ``k`` times as wide as ``model`` (any family, scanned or not) with the same logits.

    The grown model's last hidden state is ``[h / k] * k`` for pre-norm models (the final norm is
    scaled) and ``[h] * k`` for BERT; BERT's pooler output is ``[p] * k``.

    Raises:
        ValueError: ``k`` is not an integer >= 2, or the model has per-layer widths.
    """
    return grow_model(model, Widen(k))
