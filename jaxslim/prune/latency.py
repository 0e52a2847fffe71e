"""Latency lookup tables measured on the backend in use, and the piecewise-linear fit the search uses.

:func:`measure_latency` times, jit-compiled and warmed up, one attention module for every head count
``0 … heads`` and one FFN module at sampled widths (linear interpolation between them, rather than
the reference's one build per width), plus the model with every head and neuron removed (embeddings,
norms and output layer: the part pruning cannot change), all at the given batch and sequence length.
Latency of a masked model is then predicted as ``base + Σ_layers mha[h_l] + ffn[f_l]``.

:func:`fit_piecewise` fits ``lat(n) = c`` for ``1 <= n <= t`` and ``c + slope·(n - t)`` above
(``lat(0) = 0``): small modules under-use the hardware, so removing units below ``t`` saves nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models import Transformer
from jaxslim.models.attention import Attention
from jaxslim.models.mlp import Mlp


@dataclasses.dataclass(frozen=True)
class LinearFit:
    """``lat(n) = constant`` for ``1 <= n <= threshold``, ``constant + slope·(n − threshold)`` above."""

    constant: float
    threshold: int
    slope: float

    def __call__(self, n):
        n = np.asarray(n, np.float64)
        return np.where(n <= 0, 0.0, self.constant + self.slope * np.maximum(n - self.threshold, 0))


def fit_piecewise(lut: np.ndarray) -> LinearFit:
    """Least-squares fit of a lookup table ``lut[n]`` (seconds for ``n`` units, ``lut[0] = 0``) over
    every threshold, slope clipped at zero."""
    lut = np.asarray(lut, np.float64)
    n = np.arange(1, len(lut))
    y = lut[1:]
    best: tuple[float, LinearFit] | None = None
    for t in range(1, len(lut)):
        x = np.maximum(n - t, 0).astype(np.float64)
        # y ≈ c + slope·x: ordinary least squares in (c, slope), slope >= 0
        if np.any(x > 0):
            a = np.stack([np.ones_like(x), x], 1)
            (c, slope), *_ = np.linalg.lstsq(a, y, rcond=None)
            if slope < 0:
                c, slope = y.mean(), 0.0
        else:
            c, slope = y.mean(), 0.0
        err = float(np.sum((c + slope * x - y) ** 2))
        if best is None or err < best[0]:
            best = (err, LinearFit(float(c), int(t), float(slope)))
    if best is None:
        raise ValueError(
            f"fit_piecewise needs lut[0] and at least one measured count, got {len(lut)} entries"
        )
    return best[1]


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Measured latencies (seconds) of a model's modules at one batch shape.

    Attributes:
        mha: ``[heads + 1]``, one attention module with ``n`` heads (``mha[0] = 0``).
        ffn: ``[d_ff + 1]``, one FFN module of width ``n`` (interpolated between measured widths).
        base: the model with every head and neuron removed.
        n_layers, group_size: from the config.
        batch, seq_len: the shape measured.
    """

    mha: np.ndarray
    ffn: np.ndarray
    base: float
    n_layers: int
    group_size: int
    batch: int
    seq_len: int

    @property
    def mha_fit(self) -> LinearFit:
        return fit_piecewise(self.mha)

    @property
    def ffn_fit(self) -> LinearFit:
        return fit_piecewise(self.ffn)

    def predict(self, head_mask, neuron_mask) -> float:
        """Predicted latency of a masked model (``[layers, heads]``, ``[layers, d_ff]``, nonzero = kept)."""
        heads = np.count_nonzero(np.asarray(head_mask), axis=1)
        ffn = np.count_nonzero(np.asarray(neuron_mask), axis=1)
        return float(self.base + self.mha[heads].sum() + self.ffn[ffn].sum())

    def predict_widths(self, layer_heads, layer_ffn) -> float:
        return float(
            self.base + self.mha[np.asarray(layer_heads)].sum() + self.ffn[np.asarray(layer_ffn)].sum()
        )

    def dense(self) -> float:
        return float(self.base + self.n_layers * (self.mha[-1] + self.ffn[-1]))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["mha"], d["ffn"] = self.mha.tolist(), self.ffn.tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> LatencyModel:
        return cls(**{**d, "mha": np.asarray(d["mha"]), "ffn": np.asarray(d["ffn"])})


def time_fn(fn: Callable, *args, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time (seconds) of ``fn(*args)`` after ``warmup`` calls (the first one compiles)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _module_time(module: nnx.Module, x, call, repeats) -> float:
    graphdef, state = nnx.split(module)

    @jax.jit
    def run(state, x):
        return call(nnx.merge(graphdef, state), x)

    return time_fn(run, state, x, repeats=repeats)


def measure_latency(
    cfg: ModelConfig,
    *,
    batch: int,
    seq_len: int,
    ffn_samples: int = 13,
    repeats: int = 5,
    make_model: Callable[[ModelConfig], nnx.Module] | None = None,
) -> LatencyModel:
    """Measures the lookup tables of ``cfg`` at ``[batch, seq_len]`` on the default backend.

    Args:
        ffn_samples: FFN widths timed (evenly spaced, ends included); the rest are interpolated.
        make_model: builds the whole model for the base measurement (default :class:`Transformer`).
    """

    dt = jnp.dtype(cfg.dtype)
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, seq_len, cfg.d_model), dt)
    causal = jnp.tril(jnp.ones((seq_len, seq_len), bool))[None, None] if cfg.causal else None
    gs = cfg.n_heads // cfg.kv_heads
    mha = np.zeros(cfg.n_heads + 1)
    for h in range(gs, cfg.n_heads + 1, gs):
        sub = cfg.replace(n_heads=h, n_kv_heads=h // gs, head_dim=cfg.head_dim_)
        attn = Attention(sub, h, h // gs, rngs=nnx.Rngs(0))
        mha[h] = _module_time(attn, x, lambda m, x: m(x, mask=causal), repeats)
    if gs > 1:  # partial groups are never kept: give them the next whole group's time
        for h in range(1, cfg.n_heads + 1):
            mha[h] = mha[int(np.ceil(h / gs)) * gs]
    widths = np.unique(np.linspace(0, cfg.d_ff, ffn_samples).round().astype(int))
    measured = []
    for f in widths:
        measured.append(
            0.0 if f == 0 else _module_time(Mlp(cfg, int(f), rngs=nnx.Rngs(0)), x, lambda m, x: m(x), repeats)
        )
    ffn = np.interp(np.arange(cfg.d_ff + 1), widths, measured)
    ffn[0] = 0.0
    empty = cfg.replace(scan_layers=False, layer_heads=(0,) * cfg.n_layers, layer_ffn=(0,) * cfg.n_layers)
    model = (make_model or (lambda c: Transformer(c, rngs=nnx.Rngs(0))))(empty)
    tokens = jnp.zeros((batch, seq_len), jnp.int32)
    base = _module_time(model, tokens, lambda m, t: m(t), repeats)
    return LatencyModel(mha, ffn, base, cfg.n_layers, gs, batch, seq_len)


def model_latency(model: nnx.Module, batch: int, seq_len: int, repeats: int = 5) -> float:
    """Median seconds of one jitted forward pass of ``model`` on a ``[batch, seq_len]`` batch."""
    graphdef, state = nnx.split(model)
    tokens = jnp.ones((batch, seq_len), jnp.int32)

    @jax.jit
    def run(state, tokens):
        return nnx.merge(graphdef, state)(tokens, attention_mask=jnp.ones_like(tokens)).hidden

    return time_fn(run, state, tokens, repeats=repeats)
