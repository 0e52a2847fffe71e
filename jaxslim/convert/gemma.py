"""Gemma (``GemmaForCausalLM``) <-> jaxslim, and what Gemma 2 and Gemma 3 share with it.

A Gemma is a Llama-style decoder with three differences, all ``ModelConfig`` flags:

* RMSNorm multiplies by ``1 + w`` (``norm_offset=1.0``: the stored scales are used as they are);
* token embeddings are multiplied by ``sqrt(d_model)`` (``embed_scale=True``);
* the gated FFN uses tanh-approximated GELU (``activation="gelu_tanh"``; the legacy
  ``hidden_act="gelu"`` of the first releases means the same, as in transformers).

Gemma 2 (:mod:`~jaxslim.convert.gemma2`) adds normalised sublayer outputs, soft-capping and
alternating local/global layers; Gemma 3 (:mod:`~jaxslim.convert.gemma3`) q/k norms and a separate
RoPE base for the local layers. Those two modules are data for the builders here
(:func:`sandwich_config`, :func:`sandwich_to_hf`), which read and write what every generation
after the first shares.

Each generation converts its causal LM, its ``*ForSequenceClassification`` (``score`` on the last
token that is not padding, without soft-capping) and its bare ``*Model``.
"""

from __future__ import annotations

from collections.abc import Collection

from jaxslim.config import ModelConfig
from jaxslim.convert import llama
from jaxslim.convert.rules import Rule, rule

ARCHITECTURES = ("GemmaForCausalLM", "GemmaForSequenceClassification", "GemmaModel")
MODEL_TYPE = "gemma"
HF_CONFIG = "GemmaConfig"
PREFIX = llama.PREFIX
IGNORE = llama.IGNORE

B = "stack.blocks.{i}."
L = "layers.{i}."
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh", "gelu_tanh": "gelu_tanh"}

# GemmaConfig's defaults (Gemma 2 and 3 share them), for config.json files that leave a field out
DEFAULTS = dict(
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    head_dim=256,
    tie_word_embeddings=True,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)


prefix_for = llama.prefix_for


def refuse_bidirectional(hf: dict, family: str) -> None:
    """Raises for ``use_bidirectional_attention`` (embedding models built on a Gemma)."""
    if hf.get("use_bidirectional_attention"):
        raise ValueError(
            f"{family} use_bidirectional_attention=True is not supported; jaxslim's Gemma is a causal decoder"
        )


def gemma_config(
    hf: dict, family: str, architecture: str, *, activation_field: str, rope: bool = True, **extra
) -> ModelConfig:
    """The :class:`ModelConfig` of any Gemma generation: Llama-style fields plus Gemma's flags."""
    refuse_bidirectional(hf, family)
    if hf.get("attention_bias"):
        raise ValueError(f"{family} attention_bias=True is not supported; released Gemmas have no biases")
    decoder = llama.decoder_config(
        hf,
        family,
        max_len=8192,
        norm_eps=1e-6,
        theta=10000.0,
        activations=ACTIVATIONS,
        activation_field=activation_field,
        rope=rope,
    )
    decoder.update(extra)
    return ModelConfig.llama(**llama.head_of(architecture, hf), **decoder, norm_offset=1.0, embed_scale=True)


