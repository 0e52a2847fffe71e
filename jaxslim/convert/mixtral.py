"""Mixtral (``MixtralForCausalLM``) <-> jaxslim: key map and config mapping.

A Mixtral is a Llama whose every FFN is a mixture of SwiGLU experts: an fp32 softmax router over
all experts, the top ``num_experts_per_tok`` of them, their gates renormalised to sum to 1, and no
token ever dropped. In jaxslim that is ``ModelConfig.llama(moe=MoeConfig(router="topk",
dispatch="dropless", every=1, renormalize=True, ...))``; attention, norms and embeddings convert
exactly as for Llama (:func:`jaxslim.convert.llama.common_rules`).

Two weight layouts load:

* the original per-expert one of the hub checkpoints, which transformers 5 still writes by default
  (``save_pretrained(save_original_format=True)``): ``layers.{i}.block_sparse_moe.gate.weight``
  ``[E, d]`` and ``layers.{i}.block_sparse_moe.experts.{e}.w1 / w3 / w2.weight`` (gate and up
  ``[f, d]``, down ``[d, f]``);
* transformers 5's in-memory layout (``save_original_format=False``): ``layers.{i}.mlp.gate.weight``,
  ``layers.{i}.mlp.experts.gate_up_proj`` ``[E, 2f, d]`` (gate rows, then up rows) and
  ``layers.{i}.mlp.experts.down_proj`` ``[E, d, f]``.

:func:`~jaxslim.convert.save_hf` writes the original layout, which every tool reads. Training-only
settings without a Hugging Face field (z-loss, expert dropout) are not recorded.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig, MoeConfig
from jaxslim.convert import llama
from jaxslim.convert.rules import LINEAR, STACKED_GATE_UP, STACKED_LINEAR, Rule, rule

ARCHITECTURES = ("MixtralForCausalLM",)
MODEL_TYPE = "mixtral"
HF_CONFIG = "MixtralConfig"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

B = "stack.blocks.{i}.moe."
L = "layers.{i}."

# MixtralConfig's defaults, for config.json files that leave a field out
_DEFAULTS = dict(
    max_position_embeddings=4096 * 32,
    rms_norm_eps=1e-5,
    rope_theta=1e6,
    num_local_experts=8,
    num_experts_per_tok=2,
    router_jitter_noise=0.0,
    router_aux_loss_coef=0.001,
    bos_token_id=1,
    eos_token_id=2,
)
_NULLABLE = ("sliding_window", "bos_token_id", "eos_token_id", "pad_token_id")  # null means none


def prefix_for(architecture: str) -> str:
    """Backbone prefix that ``architecture`` writes."""
    del architecture
    return PREFIX


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Mixtral ``config.json``.

    Args:
        hf: the ``config.json`` dict.
        architecture: one of ``ARCHITECTURES``.
        tensor_names: unused (the config says everything).

    Raises:
        ValueError: a feature jaxslim does not compute (another activation, a RoPE type it lacks).
        KeyError: a required field is absent.

    Example:
        >>> cfg = config_from_hf({"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
        ...     "num_attention_heads": 2, "intermediate_size": 24, "num_local_experts": 4}, "MixtralForCausalLM")
        >>> cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.dispatch
        (4, 2, 'dropless')
    """
    del architecture, tensor_names
    hf = {**_DEFAULTS, **{k: v for k, v in hf.items() if v is not None or k in _NULLABLE}}
    decoder = llama.decoder_config(
        hf,
        "Mixtral",
        max_len=hf["max_position_embeddings"],
        norm_eps=hf["rms_norm_eps"],
        theta=_DEFAULTS["rope_theta"],
    )
    return ModelConfig.llama(
        **decoder,
        sliding_window=hf.get("sliding_window"),
        hf_family=None,
        moe=MoeConfig(
            num_experts=hf["num_local_experts"],
            top_k=hf["num_experts_per_tok"],
            router="topk",
            dispatch="dropless",
            every=1,
            offset=0,
            renormalize=True,
            jitter=float(hf["router_jitter_noise"]),
            aux_loss_coef=float(hf["router_aux_loss_coef"]),
            z_loss_coef=0.0,
        ),
    )


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``MixtralConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Mixtral cannot express; the message lists all of it.
    """
    problems = llama.expressible(cfg, "Mixtral", sliding_window=True, moe=True)
    m = cfg.moe
    if m is None:
        problems.append("moe=None (a dense model converts as a Llama)")
    else:
        if m.router != "topk":
            problems.append(
                f"moe.router={m.router!r} (Mixtral routes every token to its top-k experts; THOR's "
                "random experts have no Hugging Face equivalent)"
            )
        if m.dispatch != "dropless":
            problems.append(
                f"moe.dispatch={m.dispatch!r} (Mixtral never drops a token, and Hugging Face has no "
                "capacity limit; the same weights under dispatch='dropless' can be exported)"
            )
        if not m.renormalize:
            problems.append("moe.renormalize=False (Mixtral renormalises the top-k gates to sum to 1)")
        if m.every != 1:
            problems.append(
                f"moe.every={m.every} (every Mixtral layer is a mixture of experts; a config with dense "
                "layers between them has no Hugging Face Mixtral equivalent)"
            )
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Mixtral: " + "; ".join(problems))
    assert m is not None  # moe=None is one of the problems above
    return "MixtralForCausalLM", dict(
        llama.decoder_fields(cfg),
        sliding_window=cfg.sliding_window,
        num_local_experts=m.num_experts,
        num_experts_per_tok=m.top_k,
        router_jitter_noise=float(m.jitter),
        router_aux_loss_coef=float(m.aux_loss_coef),
    )


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Mixtral model described by ``cfg``: Llama's attention, norms and
    embeddings, and the experts in both layouts (the per-expert one is written)."""
    return llama.common_rules(cfg) + [
        rule(L + "block_sparse_moe.gate.weight", B + "router", transform=LINEAR),
        rule(L + "block_sparse_moe.experts.{e}.w1.weight", B + "wi", transform=LINEAR),
        rule(L + "block_sparse_moe.experts.{e}.w3.weight", B + "wu", transform=LINEAR),
        rule(L + "block_sparse_moe.experts.{e}.w2.weight", B + "wo", transform=LINEAR),
        # transformers 5's fused layout
        rule(L + "mlp.gate.weight", B + "router", transform=LINEAR, load_only=True),
        rule(L + "mlp.experts.gate_up_proj", B + "wi", B + "wu", transform=STACKED_GATE_UP, load_only=True),
        rule(L + "mlp.experts.down_proj", B + "wo", transform=STACKED_LINEAR, load_only=True),
    ]
