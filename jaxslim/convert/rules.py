"""The key-map machinery shared by every architecture.

A :class:`Rule` ties one Hugging Face tensor name (a format string with ``{i}`` for the layer) to
one or more jaxslim parameter paths (in the unscanned layout) and a :class:`Transform` that maps
the array both ways. Loading runs every rule over the checkpoint's keys as a regex; saving runs it
over the layers of the model. Problems are collected, never raised one by one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

from jaxslim.config import ModelConfig

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Transform:
    """``to_jax(array, cfg) -> list of arrays`` and its inverse ``to_hf(list of arrays, cfg) -> array``."""

    to_jax: Callable[[Array, ModelConfig], list[Array]]
    to_hf: Callable[[list[Array], ModelConfig], Array]


def _t(a: Array) -> Array:
    return np.ascontiguousarray(a.T)


COPY = Transform(lambda a, c: [a], lambda xs, c: xs[0])
# torch nn.Linear stores [out, in]; jaxslim kernels are [in, out]
LINEAR = Transform(lambda a, c: [_t(a)], lambda xs, c: _t(xs[0]))
# [heads * head_dim, d] (Linear) -> [d, heads, head_dim]
LINEAR_TO_HEADS = Transform(
    lambda a, c: [_t(a).reshape(a.shape[1], -1, c.head_dim_)],
    lambda xs, c: _t(xs[0].reshape(xs[0].shape[0], -1)),
)
# [d, heads * head_dim] (Linear) -> [heads, head_dim, d]
LINEAR_FROM_HEADS = Transform(
    lambda a, c: [_t(a).reshape(-1, c.head_dim_, a.shape[0])],
    lambda xs, c: _t(xs[0].reshape(-1, xs[0].shape[-1])),
)
HEADS_BIAS = Transform(lambda a, c: [a.reshape(-1, c.head_dim_)], lambda xs, c: xs[0].reshape(-1))
# GPT-2 Conv1D stores [in, out]: c_attn is [d, 3 * d] holding q, k and v side by side
CONV_QKV = Transform(
    lambda a, c: [p.reshape(a.shape[0], -1, c.head_dim_) for p in np.split(a, 3, axis=1)],
    lambda xs, c: np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=1),
)
CONV_QKV_BIAS = Transform(
    lambda a, c: [p.reshape(-1, c.head_dim_) for p in np.split(a, 3)],
    lambda xs, c: np.concatenate([x.reshape(-1) for x in xs]),
)
CONV_FROM_HEADS = Transform(
    lambda a, c: [a.reshape(-1, c.head_dim_, a.shape[1])], lambda xs, c: xs[0].reshape(-1, xs[0].shape[-1])
)


@dataclasses.dataclass(frozen=True)
class Rule:
    """``hf``: HF name relative to the backbone prefix (``{i}`` = layer); ``jax``: target paths;
    ``head``: the name is not under the backbone prefix (output heads)."""

    hf: str
    jax: tuple[str, ...]
    transform: Transform = COPY
    head: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf

    def regex(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def rule(hf: str, *jax: str, transform: Transform = COPY, head: bool = False) -> Rule:
    return Rule(hf, tuple(jax), transform, head)


class ConversionError(ValueError):
    """Every missing, unexpected or mis-shaped tensor of a conversion, reported together."""


def hf_to_flat(
    tensors: dict[str, Array],
    rules: Sequence[Rule],
    expected: dict[str, tuple[int, ...]],
    cfg: ModelConfig,
    *,
    prefix: str,
    ignore: Sequence[str] = (),
    source: str = "checkpoint",
) -> dict[str, Array]:
    """Maps HF tensors to flat jaxslim paths, checking names and shapes against ``expected``."""
    compiled = [(r, r.regex()) for r in rules]
    ignored = [re.compile(p) for p in ignore]
    out: dict[str, Array] = {}
    unexpected, misshaped = [], []
    seen: set[str] = set()  # targets of mis-shaped tensors are reported as mis-shaped, not missing
    for key in sorted(tensors):
        if any(p.search(key) for p in ignored):
            continue
        for r, rx in compiled:
            name = key if r.head else (key[len(prefix) :] if prefix and key.startswith(prefix) else key)
            m = rx.match(name)
            if m is None:
                continue
            layer = m.groupdict().get("i")
            targets = [t.format(i=layer) for t in r.jax]
            if any(t not in expected for t in targets):
                unexpected.append(f"{key} (layer {layer} does not exist)" if layer is not None else key)
                break
            try:
                values = r.transform.to_jax(np.asarray(tensors[key]), cfg)
            except ValueError:
                values = None
            shapes = [expected[t] for t in targets]
            seen.update(targets)
            if values is None or [tuple(v.shape) for v in values] != shapes:
                misshaped.append(
                    f"{key}: shape {tuple(tensors[key].shape)} does not give {targets} of shapes {shapes}"
                )
                break
            out.update(zip(targets, values, strict=True))
            break
        else:
            unexpected.append(key)
    missing = sorted(set(expected) - set(out) - seen)
    if missing or unexpected or misshaped:
        lines = [f"{source} does not match the jaxslim model ({describe(cfg)}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(
                    f"  {len(items)} {title}: " + "; ".join(items[:20]) + (" ..." if len(items) > 20 else "")
                )
        raise ConversionError("\n".join(lines))
    return out


def flat_to_hf(
    flat: dict[str, Array], rules: Sequence[Rule], cfg: ModelConfig, *, prefix: str
) -> dict[str, Array]:
    """Inverse of :func:`hf_to_flat`: HF-named tensors from flat jaxslim paths."""
    out: dict[str, Array] = {}
    for r in rules:
        layers = range(cfg.n_layers) if r.per_layer else [None]
        for i in layers:
            targets = [t.format(i=i) for t in r.jax]
            if not all(t in flat for t in targets):
                continue
            name = r.hf.format(i=i)
            out[name if r.head else prefix + name] = np.ascontiguousarray(
                r.transform.to_hf([np.asarray(flat[t]) for t in targets], cfg)
            )
    return out


def describe(cfg: ModelConfig) -> str:
    return (
        f"arch={cfg.arch}, d_model={cfg.d_model}, n_layers={cfg.n_layers}, n_heads={cfg.n_heads}, "
        f"n_kv_heads={cfg.kv_heads}, d_ff={cfg.d_ff}, vocab_size={cfg.vocab_size}"
    )
