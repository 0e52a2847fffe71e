"""Hugging Face safetensors <-> jaxslim conversion (BERT, RoBERTa, XLM-R, DistilBERT, ModernBERT,
GPT-2, GPT-NeoX, Llama 1-3.x with RoPE scaling, Mistral, Mixtral, Qwen2/2.5, Qwen3 and their MoE
versions, Phi-3, Gemma 1-3, OLMo 2), without torch, with tokenizer files and generation settings
carried through, and a logit checker.

Example:
    >>> from jaxslim.convert import load_hf, save_hf  # doctest: +SKIP
    >>> model = load_hf("all-MiniLM-L6-v2/")            # doctest: +SKIP
    >>> save_hf(model, "exported/")                     # doctest: +SKIP
    >>> check("exported/", verbose=True)                # doctest: +SKIP
"""

from jaxslim.convert.check import check, difference, failures, format_report
from jaxslim.convert.hf import (
    SUPPORTED,
    config_from_hf,
    config_to_hf,
    flat_params,
    load_hf,
    param_shapes,
    save_hf,
)
from jaxslim.convert.native import load_jaxslim, save_jaxslim
from jaxslim.convert.rules import ConversionError

__all__ = [
    "SUPPORTED",
    "ConversionError",
    "check",
    "config_from_hf",
    "config_to_hf",
    "difference",
    "failures",
    "flat_params",
    "format_report",
    "load_hf",
    "load_jaxslim",
    "param_shapes",
    "save_hf",
    "save_jaxslim",
]
