"""Gemma 2 (``Gemma2ForCausalLM``) <-> jaxslim.

Beyond Gemma (:mod:`~jaxslim.convert.gemma`): each block normalises its attention and FFN outputs
before the residual sum (``post_norms``; ``post_attention_layernorm``, ``pre_feedforward_layernorm``,
``post_feedforward_layernorm``), attention scores and output logits are soft-capped
(``attn_softcap``, ``logit_softcap``), scores are scaled by ``query_pre_attn_scalar ** -0.5``
(``attn_scale_dim``) and local (sliding-window) and global layers alternate, local first
(``sliding_layers``, from ``layer_types``).
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import gemma
from jaxslim.convert.rules import Rule

ARCHITECTURES = ("Gemma2ForCausalLM",)
MODEL_TYPE = "gemma2"
HF_CONFIG = "Gemma2Config"
PREFIX = gemma.PREFIX
IGNORE = gemma.IGNORE


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


def layer_windows(hf: dict, family: str, default_types: list[str]) -> dict:
    """``sliding_window`` and ``sliding_layers`` of a Gemma 2 / 3 config from its ``layer_types``."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or default_types
    if len(types) != n or any(t not in ("sliding_attention", "full_attention") for t in types):
        raise ValueError(
            f"{family} layer_types must list 'sliding_attention' / 'full_attention' for each of the {n} "
            f"layers, got {types!r}"
        )
    window = hf.get("sliding_window")
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    if window is None:
        if sliding:
            raise ValueError(f"{family} layer_types has sliding_attention layers but sliding_window is null")
        return dict(sliding_window=None, sliding_layers=None)
    return dict(sliding_window=window, sliding_layers=None if len(sliding) == n else sliding)


def layer_types(cfg: ModelConfig) -> list[str]:
    """``layer_types`` of ``cfg``: which layers attend within the sliding window."""
    return ["sliding_attention" if cfg.window_of(i) else "full_attention" for i in range(cfg.n_layers)]


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Gemma 2 ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del architecture, tensor_names
    hf = {
        **gemma.DEFAULTS,
        "sliding_window": 4096,
        "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        **hf,
    }
    n = hf["num_hidden_layers"]
    default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    return gemma.gemma_config(
        hf,
        "Gemma 2",
        activation_field="hidden_activation",
        **layer_windows(hf, "Gemma 2", default),
        post_norms=True,
        attn_softcap=hf.get("attn_logit_softcapping"),
        logit_softcap=hf.get("final_logit_softcapping"),
        attn_scale_dim=hf["query_pre_attn_scalar"],
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Gemma2Config`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Gemma 2 cannot express (all of it named).
    """
    problems = gemma.expressible(
        cfg,
        "Gemma 2",
        sliding_window=True,
        sliding_layers=True,
        post_norms=True,
        attn_softcap=True,
        logit_softcap=True,
        attn_scale_dim=True,
    )
    if not cfg.post_norms:
        problems.append("post_norms=False (Gemma 2 normalises every sublayer output)")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Gemma 2: " + "; ".join(problems))
    return ARCHITECTURES[0], dict(
        gemma.fields(cfg),
        hidden_activation="gelu_pytorch_tanh",
        sliding_window=cfg.sliding_window,
        layer_types=layer_types(cfg),
        attn_logit_softcapping=cfg.attn_softcap,
        final_logit_softcapping=cfg.logit_softcap,
        query_pre_attn_scalar=cfg.attn_scale_dim if cfg.attn_scale_dim is not None else cfg.head_dim_,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Gemma 2 model described by ``cfg``."""
    return gemma.sandwich_rules(cfg)
