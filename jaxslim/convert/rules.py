"""The key-map machinery shared by every architecture: transforms, rules and error collection.

A :class:`Rule` ties one Hugging Face tensor name (``{i}`` stands for the layer index) to one or
more jaxslim parameter paths in the unscanned layout (``stack.blocks.{i}.attn.wq``) and a
:class:`Transform` that maps the array both ways. A name with ``{e}`` is one tensor per expert:
the transformed tensors of experts ``0 .. E-1`` are stacked on the targets' leading ``exp`` axis.
A ``load_only`` rule is another layout of the same parameters that loading accepts and saving
never writes. Loading matches every checkpoint key against the rules as a regex
(:func:`hf_to_flat`); saving runs the inverse transforms (:func:`flat_to_hf`).
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
from collections.abc import Callable, Collection, Mapping, Sequence

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


def _split_fused_qkv(a: Array, cfg: ModelConfig) -> list[Array]:
    # one nn.Linear [(heads + 2 kv_heads) * head_dim, d]: q rows, then k rows, then v rows
    q = cfg.n_heads * cfg.head_dim_
    k = cfg.kv_heads * cfg.head_dim_
    if a.shape[0] != q + 2 * k:
        raise ValueError(f"expected {q + 2 * k} rows, got {a.shape[0]}")
    return [_t(p).reshape(a.shape[1], -1, cfg.head_dim_) for p in np.split(a, [q, q + k], axis=0)]


# Phi-3's qkv_proj: q, k and v projections stacked as rows of one nn.Linear
LINEAR_QKV = Transform(
    "split rows into q, k, v; transpose; split into heads",
    _check_rank(_split_fused_qkv, 2),
    lambda xs, c: np.concatenate([_t(x.reshape(x.shape[0], -1)) for x in xs], axis=0),
)


def _split_interleaved_qkv(a: Array, cfg: ModelConfig) -> list[Array]:
    # GPT-NeoX's query_key_value: rows grouped per head, each [q, k, v] of head_dim rows
    hd = cfg.head_dim_
    if a.ndim == 2:
        per_head: Array = a.reshape(-1, 3, hd, a.shape[1])  # [heads, 3, hd, d]
        return [np.ascontiguousarray(per_head[:, j].transpose(2, 0, 1)) for j in range(3)]
    per_head = a.reshape(-1, 3, hd)
    return [np.ascontiguousarray(per_head[:, j]) for j in range(3)]


def _fuse_interleaved_qkv(xs: list[Array], cfg: ModelConfig) -> Array:
    if xs[0].ndim == 3:  # kernels [d, heads, hd] -> rows [heads, 3, hd, d]
        stacked = np.stack([x.transpose(1, 2, 0) for x in xs], axis=1)
        return stacked.reshape(-1, stacked.shape[-1])
    return np.stack(xs, axis=1).reshape(-1)


def _interleaved_rank(a: Array, cfg: ModelConfig) -> list[Array]:
    if a.ndim not in (1, 2) or a.shape[0] % (3 * cfg.head_dim_):
        raise ValueError(f"expected rows grouped as heads x 3 x {cfg.head_dim_}, got shape {a.shape}")
    return _split_interleaved_qkv(a, cfg)


# GPT-NeoX's query_key_value weight and bias: q, k and v interleaved per head
INTERLEAVED_QKV = Transform("split per-head q, k, v; transpose", _interleaved_rank, _fuse_interleaved_qkv)
# Phi-3's gate_up_proj: gate rows, then up rows, of one nn.Linear [2 d_ff, d]
LINEAR_GATE_UP = Transform(
    "split rows into gate and up; transpose",
    _check_rank(lambda a, c: [_t(p) for p in np.split(a, 2, axis=0)], 2),
    lambda xs, c: np.concatenate([_t(x) for x in xs], axis=0),
)

# ModernBERT's Wi bias: the input (activated) half, then the gate half
GATE_UP_BIAS = Transform(
    "split into gate and up",
    _check_rank(lambda a, c: list(np.split(a, 2)), 1),
    lambda xs, c: np.concatenate(xs),
)


def _swap_last(a: Array) -> Array:
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def _split_gate_up(a: Array, cfg: ModelConfig) -> list[Array]:
    # fused experts [E, 2f, d] (gate rows, then up rows) -> kernels [E, d, f] each
    return np.split(_swap_last(a), 2, axis=-1)


# Stacked experts stored as one tensor of nn.Linear weights [E, out, in] (transformers 5's fused
# MoE layout), against jaxslim's [E, in, out] kernels.
STACKED_LINEAR = Transform(
    "transpose each expert", _check_rank(lambda a, c: [_swap_last(a)], 3), lambda xs, c: _swap_last(xs[0])
)
STACKED_GATE_UP = Transform(
    "transpose each expert, split into gate and up",
    _check_rank(_split_gate_up, 3),
    lambda xs, c: _swap_last(np.concatenate(xs, axis=-1)),
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
        hf: the HF name relative to the backbone prefix; ``{i}`` stands for the layer index and
            ``{e}`` for an expert index: such a rule has one tensor per expert, each mapped by
            ``transform`` and stacked on the leading (``exp``) axis of the targets, and a missing
            expert is reported by name.
        jax: target paths in the unscanned layout.
        transform: array map between the two (for ``{e}`` rules, between one expert's arrays).
        head: the name lives outside the backbone prefix (output heads such as ``lm_head.weight``).
        tied: the tensor duplicates a parameter that another rule loads (a tied output head): on
            load it must equal that parameter when present; on save it is not written, because
            ``from_pretrained`` ties it again.
        load_only: another layout of parameters that a preceding rule also maps (e.g. fused
            experts against per-expert tensors): accepted on load, never written on save.
    """

    hf: str
    jax: tuple[str, ...]
    transform: Transform = COPY
    head: bool = False
    tied: bool = False
    load_only: bool = False

    def __post_init__(self):
        if self.tied and self.per_expert:
            raise ValueError(f"rule {self.hf!r}: a tied rule cannot have one tensor per expert ({{e}})")

    @property
    def per_layer(self) -> bool:
        """Whether the rule has one tensor per layer."""
        return "{i}" in self.hf

    @property
    def per_expert(self) -> bool:
        """Whether the rule has one tensor per expert, stacked on the targets' leading axis."""
        return "{e}" in self.hf

    def regex(self) -> re.Pattern:
        """The pattern matching this rule's HF names (groups ``i`` and ``e`` capture the layer and
        the expert)."""
        pattern = re.escape(self.hf).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)")
        return re.compile("^" + pattern + "$")

    def hf_name(self, layer: int | None, prefix: str, expert: int | str | None = None) -> str:
        """The full HF name of this rule's tensor in ``layer`` (and ``expert``) of a checkpoint
        using ``prefix``."""
        name = self.hf.format(i=layer, e=expert)
        return name if self.head else prefix + name

    def targets(self, layer: int | str | None) -> list[str]:
        """The jaxslim paths of this rule in ``layer``."""
        return [t.format(i=layer) for t in self.jax]


