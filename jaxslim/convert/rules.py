"""The key-map machinery shared by every architecture: transforms, rules and error collection.

A :class:`Rule` ties one Hugging Face tensor name (``{i}`` stands for the layer index) to one or
more jaxslim parameter paths in the unscanned layout (``stack.blocks.{i}.attn.wq``) and a
:class:`Transform` that maps the array both ways. Loading matches every checkpoint key against the
rules as a regex (:func:`hf_to_flat`); saving runs the inverse transforms (:func:`flat_to_hf`).
Problems are never raised one at a time: every missing, unexpected, mis-shaped or wrongly tied
tensor is collected and reported in one :class:`ConversionError`.

Example:
    >>> r = rule("encoder.layer.{i}.output.dense.weight", "stack.blocks.{i}.mlp.wo", transform=LINEAR)
    >>> r.regex().match("encoder.layer.3.output.dense.weight")["i"]
    '3'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxslim.config import ModelConfig

Array = np.ndarray


class ConversionError(ValueError):
    """A checkpoint and a model (or config) disagree; the message lists every problem found."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """A pair of array maps between one HF tensor and one or more jaxslim parameters.

    Attributes:
        name: what the transform does, for error messages.
        to_jax: ``(hf_array, cfg) -> [jaxslim arrays]``; raises ``ValueError`` when the shape
            cannot be mapped.
        to_hf: ``([jaxslim arrays], cfg) -> hf_array``, the inverse.
    """

    name: str
    to_jax: Callable[[Array, ModelConfig], list[Array]]
    to_hf: Callable[[list[Array], ModelConfig], Array]


def _t(a: Array) -> Array:
    return np.ascontiguousarray(a.T)


def _linear_to_heads(a: Array, cfg: ModelConfig) -> list[Array]:
    # nn.Linear [heads * head_dim, d] -> kernel [d, heads, head_dim]
    return [_t(a).reshape(a.shape[1], -1, cfg.head_dim_)]


def _linear_from_heads(a: Array, cfg: ModelConfig) -> list[Array]:
    # nn.Linear [d, heads * head_dim] -> kernel [heads, head_dim, d]
    return [_t(a).reshape(-1, cfg.head_dim_, a.shape[0])]


def _split_qkv(a: Array, cfg: ModelConfig) -> list[Array]:
    # GPT-2 Conv1D c_attn [d, 3 * d] (already [in, out]) holds q, k and v side by side
    return [p.reshape(a.shape[0], -1, cfg.head_dim_) for p in np.split(a, 3, axis=1)]


def _split_qkv_bias(a: Array, cfg: ModelConfig) -> list[Array]:
    return [p.reshape(-1, cfg.head_dim_) for p in np.split(a, 3)]


ToJax = Callable[[Array, ModelConfig], list[Array]]


def _check_rank(fn: ToJax, ndim: int) -> ToJax:
    # numpy would happily transpose or reshape a tensor of the wrong rank into nonsense
    def wrapped(a: Array, cfg: ModelConfig) -> list[Array]:
        if a.ndim != ndim:
            raise ValueError(f"expected a rank-{ndim} tensor, got rank {a.ndim}")
        return fn(a, cfg)

    return wrapped


COPY = Transform("copy", lambda a, c: [a], lambda xs, c: xs[0])
LINEAR = Transform("transpose", _check_rank(lambda a, c: [_t(a)], 2), lambda xs, c: _t(xs[0]))
LINEAR_TO_HEADS = Transform(
    "transpose, split into heads",
    _check_rank(_linear_to_heads, 2),
    lambda xs, c: _t(xs[0].reshape(xs[0].shape[0], -1)),
)
LINEAR_FROM_HEADS = Transform(
    "transpose, split into heads",
    _check_rank(_linear_from_heads, 2),
    lambda xs, c: _t(xs[0].reshape(-1, xs[0].shape[-1])),
)
HEADS_BIAS = Transform(
    "split into heads",
    _check_rank(lambda a, c: [a.reshape(-1, c.head_dim_)], 1),
    lambda xs, c: xs[0].reshape(-1),
)
CONV_QKV = Transform(
    "split q, k, v into heads",
    _check_rank(_split_qkv, 2),
    lambda xs, c: np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=1),
)
CONV_QKV_BIAS = Transform(
    "split q, k, v into heads",
    _check_rank(_split_qkv_bias, 1),
    lambda xs, c: np.concatenate([x.reshape(-1) for x in xs]),
)
CONV_FROM_HEADS = Transform(
    "split into heads",
    _check_rank(lambda a, c: [a.reshape(-1, c.head_dim_, a.shape[1])], 2),
    lambda xs, c: xs[0].reshape(-1, xs[0].shape[-1]),
)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor name and the jaxslim parameters it becomes.

    Attributes:
        hf: the HF name relative to the backbone prefix; ``{i}`` stands for the layer index.
        jax: target paths in the unscanned layout.
        transform: array map between the two.
        head: the name lives outside the backbone prefix (output heads such as ``lm_head.weight``).
        tied: the tensor duplicates a parameter that another rule loads (a tied output head): on
            load it must equal that parameter when present; on save it is not written, because
            ``from_pretrained`` ties it again.
    """

    hf: str
    jax: tuple[str, ...]
    transform: Transform = COPY
    head: bool = False
    tied: bool = False

    @property
    def per_layer(self) -> bool:
        """Whether the rule has one tensor per layer."""
        return "{i}" in self.hf

    def regex(self) -> re.Pattern:
        """The pattern matching this rule's HF names (group ``i`` captures the layer)."""
        return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def hf_name(self, layer: int | None, prefix: str) -> str:
        """The full HF name of this rule's tensor in ``layer`` of a checkpoint using ``prefix``."""
        name = self.hf.format(i=layer)
        return name if self.head else prefix + name

    def targets(self, layer: int | str | None) -> list[str]:
        """The jaxslim paths of this rule in ``layer``."""
        return [t.format(i=layer) for t in self.jax]


