"""Hugging Face checkpoint directories <-> jaxslim models, without torch.

Each supported architecture is a module (:mod:`~jaxslim.convert.bert`, :mod:`~jaxslim.convert.gpt2`,
:mod:`~jaxslim.convert.llama`, :mod:`~jaxslim.convert.mistral`, :mod:`~jaxslim.convert.mixtral`,
:mod:`~jaxslim.convert.qwen2`, :mod:`~jaxslim.convert.qwen3`, :mod:`~jaxslim.convert.phi3`,
:mod:`~jaxslim.convert.gemma`, :mod:`~jaxslim.convert.gemma2`, :mod:`~jaxslim.convert.gemma3`,
:mod:`~jaxslim.convert.olmo2`, :mod:`~jaxslim.convert.gpt_neox`, :mod:`~jaxslim.convert.roberta`,
:mod:`~jaxslim.convert.xlm_roberta`, :mod:`~jaxslim.convert.distilbert`,
:mod:`~jaxslim.convert.modernbert`, :mod:`~jaxslim.convert.qwen3_moe`,
:mod:`~jaxslim.convert.qwen2_moe`) that provides ``ARCHITECTURES`` (HF class names, the first is the
default), ``MODEL_TYPE``, ``HF_CONFIG`` (the transformers config class name), ``PREFIX`` and
``prefix_for(architecture)`` (the backbone key prefix), ``IGNORE`` (regexes of buffers that hold no
weights), ``config_from_hf``, ``config_to_hf`` and ``rules(cfg)`` (the regex key map). This module
dispatches on ``config.json`` and runs the shared machinery of :mod:`~jaxslim.convert.rules` and
:mod:`~jaxslim.convert.io`.

Loading reads tensors with safetensors' numpy API and never imports torch or transformers.
Saving builds ``config.json`` with transformers' config class when transformers is installed (so the
file carries every default ``from_pretrained`` expects) and from jaxslim's own fields otherwise;
note that transformers' configuration module imports torch itself when torch is installed.

Example:
    >>> from jaxslim.convert import load_hf, save_hf  # doctest: +SKIP
    >>> model = load_hf("all-MiniLM-L6-v2/")            # doctest: +SKIP
    >>> save_hf(model, "exported/")                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Collection, Mapping
from types import ModuleType

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslim.config import DTYPES, ModelConfig
from jaxslim.convert import (
    bert,
    distilbert,
    gemma,
    gemma2,
    gemma3,
    gpt2,
    gpt_neox,
    llama,
    mistral,
    mixtral,
    modernbert,
    olmo2,
    phi3,
    qwen2,
    qwen2_moe,
    qwen3,
    qwen3_moe,
    roberta,
    xlm_roberta,
)
from jaxslim.convert.io import (
    GENERATION_CONFIG,
    INDEX,
    MAX_SHARD_BYTES,
    SHARD_GLOB,
    WEIGHTS,
    clear_outputs,
    copy_side_files,
    read_json,
    read_tensors,
    side_files,
    write_tensors,
)
from jaxslim.convert.rules import flat_to_hf, hf_to_flat
from jaxslim.models import Transformer
from jaxslim.paths import absolute

FAMILIES: tuple[ModuleType, ...] = (
    bert,
    gpt2,
    llama,
    mistral,
    mixtral,
    qwen2,
    qwen3,
    phi3,
    gemma,
    gemma2,
    gemma3,
    olmo2,
    gpt_neox,
    roberta,
    xlm_roberta,
    distilbert,
    modernbert,
    qwen3_moe,
    qwen2_moe,
)
SUPPORTED: tuple[str, ...] = tuple(a for f in FAMILIES for a in f.ARCHITECTURES)
_BY_ARCH: dict[str, ModuleType] = {"bert": bert, "gpt2": gpt2, "llama": llama}  # ModelConfig.arch -> family
CONFIG = "config.json"
_BLOCK = re.compile(r"^stack\.blocks\.(\d+)\.(.+)$")
_SCANNED_BLOCK = "stack.blocks."


def family_of(hf_config: Mapping) -> tuple[ModuleType, str]:
    """The key-map module and the architecture name of a HF ``config.json`` dict.

    Raises:
        ValueError: the architecture is not one jaxslim converts (the message lists those it does).
    """
    archs = hf_config.get("architectures") or []
    for a in archs:
        for fam in FAMILIES:
            if a in fam.ARCHITECTURES:
                return fam, a
    model_type = hf_config.get("model_type")
    if not archs:
        for fam in FAMILIES:
            if model_type == fam.MODEL_TYPE:
                return fam, fam.ARCHITECTURES[0]
    name = archs[0] if archs else model_type
    if name is None:
        raise ValueError(
            f"config.json names no architecture (no 'architectures' or 'model_type'); "
            f"jaxslim converts {', '.join(SUPPORTED)}"
        )
    raise ValueError(f"unsupported architecture {name!r}; jaxslim converts {', '.join(SUPPORTED)}")


def family_for(cfg: ModelConfig) -> ModuleType:
    """The key-map module that exports a model described by ``cfg``: the family it was converted
    from (``cfg.hf_family``), else its architecture's, or Mixtral's for any mixture of experts
    (each ``config_to_hf`` says what it cannot express).

    Raises:
        ValueError: ``cfg.hf_family`` names no family jaxslim converts.
    """
    if cfg.hf_family is not None:
        for fam in FAMILIES:
            if fam.MODEL_TYPE == cfg.hf_family:
                return fam
        known = sorted({f.MODEL_TYPE for f in FAMILIES})
        raise ValueError(
            f"ModelConfig.hf_family={cfg.hf_family!r} is not a family jaxslim converts; one of {known}"
        )
    return mixtral if cfg.moe is not None else _BY_ARCH[cfg.arch]


def _config(
    fam: ModuleType, arch: str, hf_config: Mapping, tensor_names: Collection[str] | None
) -> ModelConfig:
    try:
        return fam.config_from_hf(dict(hf_config), arch, tensor_names)
    except KeyError as e:
        raise ValueError(f"config.json of a {arch} lacks the field {e.args[0]!r}") from None


def config_from_hf(hf_config: Mapping, **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of a HF ``config.json`` dict.

    Args:
        hf_config: the parsed ``config.json``.
        **overrides: ModelConfig fields to set on top (``scan_layers=False``, ``dtype=...``).

    Raises:
        ValueError: unsupported architecture or feature, or a missing field.

    Example:
        >>> config_from_hf({"architectures": ["GPT2LMHeadModel"], "vocab_size": 64, "n_embd": 32,
        ...                 "n_layer": 2, "n_head": 4}).d_ff
        128
    """
    fam, arch = family_of(hf_config)
    cfg = _config(fam, arch, hf_config, None)
    return cfg.replace(**overrides) if overrides else cfg


