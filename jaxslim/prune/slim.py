"""Physical slimming: a masked model becomes a smaller one that computes the same function.

Pruned heads and neurons are removed from the weights, and real-valued mask scales (from mask tuning)
are folded into what remains: a head's scale multiplies its ``[head_dim, embed]`` slice of the
attention output projection, a neuron's scale its row of the FFN output projection. The result is
an unscanned :class:`~jaxslim.models.Transformer` whose config has per-layer ``layer_heads`` and
``layer_ffn``; it equals the masked model to float rounding and runs faster because its matrices are
smaller. Save it with :func:`jaxslim.convert.save_jaxslim` (read back with ``load_jaxslim``).
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from jaxslim.models import Transformer
from jaxslim.models.stack import unstack_layers


def _check(name: str, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (layers, units) for this model, got {mask.shape}")
    if not np.all(np.isfinite(mask)):
        raise ValueError(f"{name} has non-finite entries")
    return mask


def slim(model: Transformer, head_mask, neuron_mask) -> Transformer:
    """The smaller model equal to ``model(..., head_mask=, neuron_mask=)``.

    Args:
        model: a uniform-width jaxslim model, scanned or not.
        head_mask: ``[layers, heads]``; zero removes a head, other values scale it. With grouped-query
            attention a group's heads must all be kept or all removed (a K/V head is removed with its
            group).
        neuron_mask: ``[layers, d_ff]``; zero removes a neuron, other values scale it.
    """
    cfg = model.cfg
    if not cfg.uniform:
        raise ValueError(
            "model is already slimmed (per-layer widths); slim the dense model with the full masks"
        )
    hm = _check("head_mask", head_mask, (cfg.n_layers, cfg.n_heads)).astype(np.float64)
    nm = _check("neuron_mask", neuron_mask, (cfg.n_layers, cfg.d_ff)).astype(np.float64)
    if cfg.qk_norm and cfg.qk_norm_scope == "layer" and not np.all(hm != 0):
        # the norm's statistic spans every head, so removing one changes the others' queries and keys
        raise ValueError(
            "head_mask removes heads of a model whose q/k norm spans all heads (qk_norm_scope='layer', "
            "OLMo 2): the smaller model would normalise over fewer heads and compute something else; "
            "keep every head (prune FFN neurons only)"
        )
    g = cfg.n_heads // cfg.kv_heads
    groups = (hm != 0).reshape(cfg.n_layers, cfg.kv_heads, g)
    partial = np.any(groups, -1) & ~np.all(groups, -1)
    if partial.any():
        layer, group = np.argwhere(partial)[0]
        raise ValueError(
            f"head_mask keeps part of query group {group} in layer {layer} (groups of {g} heads share a K/V "
            "head): keep or remove whole groups"
        )
    keep_heads = [np.flatnonzero(hm[i]) for i in range(cfg.n_layers)]
    keep_ffn = [np.flatnonzero(nm[i]) for i in range(cfg.n_layers)]
    new_cfg = cfg.replace(
        scan_layers=False,
        layer_heads=tuple(len(k) for k in keep_heads),
        layer_ffn=tuple(len(k) for k in keep_ffn),
    )
    src = model if not cfg.scan_layers else unstack_layers(model)
    pure = nnx.to_pure_dict(nnx.state(src))
    for i in range(cfg.n_layers):
        blk = pure["stack"]["blocks"][i]
        heads, ffn = keep_heads[i], keep_ffn[i]
        kv = heads[::g] // g
        attn, mlp = blk["attn"], blk["mlp"]
        scale_h = hm[i, heads].astype(np.asarray(attn["wo"]).dtype)
        attn["wo"] = np.asarray(attn["wo"])[heads] * scale_h[:, None, None]
        attn["wq"] = np.asarray(attn["wq"])[:, heads]
        for name in ("wk", "wv"):
            attn[name] = np.asarray(attn[name])[:, kv]
        if "bq" in attn:
            attn["bq"] = np.asarray(attn["bq"])[heads]
            attn["bk"] = np.asarray(attn["bk"])[kv]
            attn["bv"] = np.asarray(attn["bv"])[kv]
        scale_f = nm[i, ffn].astype(np.asarray(mlp["wo"]).dtype)
        mlp["wo"] = np.asarray(mlp["wo"])[ffn] * scale_f[:, None]
        for name in ("wi", "wu"):
            if name in mlp:
                mlp[name] = np.asarray(mlp[name])[:, ffn]
        for name in ("bi", "bu"):
            if name in mlp:
                mlp[name] = np.asarray(mlp[name])[ffn]
    out = nnx.eval_shape(lambda: Transformer(new_cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(out)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)