def rule(hf: str, *jax: str, transform: Transform = COPY, head: bool = False, tied: bool = False) -> Rule:
    """Shorthand for :class:`Rule`: ``rule("wte.weight", "embed.tokens")``."""
    return Rule(hf, tuple(jax), transform, head, tied)


def describe(cfg: ModelConfig) -> str:
    """The sizes of ``cfg`` that a checkpoint's shapes must agree with."""
    return (
        f"arch={cfg.arch}, d_model={cfg.d_model}, n_layers={cfg.n_layers}, n_heads={cfg.n_heads}, "
        f"n_kv_heads={cfg.kv_heads}, head_dim={cfg.head_dim_}, d_ff={cfg.d_ff}, vocab_size={cfg.vocab_size}"
    )


def raise_problems(header: str, problems: Mapping[str, Sequence[str]], hints: Sequence[str] = ()) -> None:
    """Raises one :class:`ConversionError` listing every problem, grouped by kind, if there are any."""
    if not any(problems.values()):
        return
    lines = [header]
    for kind, items in problems.items():
        if items:
            lines.append(f"  {len(items)} {kind}:")
            lines.extend(f"    {item}" for item in items)
    lines.extend(f"  hint: {h}" for h in hints)
    raise ConversionError("\n".join(lines))


def _hf_names(
    rules: Sequence[Rule], cfg: ModelConfig, prefix: str
) -> dict[str, str]:  # jaxslim path -> HF name it is read from
    out: dict[str, str] = {}
    for r in rules:
        if r.tied:
            continue
        for i in range(cfg.n_layers) if r.per_layer else [None]:
            for t in r.targets(i):
                out.setdefault(t, r.hf_name(i, prefix))
    return out


def _absent_target_reason(target: str, layer: str | None, cfg: ModelConfig) -> str:
    if layer is not None and int(layer) >= cfg.n_layers:
        return f"layer {layer} does not exist: the config has n_layers={cfg.n_layers}"
    return f"the config has no parameter {target} (e.g. biases or this head are switched off)"