def config_to_hf(cfg: ModelConfig, *, dtype: str | None = None) -> dict:
    """The ``config.json`` dict of a model described by ``cfg`` (the inverse of :func:`config_from_hf`).

    Built with transformers' config class when transformers is installed, so it carries every field
    ``from_pretrained`` expects; otherwise from jaxslim's fields alone (transformers fills in the
    defaults when it reads the file).

    Args:
        cfg: the model config.
        dtype: the weights' dtype to record; defaults to ``cfg.param_dtype``.

    Raises:
        ValueError: ``cfg`` has per-layer widths, or a feature the HF architecture cannot express.
    """
    if not cfg.uniform:
        raise ValueError(
            "this model has per-layer head counts / FFN widths (ModelConfig.layer_heads / layer_ffn): "
            "a Hugging Face config has one num_attention_heads and one intermediate_size for all layers, "
            "so it cannot express them; export the dense model with masks applied instead, or pad "
            "every layer back to the full width"
        )
    fam = family_for(cfg)
    arch, kwargs = fam.config_to_hf(cfg)
    dtype = dtype or cfg.param_dtype
    try:
        import transformers
    except ImportError:
        return {"architectures": [arch], "model_type": fam.MODEL_TYPE, "dtype": dtype, **kwargs}
    out = getattr(transformers, fam.HF_CONFIG)(**kwargs).to_dict()
    out["architectures"] = [arch]
    out["dtype"] = dtype
    return out


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """``{"stack.blocks.0.attn.wq": array, ...}``: a model's parameters under dotted paths, in the
    model's own layout (scanned blocks have a leading layers axis under ``stack.blocks.*``)."""
    return {
        ".".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter paths and shapes of the model ``cfg`` describes, built abstractly (no memory)."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return {
        ".".join(map(str, p)): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }


def unused_params(cfg: ModelConfig) -> dict[str, float]:
    """Parameters (unscanned paths) that ``cfg``'s model holds but never uses, with the value they
    are filled with on load: layer 0's attention norm without ``first_attn_norm`` (kept so every
    layer has the same parameters). A checkpoint has no tensor for them and none is written."""
    if cfg.first_attn_norm:
        return {}
    out = {f"{_SCANNED_BLOCK}0.attn_norm.scale": 1.0 - cfg.norm_offset}
    if cfg.norm_bias and not cfg.rms_norm:
        out[f"{_SCANNED_BLOCK}0.attn_norm.bias"] = 0.0
    return out


def _scanned_key(rest: str, slot: int, period: int) -> str:
    return f"{_SCANNED_BLOCK}{rest}" if period == 1 else f"{_SCANNED_BLOCK}{slot}.{rest}"