def rule(
    hf: str,
    *jax: str,
    transform: Transform = COPY,
    head: bool = False,
    tied: bool = False,
    load_only: bool = False,
) -> Rule:
    """Shorthand for :class:`Rule`: ``rule("wte.weight", "embed.tokens")``.

    Example:
        >>> r = rule("layers.{i}.experts.{e}.w2.weight", "stack.blocks.{i}.moe.wo", transform=LINEAR)
        >>> r.regex().match("layers.1.experts.7.w2.weight").groupdict()
        {'i': '1', 'e': '7'}
    """
    return Rule(hf, tuple(jax), transform, head, tied, load_only)


def num_labels(hf: dict) -> int:
    """The classes of a ``*ForSequenceClassification`` config: its ``id2label`` (what
    ``save_pretrained`` writes), else ``num_labels``, else transformers' default 2."""
    labels = hf.get("id2label")
    return len(labels) if labels else int(hf.get("num_labels") or 2)


def token_ids(hf: dict) -> dict:
    """The ``pad_token_id``, ``bos_token_id`` and ``eos_token_id`` :class:`ModelConfig` fields of a
    config (a list of end tokens becomes a tuple)."""
    eos = hf.get("eos_token_id")
    return dict(
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
    )


def token_fields(cfg: ModelConfig) -> dict:
    """The special-token config fields of ``cfg`` (the inverse of :func:`token_ids`)."""
    eos = cfg.eos_token_id
    return dict(
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=list(eos) if isinstance(eos, tuple) else eos,
    )