def hf_to_flat(
    tensors: Mapping[str, Array],
    rules: Sequence[Rule],
    expected: Mapping[str, tuple[int, ...]],
    cfg: ModelConfig,
    *,
    prefix: str,
    ignore: Sequence[str] = (),
    source: str = "checkpoint",
) -> dict[str, Array]:
    """Maps HF tensors to flat jaxslim paths, checking names and shapes against ``expected``.

    Args:
        tensors: the checkpoint, HF name -> array.
        rules: the architecture's key map for ``cfg``.
        expected: every jaxslim path (unscanned layout) of the model and its shape.
        cfg: the model config (head sizes for the transforms; sizes for the messages).
        prefix: backbone prefix (``"bert."``); names without it are accepted too, as in bare
            backbone checkpoints such as all-MiniLM's.
        ignore: regexes of HF names that hold no weights (buffers such as ``position_ids``).
        source: how to name the checkpoint in messages.

    Returns:
        jaxslim path -> array, one entry for every path in ``expected``.

    Raises:
        ConversionError: listing every missing, unexpected, mis-shaped and wrongly tied tensor.
    """
    compiled = [(r, r.regex()) for r in rules]
    ignored = [re.compile(p) for p in ignore]
    uses_prefix = any(k.startswith(prefix) for k in tensors) if prefix else False
    out: dict[str, Array] = {}
    source_of: dict[str, str] = {}  # jaxslim path -> HF key that provided it (found, even if mis-shaped)
    tied: list[tuple[str, Rule, list[str]]] = []
    unexpected: list[str] = []
    misshaped: list[str] = []
    for key in sorted(tensors):
        if any(p.search(key) for p in ignored):
            continue
        for r, rx in compiled:
            name = key if r.head or not key.startswith(prefix) else key[len(prefix) :]
            m = rx.match(name)
            if m is not None:
                break
        else:
            unexpected.append(key)
            continue
        layer = m.groupdict().get("i")
        targets = r.targets(layer)
        absent = [t for t in targets if t not in expected]
        if absent:
            unexpected.append(f"{key} ({_absent_target_reason(absent[0], layer, cfg)})")
            continue
        if r.tied:
            tied.append((key, r, targets))
            continue
        dup = [source_of[t] for t in targets if t in source_of]
        if dup:
            unexpected.append(f"{key} (duplicates {dup[0]}, which already gives {targets[0]})")
            continue
        source_of.update(dict.fromkeys(targets, key))
        shapes = [tuple(expected[t]) for t in targets]
        array = np.asarray(tensors[key])
        try:
            values = r.transform.to_jax(array, cfg)
        except ValueError:
            values = None
        if values is None or [tuple(v.shape) for v in values] != shapes:
            want = " + ".join(f"{t} {s}" for t, s in zip(targets, shapes, strict=True))
            how = "" if r.transform is COPY else f" ({r.transform.name})"
            misshaped.append(f"{key}: shape {tuple(array.shape)} cannot give {want}{how}")
            continue
        out.update(zip(targets, values, strict=True))
    wrongly_tied = []
    for key, r, targets in tied:
        loaded = [out.get(t) for t in targets]
        if any(v is None for v in loaded):
            continue  # the tensor it is tied to is already reported as missing or mis-shaped
        try:
            values = r.transform.to_jax(np.asarray(tensors[key]), cfg)
        except ValueError:
            values = None
        same = values is not None and all(
            v.shape == w.shape and np.array_equal(v, w) for v, w in zip(values, loaded, strict=True)
        )
        if not same:
            wrongly_tied.append(
                f"{key} differs from {source_of[targets[0]]}, to which the config ties it "
                "(a tied model keeps one copy of both)"
            )
    names = _hf_names(rules, cfg, prefix if uses_prefix else "")
    missing = [f"{names.get(p, '?')} (for {p})" for p in sorted(set(expected) - set(source_of))]
    hints = []
    if wrongly_tied:
        hints.append(
            "a checkpoint whose output head is really untied needs tie_word_embeddings=false in "
            "config.json (GPT-2 and Llama support it; BERT's MLM decoder is always tied)"
        )
    if misshaped:
        hints.append(
            "mis-shaped tensors usually mean config.json does not describe these weights "
            "(compare its hidden size, intermediate size, head counts and vocabulary size with the shapes)"
        )
    raise_problems(
        f"{source} does not match the jaxslim model its config describes ({describe(cfg)}):",
        {
            "missing": missing,
            "unexpected": unexpected,
            "mis-shaped": misshaped,
            "not tied as the config says": wrongly_tied,
        },
        hints,
    )
    return out


def flat_to_hf(
    flat: Mapping[str, Array], rules: Sequence[Rule], cfg: ModelConfig, *, prefix: str
) -> dict[str, Array]:
    """Inverse of :func:`hf_to_flat`: HF-named tensors from flat jaxslim paths (unscanned layout).

    Raises:
        ConversionError: a parameter of the model has no HF name (nothing is dropped silently).
    """
    out: dict[str, Array] = {}
    used: set[str] = set()
    for r in rules:
        if r.tied:
            continue
        for i in range(cfg.n_layers) if r.per_layer else [None]:
            targets = r.targets(i)
            if not all(t in flat for t in targets):
                continue
            used.update(targets)
            arrays = [np.asarray(flat[t]) for t in targets]
            out[r.hf_name(i, prefix)] = np.ascontiguousarray(r.transform.to_hf(arrays, cfg))
    raise_problems(
        f"cannot export this model as Hugging Face {cfg.arch} ({describe(cfg)}):",
        {"parameters without a Hugging Face name": sorted(set(flat) - used)},
    )
    return out
