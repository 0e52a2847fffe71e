"""Gemma 3 text models (``Gemma3ForCausalLM``) <-> jaxslim.

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
from jaxslim.convert import gemma, gemma2, llama
from jaxslim.convert.rules import Rule, rule

ARCHITECTURES = ("Gemma3ForCausalLM",)
MODEL_TYPE = "gemma3_text"
HF_CONFIG = "Gemma3TextConfig"
PREFIX = gemma.PREFIX
IGNORE = gemma.IGNORE


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


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
    del architecture, tensor_names
    hf = {**gemma.DEFAULTS, "max_position_embeddings": 131_072, "sliding_window": 4096, **hf}
    hf.setdefault("query_pre_attn_scalar", 256)
    n = hf["num_hidden_layers"]
    pattern = hf.get("sliding_window_pattern") or 6
    default = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    theta, scaling, local = _ropes(hf)
    return gemma.gemma_config(
        hf,
        "Gemma 3",
        activation_field="hidden_activation",
        rope=False,
        rope_theta=theta,
        rope_scaling=scaling,
        local_rope_theta=local,
        **gemma2.layer_windows(hf, "Gemma 3", default),
        post_norms=True,
        qk_norm=True,
        attn_softcap=hf.get("attn_logit_softcapping"),
        logit_softcap=hf.get("final_logit_softcapping"),
        attn_scale_dim=hf["query_pre_attn_scalar"],
        hf_family=MODEL_TYPE,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Gemma3TextConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Gemma 3 cannot express (all of it named).
    """
    problems = gemma.expressible(
        cfg,
        "Gemma 3",
        sliding_window=True,
        sliding_layers=True,
        post_norms=True,
        qk_norm=True,
        attn_softcap=True,
        logit_softcap=True,
        attn_scale_dim=True,
        local_rope_theta=True,
    )
    for flag in ("post_norms", "qk_norm"):
        if not getattr(cfg, flag):
            problems.append(f"{flag}=False (every Gemma 3 has it)")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Gemma 3: " + "; ".join(problems))
    fields = gemma.fields(cfg)
    del fields["rope_theta"]
    local = cfg.local_rope_theta if cfg.local_rope_theta is not None else cfg.rope_theta
    fields["rope_parameters"] = {
        "full_attention": llama.rope_to_hf(cfg),
        "sliding_attention": {"rope_type": "default", "rope_theta": float(local)},
    }
    return ARCHITECTURES[0], dict(
        fields,
        hidden_activation="gelu_pytorch_tanh",
        sliding_window=cfg.sliding_window,
        layer_types=gemma2.layer_types(cfg),
        attn_logit_softcapping=cfg.attn_softcap,
        final_logit_softcapping=cfg.logit_softcap,
        query_pre_attn_scalar=cfg.attn_scale_dim if cfg.attn_scale_dim is not None else cfg.head_dim_,
        use_bidirectional_attention=False,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Gemma 3 text model described by ``cfg``: Gemma 2's plus the q/k norms."""
    b, layer = "stack.blocks.{i}.attn.", "layers.{i}.self_attn."
    return gemma.sandwich_rules(cfg) + [
        rule(layer + "q_norm.weight", b + "q_norm.scale"),
        rule(layer + "k_norm.weight", b + "k_norm.scale"),
    ]
