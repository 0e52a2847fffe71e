"""Qwen2-MoE / Qwen1.5-MoE (``Qwen2MoeForCausalLM``) <-> jaxslim: key map and config mapping.

A Qwen2-MoE is a Qwen2 (:mod:`~jaxslim.convert.qwen2`: q/k/v biases when ``qkv_bias``, none on the
output) whose expert layers route as Qwen3-MoE's (:mod:`~jaxslim.convert.qwen3_moe`) and add a
dense *shared expert* of width ``shared_expert_intermediate_size`` scaled by
``sigmoid(x @ shared_expert_gate)``: ``ModelConfig(shared_expert_ffn=..., shared_expert_gate=True)``
(``mlp.shared_expert.*`` and ``mlp.shared_expert_gate.weight``).
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama, qwen2, qwen3_moe
from jaxslim.convert.rules import LINEAR, Rule, rule

ARCHITECTURES = ("Qwen2MoeForCausalLM",)
MODEL_TYPE = "qwen2_moe"
HF_CONFIG = "Qwen2MoeConfig"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

B = "stack.blocks.{i}."
L = "layers.{i}.mlp."

# Qwen2MoeConfig's defaults, for config.json files that leave a field out
_DEFAULTS = dict(
    shared_expert_intermediate_size=5632, qkv_bias=True, moe_intermediate_size=1408, num_experts_per_tok=4
)


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Qwen2-MoE ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    hf = {**_DEFAULTS, **hf}
    if not (hf.get("num_experts") or hf.get("num_local_experts")):
        hf["num_experts"] = 60  # Qwen2MoeConfig's default
    moe = qwen3_moe.moe_from_hf(hf, "Qwen2-MoE")
    base = qwen2.config_from_hf(hf, architecture, tensor_names)
    return base.replace(
        attn_bias=bool(hf["qkv_bias"]),
        hf_family=MODEL_TYPE,
        moe=moe,
        shared_expert_ffn=hf["shared_expert_intermediate_size"],
        shared_expert_gate=True,
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Qwen2MoeConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Qwen2-MoE cannot express (all of it named).
    """
    problems = llama.expressible(
        cfg, "Qwen2-MoE", sliding_window=True, sliding_layers=True, attn_bias=True, moe=True
    )
    problems += qwen3_moe.moe_problems(cfg, "Qwen2-MoE")
    if cfg.shared_expert_ffn is None or not cfg.shared_expert_gate:
        problems.append(
            f"shared_expert_ffn={cfg.shared_expert_ffn}, shared_expert_gate={cfg.shared_expert_gate} "
            "(every Qwen2-MoE expert layer has a gated shared expert)"
        )
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Qwen2-MoE: " + "; ".join(problems))
    return ARCHITECTURES[0], dict(
        llama.decoder_fields(cfg),
        **qwen2.window_to_hf(cfg),
        **qwen3_moe.moe_fields(cfg),
        qkv_bias=cfg.attn_bias,
        shared_expert_intermediate_size=cfg.shared_expert_ffn,
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Qwen2-MoE model described by ``cfg``: Qwen2's (dense layers included), the
    experts, and the gated shared expert."""
    return (
        qwen2.rules(cfg)
        + qwen3_moe.expert_rules()
        + [
            rule(L + "shared_expert.gate_proj.weight", B + "shared.wi", transform=LINEAR),
            rule(L + "shared_expert.up_proj.weight", B + "shared.wu", transform=LINEAR),
            rule(L + "shared_expert.down_proj.weight", B + "shared.wo", transform=LINEAR),
            rule(L + "shared_expert_gate.weight", B + "shared_gate", transform=LINEAR),
        ]
    )
