"""Logit checker: the Hugging Face PyTorch model and jaxslim on the same tokens.

torch and transformers are imported inside :func:`check` only; importing this module needs neither.

Example:
    >>> report = check("all-MiniLM-L6-v2/")  # doctest: +SKIP
    >>> print(format_report(report))         # doctest: +SKIP
    | output | max abs diff | max rel diff |
    |---|---|---|
    | hidden | 1.907e-06 | 1.618e-06 |
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from jaxslim.convert.hf import CONFIG, family_of, load_hf
from jaxslim.convert.io import read_json
from jaxslim.paths import absolute


def difference(ours: npt.ArrayLike, ref: npt.ArrayLike, mask: np.ndarray | None = None) -> dict[str, float]:
    """Max absolute difference and max relative difference of two arrays ``[batch, length, ...]``.

    The relative difference is the max absolute difference divided by the largest reference
    magnitude: an element-wise ratio would explode wherever the reference is near zero.

    Args:
        ours: jaxslim's output.
        ref: the reference output.
        mask: ``[batch, length]``; positions where it is 0 (padding) are left out.
    """
    d = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))
    r = np.abs(np.asarray(ref, np.float64))
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        d, r = d[keep], r[keep]
    max_abs = float(d.max())
    return {"max_abs": max_abs, "max_rel": max_abs / max(float(r.max()), np.finfo(np.float64).tiny)}


def check(
    path: str | os.PathLike,
    *,
    tokens: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    batch: int = 2,
    length: int = 16,
    seed: int = 0,
    verbose: bool = False,
    fp64: bool = False,
) -> dict[str, dict[str, float]]:
    """Runs the PyTorch model and jaxslim on the same tokens and compares their outputs.

    Both run in evaluation mode, jaxslim in float32 and the PyTorch model (eager attention) in
    float32, or in float64 with ``fp64=True``: then the difference is jaxslim's own float32 rounding
    alone, not the sum of two models' rounding.

    Args:
        path: a Hugging Face checkpoint directory that :func:`~jaxslim.convert.load_hf` supports.
        tokens: ``[batch, length]`` token ids; random ids (``seed``) of shape ``(batch, length)``
            by default.
        attention_mask: ``[batch, length]``, 0 on padding; padded positions are not compared.
        batch: batch of the random tokens.
        length: length of the random tokens (capped at the position table size).
        seed: seed of the random tokens.
        verbose: also print the report as a table.
        fp64: run the reference in float64.

    Returns:
        ``{"hidden": {"max_abs": ..., "max_rel": ...}, "logits": {...}, "pooled": {...}}`` for the
        outputs the model has: the last hidden state, the head's logits, BERT's pooler output.

    Raises:
        ValueError: the architecture is unsupported (before torch is imported).
    """
    d = absolute(path)
    hf_config = read_json(d / CONFIG)
    _, arch = family_of(hf_config)
    # ours first: a corrupt or non-finite checkpoint is reported by name before torch reads it
    model = load_hf(d)
    import torch
    import transformers

    if tokens is None:
        max_len = hf_config.get("max_position_embeddings") or hf_config.get("n_positions") or length
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, hf_config["vocab_size"], (batch, min(length, max_len)))
    tokens = np.asarray(tokens, np.int64)
    mask = np.ones_like(tokens) if attention_mask is None else np.asarray(attention_mask, np.int64)
    ref_model = getattr(transformers, arch).from_pretrained(
        str(d), attn_implementation="eager", dtype=torch.float64 if fp64 else torch.float32
    )
    ref_model.eval()
    with torch.no_grad():
        ref = ref_model(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask),
            output_hidden_states=True,
        )
    model.eval()  # inference behaviour, as the reference's: no router jitter, eval capacity
    ours = model(jnp.asarray(tokens, jnp.int32), attention_mask=jnp.asarray(mask, jnp.int32))
    result = {"hidden": difference(ours.hidden, ref.hidden_states[-1].numpy(), mask)}
    if ours.logits is not None and getattr(ref, "logits", None) is not None:
        per_token = np.ndim(ours.logits) == 3  # LM heads; a classification head has one row per sequence
        result["logits"] = difference(ours.logits, ref.logits.numpy(), mask if per_token else None)
    if ours.pooled is not None and getattr(ref, "pooler_output", None) is not None:
        result["pooled"] = difference(ours.pooled, ref.pooler_output.numpy())
    if verbose:
        print(format_report(result))
    return result


DEFAULT_RTOL = 1e-4


def failures(
    result: dict[str, dict[str, float]], *, rtol: float | None = DEFAULT_RTOL, atol: float | None = None
) -> list[str]:
    """The outputs of :func:`check`'s ``result`` whose difference exceeds a tolerance (empty: pass).

    ``rtol`` bounds the max abs difference relative to the largest reference magnitude, which is
    what float32 rounding scales with: a correct conversion of a real LLM differs by ~1e-4 on
    logits of ~40 (relative ~3e-6), a dropped bias or norm by orders of magnitude more. ``atol``
    bounds the max abs difference itself. None switches a bound off.

    Example:
        >>> failures({"logits": {"max_abs": 1.2e-4, "max_rel": 3e-6}})
        []
        >>> failures({"logits": {"max_abs": 1.2e-4, "max_rel": 3e-6}}, atol=1e-4)
        ['logits: max abs diff 1.200e-04 > atol 0.0001']
    """
    out = []
    for name, d in result.items():
        if rtol is not None and d["max_rel"] > rtol:
            out.append(f"{name}: max rel diff {d['max_rel']:.3e} > rtol {rtol:g}")
        if atol is not None and d["max_abs"] > atol:
            out.append(f"{name}: max abs diff {d['max_abs']:.3e} > atol {atol:g}")
    return out


def format_report(result: dict[str, dict[str, float]]) -> str:
    """A markdown table of :func:`check`'s result."""
    lines = ["| output | max abs diff | max rel diff |", "|---|---|---|"]
    lines += [f"| {name} | {d['max_abs']:.3e} | {d['max_rel']:.3e} |" for name, d in result.items()]
    return "\n".join(lines)
