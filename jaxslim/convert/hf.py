"""Hugging Face checkpoint directories <-> jaxslim models, per architecture, without torch.

Example:
    >>> from jaxslim.convert import load_hf, save_hf  # doctest: +SKIP
    >>> model = load_hf("all-MiniLM-L6-v2/")            # doctest: +SKIP
    >>> save_hf(model, "exported/")                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from types import ModuleType

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.convert import bert, gpt2, llama
from jaxslim.convert.io import read_json, read_tensors, write_tensors
from jaxslim.convert.rules import flat_to_hf, hf_to_flat
from jaxslim.models import Transformer, stack_layers, unstack_layers

FAMILIES: tuple[ModuleType, ...] = (bert, gpt2, llama)
SUPPORTED = tuple(a for f in FAMILIES for a in f.ARCHITECTURES)


def family_of(hf_config: dict) -> tuple[ModuleType, str]:
    """The key-map module and the architecture name of a HF ``config.json``."""
    archs = hf_config.get("architectures") or []
    for fam in FAMILIES:
        for a in archs:
            if a in fam.ARCHITECTURES:
                return fam, a
    name = archs[0] if archs else hf_config.get("model_type")
    if not archs:
        for fam in FAMILIES:
            if hf_config.get("model_type") == fam.MODEL_TYPE:
                return fam, fam.ARCHITECTURES[0]
    raise ValueError(f"unsupported architecture {name!r}; jaxslim converts {', '.join(SUPPORTED)}")


def _family_for_model(cfg: ModelConfig) -> ModuleType:
    return {"bert": bert, "gpt2": gpt2, "llama": llama}[cfg.arch]


def config_from_hf(hf_config: dict, **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of a HF ``config.json`` dict."""
    fam, arch = family_of(hf_config)
    try:
        cfg = fam.config_from_hf(hf_config, arch)
    except KeyError as e:
        raise ValueError(f"config.json of a {arch} lacks the field {e.args[0]!r}") from None
    return cfg.replace(**overrides) if overrides else cfg


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """``{"stack.blocks.0.attn.wq": array, ...}`` of a model's parameters (any layout)."""
    return {
        ".".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def abstract_flat(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter paths and shapes of the model ``cfg`` describes, built abstractly."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return {
        ".".join(map(str, p)): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }


def model_from_flat(cfg: ModelConfig, flat: dict[str, np.ndarray]) -> Transformer:
    """Builds a model of ``cfg`` holding the arrays of ``flat`` (paths in ``cfg``'s own layout)."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    dtype = jnp.dtype(cfg.param_dtype)

    def fill(path, var):
        key = ".".join(map(str, path))
        return var.replace(jnp.asarray(flat[key], dtype))

    filled = nnx.from_flat_state([(p, fill(p, v)) for p, v in nnx.to_flat_state(state)])
    return nnx.merge(graphdef, filled)


def load_hf(
    path: str | os.PathLike, *, scan_layers: bool = True, dtype: str = "float32", param_dtype: str = "float32"
) -> Transformer:
    """Loads a Hugging Face checkpoint directory (``config.json`` + safetensors) into jaxslim.

    Args:
        path: directory with ``config.json`` and ``model.safetensors`` (or a sharded index).
        scan_layers: stack the blocks on a ``layers`` axis (one compiled block).
        dtype: compute dtype; param_dtype: storage dtype of the weights.

    Raises:
        ValueError: unsupported architecture, corrupt file, or weights that do not match the config
            (every missing, unexpected and mis-shaped tensor listed in one message).
    """
    d = pathlib.Path(path)
    hf_config = read_json(d / "config.json")
    fam, _ = family_of(hf_config)
    cfg = config_from_hf(hf_config, scan_layers=False, dtype=dtype, param_dtype=param_dtype)
    tensors = read_tensors(d)
    expected = abstract_flat(cfg)
    flat = hf_to_flat(
        tensors, fam.rules(cfg), expected, cfg, prefix=fam.PREFIX, ignore=fam.IGNORE, source=f"checkpoint {d}"
    )
    model = model_from_flat(cfg, flat)
    return stack_layers(model) if scan_layers else model


def save_hf(
    model: Transformer, path: str | os.PathLike, *, max_shard_bytes: int | None = None
) -> pathlib.Path:
    """Writes ``model`` as a Hugging Face checkpoint directory that ``from_pretrained`` loads.

    Per-layer widths (a slimmed model) cannot be expressed in a HF config: that raises.
    """
    cfg: ModelConfig = model.cfg
    if not cfg.uniform:
        raise ValueError(
            "save_hf: this model has per-layer head counts / FFN widths (layer_heads / layer_ffn), which a "
            "Hugging Face config cannot express; export the masked dense model instead"
        )
    if cfg.scan_layers:
        model = unstack_layers(model)
        cfg = model.cfg
    fam = _family_for_model(cfg)
    arch, hf_kwargs = fam.config_to_hf(cfg)
    tensors = flat_to_hf(flat_params(model), fam.rules(cfg), cfg, prefix=_prefix(fam, arch))
    d = pathlib.Path(path)
    kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    write_tensors(
        d, {k: v.astype(np.float32) if v.dtype != np.float32 else v for k, v in tensors.items()}, **kwargs
    )
    (d / "config.json").write_text(
        json.dumps(_hf_config_dict(fam, arch, hf_kwargs), indent=2, sort_keys=True)
    )
    return d


def _prefix(fam: ModuleType, arch: str) -> str:
    # the bare backbones (BertModel, GPT2Model) name their tensors without the prefix
    return "" if arch in ("BertModel", "GPT2Model") else fam.PREFIX


def _hf_config_dict(fam: ModuleType, arch: str, kwargs: dict) -> dict:
    try:
        import transformers
    except ImportError:  # config.json can be written without transformers; it then carries only our fields
        return {"architectures": [arch], "model_type": fam.MODEL_TYPE, **kwargs}
    config_cls = transformers.AutoConfig.for_model(fam.MODEL_TYPE).__class__
    out = config_cls(**kwargs).to_dict()
    out["architectures"] = [arch]
    return out


# -- jaxslim's own directory format (until the Orbax checkpoint module lands) ---------------------

JAXSLIM_CONFIG = "jaxslim_config.json"
JAXSLIM_PARAMS = "params.safetensors"


def save_jaxslim(model: Transformer, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``path/jaxslim_config.json`` (the ModelConfig) and ``path/params.safetensors``
    (every parameter under its dotted path, in the model's own layout)."""
    from safetensors.numpy import save_file

    d = pathlib.Path(path)
    d.mkdir(parents=True, exist_ok=True)
    save_file(flat_params(model), str(d / JAXSLIM_PARAMS), metadata={"format": "jaxslim"})
    (d / JAXSLIM_CONFIG).write_text(json.dumps(dataclasses.asdict(model.cfg), indent=1))
    return d


def load_jaxslim(path: str | os.PathLike) -> Transformer:
    """Reads a directory written by :func:`save_jaxslim`."""
    from jaxslim.convert.io import _read_file

    d = pathlib.Path(path)
    raw = read_json(d / JAXSLIM_CONFIG)
    for key in ("layer_heads", "layer_ffn"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    try:
        cfg = ModelConfig(**raw)
    except TypeError as e:
        raise ValueError(f"{d / JAXSLIM_CONFIG} is not a jaxslim ModelConfig: {e}") from None
    flat = _read_file(d / JAXSLIM_PARAMS)
    expected = abstract_flat(cfg)
    bad = sorted(set(expected) ^ set(flat)) + [
        f"{k}: {flat[k].shape} vs {expected[k]}"
        for k in set(expected) & set(flat)
        if tuple(flat[k].shape) != expected[k]
    ]
    if bad:
        raise ValueError(f"{d / JAXSLIM_PARAMS} does not match its config: " + "; ".join(bad[:20]))
    return model_from_flat(cfg, flat)