def config_from_hf(hf: dict, architecture: str, tensor_names: Collection[str] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Gemma ``config.json``.

    Raises:
        ValueError: a feature jaxslim does not compute (named).
        KeyError: a required field is absent.
    """
    del tensor_names
    return gemma_config(
        {**DEFAULTS, **hf}, "Gemma", architecture, activation_field="hidden_act", hf_family=MODEL_TYPE
    )


def expressible(cfg: ModelConfig, family: str, **allowed) -> list[str]:
    """What ``cfg`` uses that the Gemma generation ``family`` cannot express; Gemma's own flags
    must be on."""
    problems = llama.expressible(
        cfg,
        family,
        activation="gelu_tanh",
        norm_offset=True,
        embed_scale=True,
        heads=llama.HEADS,
        **allowed,
    )
    if cfg.norm_offset != 1.0:
        problems.append(f"norm_offset={cfg.norm_offset} ({family}'s RMSNorm multiplies by 1 + w)")
    if not cfg.embed_scale:
        problems.append(f"embed_scale=False ({family} scales embeddings by sqrt(d_model))")
    return problems


def fields(cfg: ModelConfig, family: str) -> tuple[str, dict]:
    """The class name of ``cfg``'s head in the generation ``family`` (``"Gemma2"``) and the config
    fields every Gemma generation writes."""
    arch, extra = llama.head_to_hf(cfg, family)
    out = llama.decoder_fields(cfg)
    del out["hidden_act"]
    return arch, dict(out, **extra, attention_bias=False)


def config_to_hf(cfg: ModelConfig) -> tuple[str, dict]:
    """The HF architecture name and ``GemmaConfig`` arguments of ``cfg``.

    Raises:
        ValueError: ``cfg`` uses something a HF Gemma cannot express (all of it named).
    """
    problems = expressible(cfg, "Gemma")
    if problems:
        raise ValueError("cannot express this model as a Hugging Face Gemma: " + "; ".join(problems))
    arch, out = fields(cfg, "Gemma")
    return arch, dict(out, hidden_act="gelu_pytorch_tanh")


def rules(cfg: ModelConfig) -> list[Rule]:
    """The key map of a Gemma model described by ``cfg`` (Llama's names)."""
    return llama.rules(cfg)


def sandwich_rules(cfg: ModelConfig) -> list[Rule]:
    """Gemma 2 / 3's key map: Llama's names, except that ``post_attention_layernorm`` normalises the
    attention output and ``pre_feedforward_layernorm`` / ``post_feedforward_layernorm`` surround the
    FFN."""
    out = []
    for r in llama.rules(cfg):
        if r.hf == L + "post_attention_layernorm.weight":
            out += [
                rule(L + "post_attention_layernorm.weight", B + "post_attn_norm.scale"),
                rule(L + "pre_feedforward_layernorm.weight", B + "mlp_norm.scale"),
                rule(L + "post_feedforward_layernorm.weight", B + "post_mlp_norm.scale"),
            ]
        else:
            out.append(r)
    return out


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


def sandwich_config(hf: dict, family: str, architecture: str, *, local_every: int, **extra) -> ModelConfig:
    """The :class:`ModelConfig` of a Gemma 2 / 3 ``config.json`` (its family's defaults already
    merged in): Gemma's flags, normalised sublayer outputs, soft-capping, ``query_pre_attn_scalar``
    and local layers from ``layer_types`` (by default all but every ``local_every``-th)."""
    n = hf["num_hidden_layers"]
    default = ["sliding_attention" if (i + 1) % local_every else "full_attention" for i in range(n)]
    return gemma_config(
        hf,
        family,
        architecture,
        activation_field="hidden_activation",
        **layer_windows(hf, family, default),
        post_norms=True,
        attn_softcap=hf.get("attn_logit_softcapping"),
        logit_softcap=hf.get("final_logit_softcapping"),
        attn_scale_dim=hf["query_pre_attn_scalar"],
        **extra,
    )


def sandwich_to_hf(cfg: ModelConfig, family: str, class_family: str, **allowed) -> tuple[str, dict]:
    """The class name and config arguments of a Gemma 2 / 3 (``family`` names it in messages,
    ``class_family`` in class names) that also allows the flags in ``allowed``.

    Raises:
        ValueError: ``cfg`` uses something the generation cannot express (all of it named).
    """
    problems = expressible(
        cfg,
        family,
        sliding_window=True,
        sliding_layers=True,
        post_norms=True,
        attn_softcap=True,
        logit_softcap=True,
        attn_scale_dim=True,
        **allowed,
    )
    for flag in ("post_norms", *allowed):
        if isinstance(getattr(cfg, flag), bool) and not getattr(cfg, flag):
            problems.append(f"{flag}=False (every {family} has it)")
    if problems:
        raise ValueError(f"cannot express this model as a Hugging Face {family}: " + "; ".join(problems))
    arch, out = fields(cfg, class_family)
    return arch, dict(
        out,
        hidden_activation="gelu_pytorch_tanh",
        sliding_window=cfg.sliding_window,
        layer_types=layer_types(cfg),
        attn_logit_softcapping=cfg.attn_softcap,
        final_logit_softcapping=cfg.logit_softcap,
        query_pre_attn_scalar=cfg.attn_scale_dim if cfg.attn_scale_dim is not None else cfg.head_dim_,
    )
