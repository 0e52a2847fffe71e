"""Mask tuning: real-valued scales of the kept heads and neurons by layer-wise least squares.

The binary masks from search and rearrangement say *which* units stay. Tuning replaces each kept
unit's 1 by a scale so that every pruned sub-layer reproduces the teacher's output (Kwon et al.),
layer by layer from the bottom, the student's earlier layers already tuned:

* attention of layer ``l``: unknowns are the kept heads' scales; column ``h`` of ``A`` is head ``h``'s
  contribution to the residual stream (its context times its slice of ``wo``), the target is the
  teacher's ``x + attn(x)`` (the sum before the post-norm, or the residual stream of a pre-norm block)
  minus the student's input and output bias;
* FFN of layer ``l``: unknowns are the kept neurons' scales; with hidden activations ``h_t`` and rows
  of ``wo``, ``AᵀA = (W Wᵀ) ∘ Σ_t h_t h_tᵀ`` and ``Aᵀr = Σ_t h_t ∘ (W r_t)`` — ``A`` itself is never built.

Padding tokens are excluded. The system is solved for ``δ = s − m`` (damped towards the untuned mask,
``min ‖Aδ − r‖² + λ‖δ‖²`` with ``λ`` relative to the mean diagonal of ``AᵀA``) in float64. Safeguards: a
non-finite solution, a scale outside ``[-max_scale, max_scale]`` or a fit that does not reduce the
layer's squared error leaves *that* sub-layer untuned and tuning continues with the next one (the
reference stops tuning every later layer after the first failure); the report lists every skip.

The teacher is the dense model or, as in the reference code, the model masked at a
"teacher-assistant" budget between dense and the target (``√budget``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslim.models.stack import unstack_layers
from jaxslim.models.transformer import Transformer
from jaxslim.nn import expand_to


class TuneReport(NamedTuple):
    """Per sub-layer outcome: ``("attn" | "mlp", layer, "tuned" | reason, error before, error after)``."""

    rows: list[tuple[str, int, str, float, float]]

    def skipped(self) -> list[tuple[str, int, str]]:
        return [(kind, layer, why) for kind, layer, why, *_ in self.rows if why != "tuned"]


def _blocks(model):
    if model.cfg.scan_layers:
        model = unstack_layers(model)
    return model, list(model.stack.blocks)


@nnx.jit
def _embed(model, batch):
    x, mask, rope = model.embed_inputs(
        batch["tokens"],
        attention_mask=batch.get("attention_mask"),
        token_type_ids=batch.get("token_type_ids"),
    )
    return x, mask, rope


def _valid(batch, x):
    m = batch.get("attention_mask")
    return jnp.ones(x.shape[:2], x.dtype) if m is None else m.astype(x.dtype)


@nnx.jit
def _attn_stats(block, xs, xt, mask, rope, w, hs, ht):
    """Normal equations of the attention scales: ``(AᵀA [H, H], Aᵀr [H], ‖r‖²)`` for one batch."""
    pre = block.pre_norm
    cs = block.attn.head_outputs(block.attn_input(xs) if pre else xs, mask=mask, rope=rope)
    t_out = block.attn(block.attn_input(xt) if pre else xt, mask=mask, rope=rope, head_mask=ht)
    bo = 0.0 if block.attn.bo is None else expand_to(block.attn.bo[...], 3)
    current = jnp.einsum("bthd,h->btd", cs, hs)
    r = (xt + t_out) - (xs + bo + current)
    ata = jnp.einsum("bthd,btkd,bt->hk", cs, cs, w)
    atr = jnp.einsum("bthd,btd,bt->h", cs, r, w)
    return ata, atr, jnp.einsum("btd,btd,bt->", r, r, w)


@nnx.jit
def _mlp_stats(block, xs, xt, w, ns, nt):
    pre = block.pre_norm
    hid = block.mlp.hidden(block.mlp_norm(xs) if pre else xs)
    t_out = block.mlp(block.mlp_norm(xt) if pre else xt, neuron_mask=nt)
    wo = block.mlp.wo[...]
    bo = 0.0 if block.mlp.bo is None else expand_to(block.mlp.bo[...], 3)
    r = (xt + t_out) - (xs + bo + (hid * expand_to(ns, 3)) @ wo)
    hh = jnp.einsum("btf,btg,bt->fg", hid, hid, w)
    ata = (wo @ wo.T) * hh
    atr = jnp.einsum("btf,btd,fd,bt->f", hid, r, wo, w)
    return ata, atr, jnp.einsum("btd,btd,bt->", r, r, w)


@nnx.jit
def _attn_step(block, x, mask, rope, hm):
    """The block's state after attention: the input of its FFN part (post-norm applied)."""
    a = block.attn(block.attn_input(x) if block.pre_norm else x, mask=mask, rope=rope, head_mask=hm)
    return x + a if block.pre_norm else block.attn_norm(x + a)


@nnx.jit
def _mlp_step(block, x, nm):
    f = block.mlp(block.mlp_norm(x) if block.pre_norm else x, neuron_mask=nm)
    return x + f if block.pre_norm else block.mlp_norm(x + f)


