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

import numpy as np
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.sharding import logical_axes

GROWN_AXES = frozenset({"embed", "norm", "mlp", "heads", "kv_heads"})
# weights whose unnamed axes are residual-width too (BERT's MLM-head transform and pooler)
_UNNAMED_WIDTH = ("mlm.w", "mlm.b", "pooler_w", "pooler_b")
# inputs of a head over a repeated axis, scaled by 1/k so the head's sum over copies is unchanged
_SCALED = ("final_norm.scale", "final_norm.bias", "mlm.norm.scale", "mlm.norm.bias", "moe.router")


def widen_config(cfg: ModelConfig, k: int) -> ModelConfig:
    """``cfg`` with residual width, heads, KV heads and FFN widths multiplied by ``k``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(
            f"width growth factor must be an integer >= 2 (the model is copied block-diagonally), got {k!r}"
        )
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


def block_diagonal(w: np.ndarray, grown: tuple[int, ...], k: int, scale: float = 1.0) -> np.ndarray:
    """``k`` copies of ``w`` on the diagonal blocks of its ``grown`` axes (times ``scale``)."""
    shape = tuple(n * k if i in grown else n for i, n in enumerate(w.shape))
    out = np.zeros(shape, w.dtype)
    for c in range(k):
        block = tuple(slice(c * n, (c + 1) * n) if i in grown else slice(None) for i, n in enumerate(w.shape))
        out[block] = w * np.asarray(scale, w.dtype)
    return out


def grown_axes(path: str, axes: tuple) -> tuple[int, ...]:
    """Positions of the axes of weight ``path`` (dotted) that width growth enlarges."""
    unnamed = any(path.endswith(p) for p in _UNNAMED_WIDTH)
    return tuple(i for i, a in enumerate(axes) if a in GROWN_AXES or (a is None and unnamed))


def widen_params(cfg: ModelConfig, flat: dict[str, np.ndarray], axes: dict[str, tuple], k: int) -> dict:
    """Dotted-path params of a ``cfg`` model -> those of the k-times wider one (see module doc)."""
    out = {}
    for path, w in flat.items():
        scale = 1.0 / k if any(path.endswith(s) for s in _SCALED) else 1.0
        out[path] = block_diagonal(np.asarray(w), grown_axes(path, axes[path]), k, scale)
    return out


def grow_width(model, k: int = 2):
    """A model ``k`` times as wide as ``model`` (any family, scanned or not) with the same logits.

    The grown model's last hidden state is ``[h / k] * k`` for pre-norm models (the final norm is
    scaled) and ``[h] * k`` for BERT; BERT's pooler output is ``[p] * k``.

    Raises:
        ValueError: ``k`` is not an integer >= 2, or the model has per-layer widths.
    """
    cfg: ModelConfig = model.cfg
    new_cfg = widen_config(cfg, k)
    state = nnx.state(model)
    flat = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}
    axes = {".".join(map(str, p)): tuple(a) for p, a in nnx.to_flat_state(logical_axes(state))}
    grown = widen_params(cfg, flat, axes, k)
    target = nnx.eval_shape(lambda: type(model)(new_cfg, rngs=nnx.Rngs(0)))
    graphdef, target_state = nnx.split(target)
    filled = []
    for p, var in nnx.to_flat_state(target_state):
        key = ".".join(map(str, p))
        value = grown[key]
        if value.shape != tuple(var.shape):
            raise AssertionError(f"width growth produced {key} of shape {value.shape}, expected {var.shape}")
        filled.append((p, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))
