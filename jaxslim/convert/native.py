"""jaxslim's own checkpoint directory for converted models (a stopgap until the Orbax module).

A directory holds two files:

- ``jaxslim_config.json``: ``dataclasses.asdict(model.cfg)``, the full :class:`ModelConfig`;
- ``params.safetensors``: every parameter under its dotted path in the model's own layout
  (``stack.blocks.attn.wq`` with a leading layers axis when scanned, ``stack.blocks.0.attn.wq``
  otherwise), in the model's ``param_dtype``.

It keeps what a Hugging Face directory cannot: per-layer widths, scanning, dtypes. It holds
parameters only, no optimizer state. The tokenizer files and ``generation_config.json`` of the
Hugging Face directory a model was loaded from are copied alongside, so ``to-jax`` then ``to-hf``
keeps them.

Example:
    >>> save_jaxslim(load_hf("all-MiniLM-L6-v2/"), "minilm-jax/")  # doctest: +SKIP
    >>> model = load_jaxslim("minilm-jax/")                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from jaxslim.config import ModelConfig, MoeConfig, RopeScaling
from jaxslim.convert.hf import flat_params, load_hf, model_from_flat, param_shapes
from jaxslim.convert.io import (
    clear_outputs,
    copy_side_files,
    read_file,
    read_json,
    save_safetensors,
    side_files,
)
from jaxslim.convert.rules import describe, raise_problems
from jaxslim.models import Transformer
from jaxslim.paths import absolute

JAXSLIM_CONFIG = "jaxslim_config.json"
JAXSLIM_PARAMS = "params.safetensors"


def save_jaxslim(model: Transformer, path: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """Writes ``path/jaxslim_config.json`` and ``path/params.safetensors``.

    Args:
        model: any jaxslim model (scanned or not, per-layer widths included); the tokenizer files
            and ``generation_config.json`` of ``model.hf_source`` (where it was loaded from) are
            copied along.
        path: output directory (created if needed).
        overwrite: replace an existing jaxslim checkpoint in ``path``.

    Returns:
        ``path``.

    Raises:
        FileExistsError: ``path`` already holds one and ``overwrite`` is False.
    """
    d = absolute(path)
    source = getattr(model, "hf_source", None)
    carried = [] if source is None or pathlib.Path(source).resolve() == d.resolve() else side_files(source)
    clear_outputs(d, (JAXSLIM_CONFIG, JAXSLIM_PARAMS, *(f.name for f in carried)), overwrite=overwrite)
    d.mkdir(parents=True, exist_ok=True)
    save_safetensors(d / JAXSLIM_PARAMS, flat_params(model), {"format": "jaxslim"})
    (d / JAXSLIM_CONFIG).write_text(json.dumps(dataclasses.asdict(model.cfg), indent=2) + "\n")
    copy_side_files(source, d)
    return d


def _read_config(file: pathlib.Path) -> ModelConfig:
    raw = read_json(file)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{file} is not a jaxslim ModelConfig: unknown fields {unknown}")
    for key in ("layer_heads", "layer_ffn", "sliding_layers", "eos_token_id"):
        if isinstance(raw.get(key), list):
            raw[key] = tuple(raw[key])  # JSON has no tuples; the frozen config wants them
    try:
        if raw.get("moe") is not None:
            raw["moe"] = MoeConfig(**raw["moe"])
        if raw.get("rope_scaling") is not None:
            raw["rope_scaling"] = RopeScaling(**raw["rope_scaling"])
        return ModelConfig(**raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file} is not a valid jaxslim ModelConfig: {e}") from None


def load_jaxslim(path: str | os.PathLike) -> Transformer:
    """Reads a directory written by :func:`save_jaxslim` (or ``jaxslim-convert to-jax``).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a corrupt file, or an invalid config.
        ConversionError: (a ``ValueError``) parameters that do not match the config, all listed.
    """
    d = absolute(path)
    cfg = _read_config(d / JAXSLIM_CONFIG)
    flat = read_file(d / JAXSLIM_PARAMS)
    expected = param_shapes(cfg)
    common = sorted(set(expected) & set(flat))
    raise_problems(
        f"{d / JAXSLIM_PARAMS} does not match {d / JAXSLIM_CONFIG} ({describe(cfg)}):",
        {
            "missing": sorted(set(expected) - set(flat)),
            "unexpected": sorted(set(flat) - set(expected)),
            "mis-shaped": [
                f"{k}: shape {tuple(flat[k].shape)}, expected {expected[k]}"
                for k in common
                if tuple(flat[k].shape) != expected[k]
            ],
        },
    )
    model = model_from_flat(cfg, flat)
    if side_files(d):
        model.hf_source = str(d)  # the tokenizer and generation settings travel on to save_hf
    return model


def load_model(path: str | os.PathLike) -> Transformer:
    """The model in ``path``: a jaxslim directory (:func:`save_jaxslim`) or a Hugging Face one.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
    """
    folder = absolute(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{path!r} is not a model directory (a jaxslim or Hugging Face checkpoint)")
    return load_jaxslim(folder) if (folder / JAXSLIM_CONFIG).is_file() else load_hf(folder)
