"""Gemma 3 text models (``Gemma3ForCausalLM``, ``Gemma3TextForSequenceClassification``,
``Gemma3TextModel``) <-> jaxslim.

Beyond Gemma 2 (:mod:`~jaxslim.convert.gemma2`): q/k RMSNorm (``qk_norm``, scaled by ``1 + w`` like
every Gemma norm), five local layers for each global one by default (``sliding_window_pattern``
6, or ``layer_types``), no soft-capping unless configured, and RoPE per layer type: the local
layers rotate with their own base (``local_rope_theta``, 10 000 by default) and plain RoPE, the
global ones with ``rope_theta`` (1 000 000 by default) and its scaling (linear 8 in the larger
models). Both transformers 5's nested ``rope_parameters`` and the older ``rope_theta`` /
``rope_local_base_freq`` / ``rope_scaling`` fields are read.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import gemma, llama
from jaxslim.convert.rules import Rule, rule

ARCHITECTURES = ("Gemma3ForCausalLM", "Gemma3TextForSequenceClassification", "Gemma3TextModel")
MODEL_TYPE = "gemma3_text"
HF_CONFIG = "Gemma3TextConfig"
PREFIX = gemma.PREFIX
IGNORE = gemma.IGNORE


prefix_for = gemma.prefix_for


def _ropes(hf: dict) -> tuple[float, object, float]:
    """(global theta, global scaling, local theta) of a Gemma 3 config, in either form."""
    params = hf.get("rope_parameters") or {}
    if params and not all(k in ("sliding_attention", "full_attention") for k in params):
        raise ValueError(
            "Gemma 3 rope_parameters must be keyed by layer type ('sliding_attention', "
            f"'full_attention'), got {sorted(params)}"
        )
    full = dict(params.get("full_attention") or {})
    local = dict(params.get("sliding_attention") or {})
    if hf.get("rope_scaling"):
        full = {**hf["rope_scaling"], **full}
    full.setdefault("rope_theta", hf.get("rope_theta") or 1_000_000.0)
    local.setdefault("rope_theta", hf.get("rope_local_base_freq") or 10_000.0)
    kind = local.get("rope_type") or local.get("type") or "default"
    if kind != "default":
        raise ValueError(f"Gemma 3 local-layer rope type {kind!r} is not supported; only 'default'")
    theta, scaling = llama.rope_from_hf(
        {"rope_parameters": full, "max_position_embeddings": hf["max_position_embeddings"]}, family="Gemma 3"
    )
    return theta, scaling, float(local["rope_theta"])


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Gemma 3 text ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    hf = {**gemma.DEFAULTS, "max_position_embeddings": 131_072, "sliding_window": 4096, **hf}
    hf.setdefault("query_pre_attn_scalar", 256)
    theta, scaling, local = _ropes(hf)
    return gemma.sandwich_config(
        hf,
        "Gemma 3",
        architecture,
        local_every=hf.get("sliding_window_pattern") or 6,
        rope=False,
        rope_theta=theta,
        rope_scaling=scaling,
        local_rope_theta=local,
        qk_norm=True,
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Gemma3TextConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Gemma 3 cannot express (all of it named).
    """
    arch, fields = gemma.sandwich_to_hf(cfg, "Gemma 3", "Gemma3Text", qk_norm=True, local_rope_theta=True)
    del fields["rope_theta"]
    local = cfg.local_rope_theta if cfg.local_rope_theta is not None else cfg.rope_theta
    fields["rope_parameters"] = {
        "full_attention": llama.rope_to_hf(cfg),
        "sliding_attention": {"rope_type": "default", "rope_theta": float(local)},
    }
    return arch.replace("Gemma3TextForCausalLM", "Gemma3ForCausalLM"), dict(
        fields, use_bidirectional_attention=False
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Gemma 3 text model described by ``cfg``: Gemma 2's plus the q/k norms."""
    b, layer = "stack.blocks.{i}.attn.", "layers.{i}.self_attn."
    return gemma.sandwich_rules(cfg) + [
        rule(layer + "q_norm.weight", b + "q_norm.scale"),
        rule(layer + "k_norm.weight", b + "k_norm.scale"),
    ]
