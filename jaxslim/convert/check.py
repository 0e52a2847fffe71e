"""Logit checker: the Hugging Face PyTorch model and jaxslim on the same tokens.

torch and transformers are imported here only, lazily; the rest of ``jaxslim.convert`` needs
neither.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxslim.convert.hf import load_hf
from jaxslim.convert.io import read_json


def _diff(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    return {"max_abs": float(d.max()), "max_rel": float((d / np.maximum(np.abs(ref), 1e-6)).max())}


def check(
    path: str | os.PathLike,
    *,
    tokens: np.ndarray | None = None,
    batch: int = 2,
    length: int = 16,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Runs both models on ``tokens`` (random ids by default) and returns the max absolute and
    relative differences of the last hidden state and, when the model has a head, of the logits."""
    import torch
    import transformers

    d = pathlib.Path(path)
    hf_config = read_json(d / "config.json")
    arch = (hf_config.get("architectures") or ["AutoModel"])[0]
    if tokens is None:
        tokens = np.random.default_rng(seed).integers(0, hf_config["vocab_size"], (batch, length))
    tokens = np.asarray(tokens, np.int32)
    ref_model = getattr(transformers, arch).from_pretrained(str(d), attn_implementation="eager").eval()
    with torch.no_grad():
        out = ref_model(input_ids=torch.from_numpy(tokens).long(), output_hidden_states=True)
    ours = load_hf(d)(tokens)
    result = {"hidden": _diff(np.asarray(ours.hidden), out.hidden_states[-1].numpy())}
    if ours.logits is not None and getattr(out, "logits", None) is not None:
        result["logits"] = _diff(np.asarray(ours.logits), out.logits.numpy())
    return result
