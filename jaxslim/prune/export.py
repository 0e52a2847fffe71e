"""Hugging Face export of a pruned model: slim where the format can express it, else masked dense.

A transformers 5 config has one ``num_attention_heads`` and one ``intermediate_size`` for every
layer and no pruned-heads support; BERT and GPT-2 also derive the head size from
``hidden_size / num_attention_heads``. So :func:`export_hf` writes

* ``"slim"``: the physically smaller model, when every layer keeps the same number of heads and
  FFN neurons and the architecture can say so: FFN-only pruning for any family, and head pruning
  for Llama (whose config has an explicit ``head_dim``). Tuned mask scales are folded into the
  output projections, so the HF model computes the masked function;
* ``"masked-dense"``: otherwise (heterogeneous widths, or fewer heads in BERT / GPT-2), the dense
  model's shapes with the masks folded in: each removed head's slice of the attention output
  projection and its query/key/value columns are zero, each removed neuron's input column, bias
  and output row are zero, and kept units carry their tuned scale in the output projection. It
  computes the masked model's function exactly but is not smaller or faster; the slim model itself
  is saved with :func:`jaxslim.convert.save_jaxslim`.

Either way ``jaxslim_export.json`` beside the weights records which of the two it is and why, the
per-layer kept heads and FFN widths, and the FLOPs fraction.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from flax import nnx

from jaxslim.convert import save_hf
from jaxslim.models import Transformer
from jaxslim.models.stack import unstack_layers
from jaxslim.prune.slim import _check, slim

EXPORT_INFO = "jaxslim_export.json"


def fold_masks(model: Transformer, head_mask, neuron_mask) -> Transformer:
    """A dense-shaped model equal to ``model(..., head_mask=, neuron_mask=)``: removed units'
    weights zeroed, kept units' scales folded into the output projections (unscanned result)."""
    cfg = model.cfg
    if not cfg.uniform:
        raise ValueError("fold_masks needs the dense (uniform-width) model the masks were computed for")
    hm = _check("head_mask", head_mask, (cfg.n_layers, cfg.n_heads)).astype(np.float64)
    nm = _check("neuron_mask", neuron_mask, (cfg.n_layers, cfg.d_ff)).astype(np.float64)
    g = cfg.n_heads // cfg.kv_heads
    src = model if not cfg.scan_layers else unstack_layers(model)
    graphdef, state = nnx.split(src)
    pure = nnx.to_pure_dict(state)
    for i in range(cfg.n_layers):
        attn, mlp = pure["stack"]["blocks"][i]["attn"], pure["stack"]["blocks"][i]["mlp"]
        dt = np.asarray(attn["wo"]).dtype
        attn["wo"] = np.asarray(attn["wo"]) * hm[i].astype(dt)[:, None, None]
        dead = hm[i] == 0
        attn["wq"] = np.where(dead[None, :, None], 0, np.asarray(attn["wq"])).astype(dt)
        if "bq" in attn:
            attn["bq"] = np.where(dead[:, None], 0, np.asarray(attn["bq"])).astype(dt)
        dead_kv = np.all(dead.reshape(cfg.kv_heads, g), -1)
        for name in ("wk", "wv"):
            attn[name] = np.where(dead_kv[None, :, None], 0, np.asarray(attn[name])).astype(dt)
        for name in ("bk", "bv"):
            if name in attn:
                attn[name] = np.where(dead_kv[:, None], 0, np.asarray(attn[name])).astype(dt)
        mlp["wo"] = np.asarray(mlp["wo"]) * nm[i].astype(dt)[:, None]
        off = nm[i] == 0
        for name in ("wi", "wu"):
            if name in mlp:
                mlp[name] = np.where(off[None, :], 0, np.asarray(mlp[name])).astype(dt)
        for name in ("bi", "bu"):
            if name in mlp:
                mlp[name] = np.where(off, 0, np.asarray(mlp[name])).astype(dt)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _uniform_slim(model: Transformer, head_mask, neuron_mask) -> tuple[Transformer | None, str]:
    """The slim model with uniform widths as a plain (``layer_*``-free) config, or why not."""
    cfg = model.cfg
    heads = {int(np.count_nonzero(r)) for r in np.asarray(head_mask)}
    ffn = {int(np.count_nonzero(r)) for r in np.asarray(neuron_mask)}
    if len(heads) > 1 or len(ffn) > 1:
        return None, (
            f"layers keep different numbers of heads ({sorted(heads)}) or FFN neurons ({sorted(ffn)}); "
            "a Hugging Face config has one width for all layers"
        )
    (h,), (f,) = heads, ffn
    if h == 0 or f == 0:
        return None, "a layer keeps no heads or no FFN neurons, which a Hugging Face config cannot express"
    if h != cfg.n_heads and cfg.arch != "llama":
        return None, (
            f"{cfg.arch} derives the head size from hidden_size / num_attention_heads, so it cannot "
            f"express {h} heads of size {cfg.head_dim_} in a width of {cfg.d_model}"
        )
    small = slim(model, head_mask, neuron_mask)
    kv = h // (cfg.n_heads // cfg.kv_heads)
    plain = small.cfg.replace(
        layer_heads=None,
        layer_ffn=None,
        n_heads=h,
        n_kv_heads=kv if cfg.n_kv_heads else None,
        d_ff=f,
        head_dim=cfg.head_dim_,
    )
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(plain, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, nnx.to_pure_dict(nnx.state(small)))
    return nnx.merge(graphdef, state), "every layer keeps the same widths"


def export_hf(
    model: Transformer,
    head_mask,
    neuron_mask,
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Writes the pruned ``model`` as a Hugging Face checkpoint in ``path`` (see the module docs).

    Args:
        model: the dense model the masks belong to.
        head_mask, neuron_mask: ``[layers, heads]`` and ``[layers, d_ff]`` (zero = removed; other
            values scale the unit, as mask tuning leaves them).
        path: output directory; ``config.json``, the safetensors weights and ``jaxslim_export.json``.
        dtype, overwrite: as :func:`jaxslim.convert.save_hf`.

    Returns:
        What ``jaxslim_export.json`` holds: ``format`` (``"slim"`` or ``"masked-dense"``),
        ``reason``, ``layer_heads``, ``layer_ffn``, ``hf_num_attention_heads``,
        ``hf_intermediate_size``.
    """

    cfg = model.cfg
    hm = _check("head_mask", head_mask, (cfg.n_layers, cfg.n_heads))
    nm = _check("neuron_mask", neuron_mask, (cfg.n_layers, cfg.d_ff))
    out, reason = _uniform_slim(model, hm, nm)
    fmt = "slim"
    if out is None:
        out, fmt = fold_masks(model, hm, nm), "masked-dense"
    d = save_hf(out, path, dtype=dtype, overwrite=overwrite)
    info = {
        "format": fmt,
        "reason": reason,
        "layer_heads": [int(np.count_nonzero(r)) for r in hm],
        "layer_ffn": [int(np.count_nonzero(r)) for r in nm],
        "hf_num_attention_heads": out.cfg.n_heads,
        "hf_intermediate_size": out.cfg.d_ff,
        "contains": (
            "the physically smaller model; tuned mask scales folded into the output projections"
            if fmt == "slim"
            else "the dense shapes with removed heads/neurons zeroed and tuned scales folded in; "
            "same function as the masked model, not smaller or faster (use the jaxslim slim checkpoint)"
        ),
    }
    (pathlib.Path(d) / EXPORT_INFO).write_text(json.dumps(info, indent=1) + "\n")
    return info