def encoder_flags(cfg: ModelConfig, family: str) -> list[str]:
    """The ModernBERT-style flags ``cfg`` sets away from its architecture's recipe, which ``family``
    (any other family) cannot express: one problem per flag, named."""
    flags = {
        "norm_placement": cfg.norm_placement is not None and cfg.pre_norm != (cfg.arch != "bert"),
        "gated_ffn": cfg.gated_ffn is not None and cfg.gated_mlp != (cfg.arch == "llama"),
        "norm_bias": not cfg.norm_bias and not cfg.rms_norm,
        "first_attn_norm": not cfg.first_attn_norm,
        "head_dense_bias": not cfg.head_dense_bias,
        "vocab_bias": not cfg.vocab_bias,
        "pooler_norm": cfg.pooler_norm,
        "pooling": cfg.pooling != "first",
    }
    return [
        f"{name}={getattr(cfg, name)!r} ({family} has no such option; ModernBERT has)"
        for name, used in flags.items()
        if used
    ]


def describe(cfg: ModelConfig) -> str:
    """The sizes of ``cfg`` that a checkpoint's shapes must agree with."""
    experts = "" if cfg.moe is None else f", experts={cfg.moe.num_experts}, expert d_ff={cfg.expert_ffn}"
    return (
        f"arch={cfg.arch}, d_model={cfg.d_model}, n_layers={cfg.n_layers}, n_heads={cfg.n_heads}, "
        f"n_kv_heads={cfg.kv_heads}, head_dim={cfg.head_dim_}, d_ff={cfg.d_ff}, vocab_size={cfg.vocab_size}"
        f"{experts}"
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
    rules: Sequence[Rule], cfg: ModelConfig, prefix: str, used: Collection[Rule] = ()
) -> dict[str, str]:  # jaxslim path -> HF name it is read from
    # the layout the checkpoint uses (rules that matched some key) names what it lacks; load-only
    # layouts it does not use are not mentioned
    out: dict[str, str] = {}
    for r in sorted(rules, key=lambda r: r not in used):
        if r.tied or (r.load_only and r not in used):
            continue
        for i in range(cfg.n_layers) if r.per_layer else [None]:
            for t in r.targets(i):
                out.setdefault(t, r.hf_name(i, prefix, "*"))
    return out


def _absent_target_reason(target: str, layer: str | None, cfg: ModelConfig) -> str:
    if layer is not None and int(layer) >= cfg.n_layers:
        return f"layer {layer} does not exist: the config has n_layers={cfg.n_layers}"
    return f"the config has no parameter {target} (e.g. biases or this head are switched off)"


@dataclasses.dataclass
class _Experts:
    """The per-expert tensors of one ``{e}`` rule in one layer, gathered before stacking."""

    rule: Rule
    targets: list[str]
    parts: tuple[str, str]  # the key before and after the expert index
    keys: dict[int, str] = dataclasses.field(default_factory=dict)

    def name(self, expert: int | str) -> str:
        return f"{self.parts[0]}{expert}{self.parts[1]}"


def _shape_problem(key: str, array: Array, targets: Sequence[str], shapes: Sequence, r: Rule) -> str:
    want = " + ".join(f"{t} {s}" for t, s in zip(targets, shapes, strict=True))
    how = "" if r.transform is COPY else f" ({r.transform.name})"
    return f"{key}: shape {tuple(array.shape)} cannot give {want}{how}"


