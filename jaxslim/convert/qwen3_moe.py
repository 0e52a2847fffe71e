"""Qwen3-MoE (``Qwen3MoeForCausalLM``) <-> jaxslim: key map and config mapping.

A Qwen3-MoE is a Qwen3 (:mod:`~jaxslim.convert.qwen3`: q/k norms) whose FFNs are mixtures of
SwiGLU experts of width ``moe_intermediate_size``: an fp32 softmax router over all experts, the
top ``num_experts_per_tok`` of them, their gates renormalised to sum to 1 only with
``norm_topk_prob``, and no token dropped: ``MoeConfig(router="topk", dispatch="dropless",
renormalize=norm_topk_prob)``. Every ``decoder_sparse_step``-th layer holds experts (layers
``step - 1, 2 step - 1, ...``: ``MoeConfig(every=step, offset=step - 1)``); the others are dense
FFNs of width ``intermediate_size``. There are no shared experts (that is Qwen2-MoE).

Two expert layouts load, as for Mixtral: the per-expert ``mlp.experts.{e}.gate_proj / up_proj /
down_proj.weight`` that checkpoints ship (and that is written), and transformers 5's fused
``mlp.experts.gate_up_proj`` / ``down_proj``; the router is ``mlp.gate.weight`` in both.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig, MoeConfig
from jaxslim.convert import llama, qwen2, qwen3
from jaxslim.convert.rules import LINEAR, STACKED_GATE_UP, STACKED_LINEAR, Rule, rule

ARCHITECTURES = ("Qwen3MoeForCausalLM",)
MODEL_TYPE = "qwen3_moe"
HF_CONFIG = "Qwen3MoeConfig"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

B = "stack.blocks.{i}.moe."
L = "layers.{i}.mlp."

# Qwen3MoeConfig's defaults, for config.json files that leave a field out
_DEFAULTS = dict(
    decoder_sparse_step=1,
    moe_intermediate_size=768,
    num_experts_per_tok=8,
    norm_topk_prob=False,
    router_aux_loss_coef=0.001,
)


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


def moe_from_hf(hf: dict, family: str) -> MoeConfig:
    """The :class:`MoeConfig` of a Qwen-MoE config (Qwen2-MoE, Qwen3-MoE), defaults filled in.

    Raises:
        ValueError: ``mlp_only_layers`` that make an expert layer of the ``decoder_sparse_step``
            pattern dense (named).
    """
    hf = {**_DEFAULTS, **hf}
    # transformers 5 writes num_local_experts (its attribute map); the hub's files say num_experts
    experts = hf.get("num_experts") or hf.get("num_local_experts") or 128
    step = int(hf["decoder_sparse_step"])
    dense = sorted(set(hf.get("mlp_only_layers") or []))
    pattern = [i for i in range(hf["num_hidden_layers"]) if (i + 1) % step]  # without experts anyway
    if any(i not in pattern for i in dense):
        raise ValueError(
            f"{family} mlp_only_layers={dense} is not supported: jaxslim puts experts in every "
            f"decoder_sparse_step={step}-th layer, so only layers {pattern} may be dense"
        )
    return MoeConfig(
        num_experts=experts,
        top_k=hf["num_experts_per_tok"],
        router="topk",
        dispatch="dropless",
        every=step,
        offset=step - 1,
        d_ff=hf["moe_intermediate_size"],
        renormalize=bool(hf["norm_topk_prob"]),
        aux_loss_coef=float(hf["router_aux_loss_coef"]),
        z_loss_coef=0.0,
    )


def moe_problems(cfg: ModelConfig, family: str) -> list[str]:
    """What a Qwen-MoE cannot express about ``cfg.moe``."""
    m = cfg.moe
    if m is None:
        return ["moe=None (a dense model converts as its dense family)"]
    problems = []
    if m.router != "topk" or m.dispatch != "dropless":
        problems.append(
            f"moe.router={m.router!r}, moe.dispatch={m.dispatch!r} ({family} routes every token to its "
            "top-k experts and drops none)"
        )
    if m.offset != m.every - 1:
        problems.append(
            f"moe.offset={m.offset} ({family}'s experts sit in layers every - 1, 2 every - 1, ...)"
        )
    return problems


def moe_fields(cfg: ModelConfig) -> dict:
    """The expert fields of a Qwen-MoE config for ``cfg``."""
    m = cfg.moe
    if m is None:
        raise ValueError("moe_fields needs a ModelConfig with moe set, got moe=None")
    return dict(
        intermediate_size=cfg.d_ff,
        decoder_sparse_step=m.every,
        mlp_only_layers=[],
        moe_intermediate_size=cfg.expert_ffn,
        num_experts=m.num_experts,
        num_experts_per_tok=m.top_k,
        norm_topk_prob=m.renormalize,
        router_aux_loss_coef=float(m.aux_loss_coef),
    )


def expert_rules() -> list[Rule]:
    """The router and experts of a Qwen-MoE layer, in both layouts (the per-expert one is written)."""
    return [
        rule(L + "gate.weight", B + "router", transform=LINEAR),
        rule(L + "experts.{e}.gate_proj.weight", B + "wi", transform=LINEAR),
        rule(L + "experts.{e}.up_proj.weight", B + "wu", transform=LINEAR),
        rule(L + "experts.{e}.down_proj.weight", B + "wo", transform=LINEAR),
        rule(L + "experts.gate_up_proj", B + "wi", B + "wu", transform=STACKED_GATE_UP, load_only=True),
        rule(L + "experts.down_proj", B + "wo", transform=STACKED_LINEAR, load_only=True),
    ]


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Qwen3-MoE ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named), e.g. ``mlp_only_layers`` off the
            ``decoder_sparse_step`` pattern.
        KeyError: a required field is absent.
    """
    moe = moe_from_hf(hf, "Qwen3-MoE")
    # Qwen3MoeConfig has no head_dim default of its own: d_model / n_heads unless the file says
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    base = qwen3.config_from_hf({**hf, "head_dim": head_dim}, architecture, tensor_names)
    return base.replace(hf_family=MODEL_TYPE, moe=moe)


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``Qwen3MoeConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Qwen3-MoE cannot express (all of it named).
    """
    problems = llama.expressible(
        cfg,
        "Qwen3-MoE",
        sliding_window=True,
        sliding_layers=True,
        qk_norm=True,
        attn_bias=True,
        out_bias=True,
        moe=True,
    )
    if not cfg.qk_norm:
        problems.append("qk_norm=False (Qwen3-MoE always normalises queries and keys)")
    problems += moe_problems(cfg, "Qwen3-MoE")
    if cfg.shared_expert_ffn is not None:
        problems.append(
            f"shared_expert_ffn={cfg.shared_expert_ffn} (Qwen3-MoE has no shared expert; Qwen2-MoE has)"
        )
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Qwen3-MoE: " + "; ".join(problems))
    return ARCHITECTURES[0], dict(
        llama.decoder_fields(cfg), **qwen2.window_to_hf(cfg), **moe_fields(cfg), attention_bias=cfg.attn_bias
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Qwen3-MoE model described by ``cfg``: Qwen3's (dense layers included) and
    the experts in both layouts (the per-expert one is written)."""
    return qwen3.rules(cfg) + expert_rules()