def scan_flat(
    flat: Mapping[str, np.ndarray], n_layers: int, period: int = 1, *, consume: bool = False
) -> dict[str, np.ndarray]:
    """Unscanned flat params (``stack.blocks.<i>.x``) -> scanned ones: ``stack.blocks.x`` stacked
    over layers, or for a period-``p`` stack (mixtures of experts, see
    :attr:`ModelConfig.layer_period`) ``stack.blocks.<i % p>.x`` stacked over groups of ``p`` layers.
    With ``consume=True`` the entries of ``flat`` (a dict) are removed as they are stacked, so the
    unscanned and scanned copies of a model do not coexist."""
    out: dict[str, np.ndarray] = {}
    per_layer: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    items = list(flat.items())
    if consume:
        if not isinstance(flat, dict):
            raise TypeError(f"scan_flat(consume=True) needs a dict to empty, got {type(flat).__name__}")
        flat.clear()
    for key, value in items:
        m = _BLOCK.match(key)
        if m is None:
            out[key] = value
        else:
            i = int(m[1])
            per_layer.setdefault((m[2], i % period), {})[i // period] = value
    items.clear()
    for rest, slot in list(per_layer):
        groups = per_layer.pop((rest, slot))
        out[_scanned_key(rest, slot, period)] = np.stack([groups[g] for g in range(n_layers // period)])
    return out


def unscan_flat(flat: Mapping[str, np.ndarray], n_layers: int, period: int = 1) -> dict[str, np.ndarray]:
    """Scanned flat params -> unscanned ones: the inverse of :func:`scan_flat`."""
    out: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        if not key.startswith(_SCANNED_BLOCK):
            out[key] = value
            continue
        rest = key[len(_SCANNED_BLOCK) :]
        slot = 0
        if period > 1:
            head, rest = rest.split(".", 1)
            slot = int(head)
        out.update(
            {f"{_SCANNED_BLOCK}{g * period + slot}.{rest}": value[g] for g in range(n_layers // period)}
        )
    return out


def model_from_flat(
    cfg: ModelConfig, flat: Mapping[str, np.ndarray], *, consume: bool = False
) -> Transformer:
    """A model of ``cfg`` holding the arrays of ``flat`` (paths in ``cfg``'s own layout), cast to
    ``cfg.param_dtype``. The model is built abstractly first, so no random weights are drawn. With
    ``consume=True`` each entry of ``flat`` (a dict) is removed once it is on the device, so the
    host and device copies of a model do not coexist."""
    if consume and not isinstance(flat, dict):
        raise TypeError(f"model_from_flat(consume=True) needs a dict to empty, got {type(flat).__name__}")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    dtype = jnp.dtype(cfg.param_dtype)
    filled = []
    for path, var in nnx.to_flat_state(state):
        key = ".".join(map(str, path))
        value = flat.pop(key) if isinstance(flat, dict) and consume else flat[key]
        filled.append((path, var.replace(jnp.asarray(value, dtype))))
        del value
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def load_hf(
    path: str | os.PathLike,
    *,
    scan_layers: bool = True,
    dtype: str = "float32",
    param_dtype: str = "float32",
) -> Transformer:
    """Loads a Hugging Face checkpoint directory (``config.json`` + safetensors) into jaxslim.

    Supports ``BertModel``, ``BertForMaskedLM``, ``GPT2LMHeadModel``, ``GPT2Model``,
    ``LlamaForCausalLM`` and ``MixtralForCausalLM`` (per-expert or fused expert tensors) with
    uniform layers. Buffers (``position_ids``, GPT-2's causal-mask
    ``attn.bias``) are skipped; tied heads stored in the file must equal the embeddings.

    Args:
        path: directory with ``config.json`` and ``model.safetensors`` (or a sharded index).
        scan_layers: stack the blocks on a leading ``layers`` axis (one compiled block).
        dtype: compute dtype.
        param_dtype: storage dtype of the weights (checkpoint tensors are cast to it).

    Returns:
        The model, with ``model.cfg`` describing it.

    Raises:
        FileNotFoundError: ``config.json`` or the weights are missing.
        ValueError: unsupported architecture or feature, or a corrupt file.
        ConversionError: (a ``ValueError``) the weights do not match the config; every missing,
            unexpected, mis-shaped and wrongly tied tensor is listed in one message.

    Example:
        >>> model = load_hf("all-MiniLM-L6-v2/", scan_layers=False)  # doctest: +SKIP
        >>> model(tokens, attention_mask=mask).hidden.shape          # doctest: +SKIP
        (2, 16, 384)
    """
    d = absolute(path)
    hf_config = read_json(d / CONFIG)
    fam, arch = family_of(hf_config)
    _config(fam, arch, hf_config, None)  # unsupported features fail before the weights are read
    tensors = read_tensors(d)
    cfg = _config(fam, arch, hf_config, tensors.keys()).replace(
        scan_layers=False, dtype=dtype, param_dtype=param_dtype
    )
    expected = param_shapes(cfg)
    unused = {p: expected.pop(p) for p in unused_params(cfg)}
    flat = hf_to_flat(
        tensors,
        fam.rules(cfg),
        expected,
        cfg,
        prefix=fam.PREFIX,
        ignore=fam.IGNORE,
        source=f"checkpoint {d}",
    )
    del tensors
    flat.update({p: np.full(shape, unused_params(cfg)[p], np.float32) for p, shape in unused.items()})
    if scan_layers:
        cfg = cfg.replace(scan_layers=True)
        flat = scan_flat(flat, cfg.n_layers, cfg.layer_period, consume=True)
    model = model_from_flat(cfg, flat, consume=True)
    model.hf_source = str(d)  # where save_hf finds the tokenizer and generation settings again
    return model


def generation_config(cfg: ModelConfig) -> dict:
    """A ``generation_config.json`` holding ``cfg``'s special tokens, for a causal LM whose source
    had none (what ``save_pretrained`` writes from a model config)."""
    out: dict[str, object] = {"_from_model_config": True}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(cfg, name)
        if value is not None:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def save_hf(
    model: Transformer,
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    overwrite: bool = False,
    source: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Writes ``model`` as a Hugging Face checkpoint directory that ``from_pretrained`` loads.

    The directory gets ``config.json`` (the same architecture class the model was loaded from, with
    its special-token ids) and ``model.safetensors``, or shards of at most ``max_shard_bytes``
    (5 GB by default) plus ``model.safetensors.index.json``. The tokenizer files and
    ``generation_config.json`` (sampling settings included) of ``source`` are copied along; a causal
    LM whose source has no generation config gets one with its special tokens. Tied heads are not
    written (``from_pretrained`` ties them again). Nothing is written when the model cannot be
    expressed, and an existing checkpoint in ``path`` is only replaced with ``overwrite=True``.

    Args:
        model: a uniform jaxslim model, scanned or not.
        path: output directory (created if needed).
        dtype: dtype of the written tensors (``"float32"``, ``"bfloat16"``, ``"float16"``); defaults
            to the model's ``param_dtype``.
        max_shard_bytes: largest shard size.
        overwrite: replace a checkpoint already in ``path`` (its old shards are deleted first).
        source: a directory whose tokenizer files and ``generation_config.json`` are copied; by
            default the one the model was loaded from (``model.hf_source``, set by :func:`load_hf`
            and :func:`~jaxslim.convert.load_jaxslim`), if any.

    Returns:
        ``path``.

    Raises:
        ValueError: per-layer head counts / FFN widths (a slimmed model), or a feature the HF
            architecture cannot express.
        FileExistsError: ``path`` already holds a checkpoint and ``overwrite`` is False.

    Example:
        >>> save_hf(load_hf("all-MiniLM-L6-v2/"), "exported/")  # doctest: +SKIP
    """
    cfg: ModelConfig = model.cfg
    dtype = dtype or cfg.param_dtype
    if dtype not in DTYPES:
        raise ValueError(f"save_hf dtype must be one of {DTYPES}, got {dtype!r}")
    hf_config = config_to_hf(cfg, dtype=dtype)  # raises for per-layer widths before anything is written
    fam = family_for(cfg)
    flat = flat_params(model)
    if cfg.scan_layers:
        flat = unscan_flat(flat, cfg.n_layers, cfg.layer_period)
    for p in unused_params(cfg):
        flat.pop(p, None)
    tensors = flat_to_hf(flat, fam.rules(cfg), cfg, prefix=fam.prefix_for(hf_config["architectures"][0]))
    np_dtype = np.dtype(jnp.dtype(dtype))
    tensors = {k: v.astype(np_dtype, copy=False) for k, v in tensors.items()}
    d = absolute(path)
    source = getattr(model, "hf_source", None) if source is None else source
    carried = [f.name for f in side_files(source)]
    write_generation = cfg.head == "lm" and GENERATION_CONFIG not in carried
    same_dir = source is not None and pathlib.Path(source).resolve() == d.resolve()
    outputs: tuple[str, ...] = (CONFIG, WEIGHTS, INDEX, SHARD_GLOB)
    outputs += tuple(() if same_dir else carried) + ((GENERATION_CONFIG,) if write_generation else ())
    clear_outputs(d, outputs, overwrite=overwrite)
    write_tensors(d, tensors, max_shard_bytes=max_shard_bytes)
    (d / CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    copy_side_files(source, d)
    if write_generation:
        (d / GENERATION_CONFIG).write_text(
            json.dumps(generation_config(cfg), indent=2, sort_keys=True) + "\n"
        )
    return d