def _transformed(r: Rule, array: Array, cfg: ModelConfig, shapes: Sequence[tuple]) -> list[Array] | None:
    # None when the transform rejects the array or its results have the wrong shapes
    try:
        values = r.transform.to_jax(array, cfg)
    except ValueError:
        return None
    return values if [tuple(v.shape) for v in values] == [tuple(s) for s in shapes] else None


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
        ConversionError: listing every missing, unexpected, mis-shaped and wrongly tied tensor
            (for per-expert rules, every missing or mis-shaped expert).
    """
    compiled = [(r, r.regex()) for r in rules]
    ignored = [re.compile(p) for p in ignore]
    uses_prefix = any(k.startswith(prefix) for k in tensors) if prefix else False
    out: dict[str, Array] = {}
    # jaxslim path -> HF key that provided it (found, even if mis-shaped); for a per-expert rule
    # the key with ``*`` for the expert
    source_of: dict[str, str] = {}
    tied: list[tuple[str, Rule, list[str]]] = []
    experts: dict[tuple[Rule, str | None], _Experts] = {}
    used: set[Rule] = set()
    unexpected: list[str] = []
    misshaped: list[str] = []
    missing_experts: list[str] = []
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
        used.add(r)
        if r.tied:
            tied.append((key, r, targets))
            continue
        group = None
        provides = key
        if r.per_expert:
            cut = len(key) - len(name)  # the prefix that was stripped
            start, end = m.span("e")
            group = experts.get((r, layer)) or _Experts(r, targets, (key[: cut + start], key[cut + end :]))
            provides = group.name("*")
            e, n = int(m["e"]), expected[targets[0]][0]
            if e >= n or e in group.keys:
                why = f"the config has {n} experts" if e >= n else f"duplicates {group.keys[e]}"
                unexpected.append(f"{key} (expert {m['e']}: {why})")
                continue
        dup = [source_of[t] for t in targets if source_of.get(t, provides) != provides]
        if dup:
            unexpected.append(f"{key} (duplicates {dup[0]}, which already gives {targets[0]})")
            continue
        source_of.update(dict.fromkeys(targets, provides))
        if group is not None:
            experts[(r, layer)] = group
            group.keys[e] = key
            continue
        shapes = [tuple(expected[t]) for t in targets]
        array = np.asarray(tensors[key])
        values = _transformed(r, array, cfg, shapes)
        if values is None:
            misshaped.append(_shape_problem(key, array, targets, shapes, r))
            continue
        out.update(zip(targets, values, strict=True))
    for group in experts.values():
        n = expected[group.targets[0]][0]
        absent_experts = [e for e in range(n) if e not in group.keys]
        if absent_experts:
            missing_experts.extend(
                f"{group.name(e)} (expert {e} of {', '.join(group.targets)})" for e in absent_experts
            )
            continue
        shapes = [tuple(expected[t])[1:] for t in group.targets]
        stacked: list[list[Array]] = []
        bad: list[tuple[str, Array]] = []
        for e in range(n):
            array = np.asarray(tensors[group.keys[e]])
            values = _transformed(group.rule, array, cfg, shapes)
            if values is None:
                bad.append((str(e), array))
            else:
                stacked.append(values)
        if len(bad) == n and len({a.shape for _, a in bad}) == 1:
            bad = [("*", bad[0][1])]  # every expert has the same wrong shape: one line, not n
        for which, array in bad:
            where = [f"{t}[{which}]" for t in group.targets]
            misshaped.append(_shape_problem(group.name(which), array, where, shapes, group.rule))
        if not bad:
            out.update({t: np.stack([v[j] for v in stacked]) for j, t in enumerate(group.targets)})
    wrongly_tied = []
    for key, r, targets in tied:
        loaded = [out[t] for t in targets if t in out]
        if len(loaded) < len(targets):
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
    names = _hf_names(rules, cfg, prefix if uses_prefix else "", used)
    missing = [f"{names.get(p, '?')} (for {p})" for p in sorted(set(expected) - set(source_of))]
    missing += missing_experts
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

    Tied and load-only rules are not written; a per-expert rule writes one tensor per entry of its
    targets' leading axis.

    Raises:
        ConversionError: a parameter of the model has no HF name (nothing is dropped silently).
    """
    out: dict[str, Array] = {}
    used: set[str] = set()
    for r in rules:
        if r.tied or r.load_only:
            continue
        for i in range(cfg.n_layers) if r.per_layer else [None]:
            targets = r.targets(i)
            if not all(t in flat for t in targets):
                continue
            used.update(targets)
            arrays = [np.asarray(flat[t]) for t in targets]
            if r.per_expert:
                for e in range(arrays[0].shape[0]):
                    value = r.transform.to_hf([a[e] for a in arrays], cfg)
                    out[r.hf_name(i, prefix, e)] = np.ascontiguousarray(value)
            else:
                out[r.hf_name(i, prefix)] = np.ascontiguousarray(r.transform.to_hf(arrays, cfg))
    raise_problems(
        f"cannot export this model as Hugging Face {cfg.arch} ({describe(cfg)}):",
        {"parameters without a Hugging Face name": sorted(set(flat) - used)},
    )
    return out
