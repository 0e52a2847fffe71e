"""Hugging Face safetensors <-> jaxslim conversion (BERT, GPT-2, Llama) and a logit checker."""

from jaxslim.convert.hf import (
    SUPPORTED,
    config_from_hf,
    flat_params,
    load_hf,
    load_jaxslim,
    save_hf,
    save_jaxslim,
)
from jaxslim.convert.rules import ConversionError


def check(*args, **kwargs):
    """See :func:`jaxslim.convert.check.check` (imports torch, so loaded on use)."""
    from jaxslim.convert.check import check as _check

    return _check(*args, **kwargs)


__all__ = [
    "SUPPORTED",
    "ConversionError",
    "check",
    "config_from_hf",
    "flat_params",
    "load_hf",
    "load_jaxslim",
    "save_hf",
    "save_jaxslim",
]