def _solve(ata, atr, keep, current, damp, max_scale):
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return current, "nothing kept", 0.0
    a = np.asarray(ata, np.float64)[np.ix_(idx, idx)]
    b = np.asarray(atr, np.float64)[idx]
    try:
        lam = damp * float(np.mean(np.diag(a)))
        delta = np.linalg.solve(a + lam * np.eye(idx.size), b)
    except np.linalg.LinAlgError:
        return current, "singular system", 0.0
    new = current.copy()
    new[idx] = current[idx] + delta
    if not np.all(np.isfinite(new)):
        return current, "non-finite solution", 0.0
    if np.max(np.abs(new[idx])) > max_scale:
        return current, f"scale {np.max(np.abs(new[idx])):.3g} outside [-{max_scale}, {max_scale}]", 0.0
    reduction = 2 * b @ delta - delta @ a @ delta  # error(before) - error(after)
    if reduction <= 0:
        return current, "no error reduction", 0.0
    return new, "tuned", float(reduction)


def tune_masks(
    model: Transformer,
    batches: Iterable[Mapping[str, np.ndarray]],
    head_mask: np.ndarray,
    neuron_mask: np.ndarray,
    *,
    teacher_head_mask: np.ndarray | None = None,
    teacher_neuron_mask: np.ndarray | None = None,
    damp: float = 0.05,
    max_scale: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, TuneReport]:
    """Tunes the kept entries of binary ``head_mask [L, H]`` and ``neuron_mask [L, F]``.

    Args:
        model: the dense model (scanned stacks are unstacked internally).
        batches: the sample set (``tokens`` and optional ``attention_mask``, ``token_type_ids``);
            consumed once and held on device layer by layer.
        teacher_head_mask, teacher_neuron_mask: the teacher's masks (None: the dense model).
        damp: Tikhonov damping towards the untuned scales, relative to the mean diagonal of ``AᵀA``
            (scale-free, unlike the reference's absolute ``damp=1``, whose strength depends on how
            many tokens the sample set has).
        max_scale: the safeguard bound on tuned scales.

    Returns:
        Real-valued masks (zero where pruned) and a :class:`TuneReport`.
    """
    cfg = model.cfg
    if cfg.post_norms or not cfg.input_norms or cfg.parallel_residual:
        # the least-squares targets below are the residual stream of a plain pre- or post-norm block
        raise ValueError(
            "mask tuning models a plain pre- or post-norm block; this model normalises sublayer outputs "
            f"or runs them in parallel (post_norms={cfg.post_norms}, input_norms={cfg.input_norms}, "
            f"parallel_residual={cfg.parallel_residual}: Gemma 2 / 3, OLMo 2, GPT-NeoX): skip tuning "
            "(jaxslim-prune --no-tune)"
        )
    model, blocks = _blocks(model)
    hs = np.asarray(head_mask, np.float64).copy()
    ns = np.asarray(neuron_mask, np.float64).copy()
    keep_h, keep_n = hs != 0, ns != 0
    ht = np.ones_like(hs) if teacher_head_mask is None else np.asarray(teacher_head_mask, np.float64)
    nt = np.ones_like(ns) if teacher_neuron_mask is None else np.asarray(teacher_neuron_mask, np.float64)
    data = []
    for batch in batches:
        inputs = {
            k: jnp.asarray(v) for k, v in batch.items() if k in ("tokens", "attention_mask", "token_type_ids")
        }
        x, mask, rope = _embed(model, inputs)
        data.append([x, x, mask, rope, _valid(inputs, x)])
    if not data:
        raise ValueError("tune_masks got no batches: pass at least one example")
    rows = []
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    for layer, block in enumerate(blocks):
        stats = [
            _attn_stats(block, xs, xt, m, r, w, f32(hs[layer]), f32(ht[layer])) for xs, xt, m, r, w in data
        ]
        ata, atr, err = (sum(np.asarray(s[i], np.float64) for s in stats) for i in range(3))
        hs[layer], why, red = _solve(ata, atr, keep_h[layer], hs[layer], damp, max_scale)
        rows.append(("attn", layer, why, float(err), float(err) - red))
        for d in data:
            d[0] = _attn_step(block, d[0], d[2], d[3], f32(hs[layer]))
            d[1] = _attn_step(block, d[1], d[2], d[3], f32(ht[layer]))
        stats = [_mlp_stats(block, xs, xt, w, f32(ns[layer]), f32(nt[layer])) for xs, xt, _, _, w in data]
        ata, atr, err = (sum(np.asarray(s[i], np.float64) for s in stats) for i in range(3))
        ns[layer], why, red = _solve(ata, atr, keep_n[layer], ns[layer], damp, max_scale)
        rows.append(("mlp", layer, why, float(err), float(err) - red))
        for d in data:
            d[0] = _mlp_step(block, d[0], f32(ns[layer]))
            d[1] = _mlp_step(block, d[1], f32(nt[layer]))
        if progress is not None:
            progress(f"layer {layer}")
    return hs.astype(np.float32), ns.astype(np.float32), TuneReport(rows)
