"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``) and Qwen3 (``Qwen3ForCausalLM``) <-> jaxslim.

Both are Llama-style decoders under the same tensor names:

* Qwen2 has biases on the q, k and v projections and none on the output projection
  (``ModelConfig(attn_bias=True, attn_out_bias=False)``);
* Qwen3 has no biases (unless ``attention_bias``) and an RMSNorm over ``head_dim`` on queries and
  keys before RoPE (``qk_norm=True``; ``self_attn.q_norm`` / ``k_norm``).

Either may put a sliding window on layers ``max_window_layers`` and up when
``use_sliding_window`` is set (or on the layers ``layer_types`` marks ``sliding_attention``); the
released checkpoints leave it off. This module is the Qwen2 family; :mod:`~jaxslim.convert.qwen3`
is Qwen3's.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama
from jaxslim.convert.rules import Rule

ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification", "Qwen2Model")
MODEL_TYPE = "qwen2"
HF_CONFIG = "Qwen2Config"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

# Qwen2Config's / Qwen3Config's defaults, for config.json files that leave a field out
DEFAULTS = dict(
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
    sliding_window=4096,
    max_window_layers=28,
    bos_token_id=None,
    eos_token_id=None,
)


prefix_for = llama.prefix_for


def window_from_hf(hf: dict, family: str) -> dict:
    """``sliding_window`` and ``sliding_layers`` of a Qwen config (None, None when it has none)."""
    n = hf["num_hidden_layers"]
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    types = hf.get("layer_types")
    if types is not None:
        if len(types) != n or any(t not in ("sliding_attention", "full_attention") for t in types):
            raise ValueError(
                f"{family} layer_types must list 'sliding_attention' / 'full_attention' for each of the "
                f"{n} layers, got {types!r}"
            )
        sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    else:
        sliding = tuple(range(hf["max_window_layers"], n))
    if window is None or not sliding:
        return dict(sliding_window=None, sliding_layers=None)
    return dict(sliding_window=window, sliding_layers=None if len(sliding) == n else sliding)


def window_to_hf(cfg: ModelConfig) -> dict:
    """The sliding-window fields of a Qwen config for ``cfg`` (the inverse of :func:`window_from_hf`)."""
    sliding = [cfg.window_of(i) > 0 for i in range(cfg.n_layers)]
    return dict(
        use_sliding_window=cfg.sliding_window is not None,
        sliding_window=cfg.sliding_window,
        max_window_layers=sliding.index(True) if any(sliding) else cfg.n_layers,
        layer_types=["sliding_attention" if s else "full_attention" for s in sliding],
    )


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Qwen2 ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    hf = {**DEFAULTS, **hf}
    return ModelConfig.llama(
        **llama.head_of(architecture, hf),
        **llama.decoder_config(hf, "Qwen2", max_len=32768, norm_eps=1e-6, theta=10000.0),
        **window_from_hf(hf, "Qwen2"),
        attn_bias=True,
        attn_out_bias=False,
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Qwen2Config`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Qwen2 cannot express (all of it named).
    """
    problems = llama.expressible(
        cfg, "Qwen2", sliding_window=True, sliding_layers=True, attn_bias=True, heads=llama.HEADS
    )
    if not cfg.attn_bias:
        problems.append("attn_bias=False (Qwen2 always has q/k/v biases)")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Qwen2: " + "; ".join(problems))
    arch, head_fields = llama.head_to_hf(cfg, "Qwen2")
    return arch, dict(llama.decoder_fields(cfg), **head_fields, **window_to_hf(cfg))


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Qwen2 model described by ``cfg`` (Llama's names)."""
    return llama.rules(cfg)
