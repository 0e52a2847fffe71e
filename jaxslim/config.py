"""Frozen dataclass configs: model, device mesh, optimizer, checkpoints, data and a whole training run.

Every config validates itself in ``__post_init__`` and raises a ``ValueError`` that names the field,
the value it got and the values it accepts. Configs are hashable, so they can be static arguments of
``jax.jit``.

Example:
    >>> cfg = ModelConfig.bert(vocab_size=128, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    >>> cfg.head_dim
    8
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

ARCHS = ("bert", "gpt2", "llama")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
HEADS = ("none", "mlm", "lm", "cls")
DTYPES = ("float32", "bfloat16", "float16")


def _check_choice(owner: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name} must be one of {tuple(allowed)}, got {value!r}")


def _check_positive(owner: str, name: str, value, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}.{name} must be an integer {bound}, got {value!r}")


ROUTERS = ("topk", "stochastic")
DISPATCHES = ("capacity", "dropless")
GRANULARITIES = ("batch", "sequence", "token")
EVAL_MODES = ("random_token", "random_sequence", "fixed", "mean")


def _check_real(
    owner: str, name: str, value, *, low: float, high: float | None = None, open_low=False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if open_low else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"{owner}.{name} must be a number {bound}, got {value!r}")


@dataclass(frozen=True)
class MoeConfig:
    """Mixture-of-experts FFNs: which layers, how tokens are routed and what the router pays.

    Every ``every``-th block (those with ``layer % every == offset``; THOR and Switch use 2, Mixtral
    1) replaces its FFN by ``num_experts`` expert FFNs stacked on a leading ``exp`` axis.

    Routers (``router``):

    - ``"topk"``: token-choice top-k over an fp32 softmax (``top_k=1`` is Switch). Under
      ``dispatch="capacity"`` each expert takes at most ``capacity_factor * group_size /
      num_experts`` (at least ``min_capacity``) tokens per routing group; top-1 choices take
      precedence over top-2 choices, tokens in order (or by router confidence with
      ``batch_prioritized``); overflowing tokens pass through the residual. ``dispatch="dropless"``
      sorts the tokens by expert and runs grouped matmuls (``jax.lax.ragged_dot``): nothing drops.
    - ``"stochastic"``: THOR. Training draws a uniformly random expert per layer for the whole batch
      (``granularity="batch"``, the reference behaviour), per sequence or per token (uniform load
      by construction, for expert parallelism). Batch and sequence draws run the drawn expert's
      weights directly (never dropping); per-token draws go through ``dispatch``. Evaluation (``model.eval()``) follows ``eval_mode``:
      a random expert per token or per sequence, the fixed expert ``eval_expert``, or the mean of
      all experts. ``consistency_alpha > 0`` trains on two views of each batch with independent
      draws: ``CE(p1) + CE(p2) + alpha * symmetric KL(p1, p2)`` (the IWSLT recipe used 5.0).

    Attributes:
        num_experts / top_k: experts per MoE layer and experts per token (1 for stochastic).
        router / dispatch: see above.
        every / offset: MoE placement (``offset < every``).
        d_ff: hidden width of one expert (default: the model's ``d_ff``).
        train_capacity_factor / eval_capacity_factor / min_capacity / group_size: capacity dispatch;
            ``group_size`` tokens form one routing group (default: one sequence). As in flaxformer,
            the capacity does not grow with ``top_k``: top-2 at factor 1.25 holds at most 62.5% of
            the choices, so top-k routing with capacity wants a factor of about ``top_k``.
        batch_prioritized: fill capacity by descending top-1 router probability (V-MoE's BPR).
        renormalize: top-k gates sum to 1 (Mixtral); else they are the router probabilities.
        jitter: multiplicative router-input noise ``U(1 - jitter, 1 + jitter)`` in training.
        expert_dropout: dropout on the expert hidden units in training.
        aux_loss_coef / z_loss_coef: Switch load-balancing loss and ST-MoE router z-loss weights.
        granularity / eval_mode / eval_expert / consistency_alpha: stochastic experts, see above.
    """

    num_experts: int = 8
    top_k: int = 1
    router: Literal["topk", "stochastic"] = "topk"
    dispatch: Literal["capacity", "dropless"] = "capacity"
    every: int = 2
    offset: int = 0
    d_ff: int | None = None
    train_capacity_factor: float = 1.25
    eval_capacity_factor: float = 2.0
    min_capacity: int = 4
    group_size: int | None = None
    batch_prioritized: bool = False
    renormalize: bool = False
    jitter: float = 0.0
    expert_dropout: float = 0.0
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    granularity: Literal["batch", "sequence", "token"] = "batch"
    eval_mode: Literal["random_token", "random_sequence", "fixed", "mean"] = "random_sequence"
    eval_expert: int = 0
    consistency_alpha: float = 0.0

    def __post_init__(self):
        o = "MoeConfig"
        _check_positive(o, "num_experts", self.num_experts)
        _check_positive(o, "top_k", self.top_k)
        if self.top_k > self.num_experts:
            raise ValueError(f"{o}.top_k must be <= num_experts={self.num_experts}, got {self.top_k}")
        _check_choice(o, "router", self.router, ROUTERS)
        _check_choice(o, "dispatch", self.dispatch, DISPATCHES)
        _check_choice(o, "granularity", self.granularity, GRANULARITIES)
        _check_choice(o, "eval_mode", self.eval_mode, EVAL_MODES)
        if self.router == "stochastic" and self.top_k != 1:
            raise ValueError(
                f"{o}.top_k must be 1 for router='stochastic' (one random expert), got {self.top_k}"
            )
        _check_positive(o, "every", self.every)
        if not (isinstance(self.offset, int) and 0 <= self.offset < self.every):
            raise ValueError(f"{o}.offset must be an integer in [0, every={self.every}), got {self.offset!r}")
        if self.d_ff is not None:
            _check_positive(o, "d_ff", self.d_ff)
        for name in ("train_capacity_factor", "eval_capacity_factor"):
            _check_real(o, name, getattr(self, name), low=0, open_low=True)
        _check_positive(o, "min_capacity", self.min_capacity)
        if self.group_size is not None:
            _check_positive(o, "group_size", self.group_size)
        _check_real(o, "jitter", self.jitter, low=0, high=1, open_low=False)
        if self.jitter >= 1:
            raise ValueError(
                f"{o}.jitter must be < 1 (inputs are scaled by U(1 - jitter, 1 + jitter)), got {self.jitter}"
            )
        _check_real(o, "expert_dropout", self.expert_dropout, low=0, high=1)
        if self.expert_dropout >= 1:
            raise ValueError(f"{o}.expert_dropout must be < 1, got {self.expert_dropout}")
        for name in ("aux_loss_coef", "z_loss_coef", "consistency_alpha"):
            _check_real(o, name, getattr(self, name), low=0)
        if not (isinstance(self.eval_expert, int) and 0 <= self.eval_expert < self.num_experts):
            raise ValueError(
                f"{o}.eval_expert must be an integer in [0, num_experts={self.num_experts}), got {self.eval_expert!r}"
            )
        if self.consistency_alpha and self.router != "stochastic":
            raise ValueError(
                f"{o}.consistency_alpha needs router='stochastic' (THOR), got router={self.router!r}"
            )

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` holds experts."""
        return layer % self.every == self.offset

    def replace(self, **changes) -> MoeConfig:
        return dataclasses.replace(self, **changes)


ROPE_SCALINGS = ("linear", "dynamic", "yarn", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE position scaling for contexts longer than pre-training (Hugging Face's ``rope_type``).

    ``inv_freq`` below is the plain RoPE frequency ``theta ** (-2j / head_dim)``:

    * ``linear``: ``inv_freq / factor`` (position interpolation).
    * ``dynamic``: NTK-aware scaling recomputed from the longest position ``L`` of the batch:
      ``theta * (factor * L / max_len - (factor - 1)) ** (dim / (dim - 2))`` as the base once
      ``L > max_len``; plain RoPE below it.
    * ``yarn``: a ramp between interpolated (``/ factor``) and plain frequencies over the
      dimensions whose wavelengths fall between ``beta_fast`` and ``beta_slow`` rotations of
      ``original_max_len``; cos and sin scaled by ``attention_factor`` (default
      ``0.1 ln(factor) + 1``, or the ratio of the ``mscale`` / ``mscale_all_dim`` terms).
    * ``llama3``: wavelengths longer than ``original_max_len / low_freq_factor`` divided by
      ``factor``, shorter than ``original_max_len / high_freq_factor`` kept, a smooth blend between.

    Attributes:
        kind: one of ``ROPE_SCALINGS``.
        factor: the scaling factor (> 0).
        original_max_len: the pre-training context (yarn, llama3); None: ``ModelConfig.max_len``.
        low_freq_factor: llama3's low-frequency boundary.
        high_freq_factor: llama3's high-frequency boundary (> low_freq_factor).
        beta_fast: yarn's fast boundary (rotations).
        beta_slow: yarn's slow boundary (rotations).
        attention_factor: yarn's cos/sin scale; None derives it from ``factor`` (and ``mscale``).
        mscale: yarn's mscale (used with ``mscale_all_dim`` when ``attention_factor`` is None).
        mscale_all_dim: yarn's mscale_all_dim.
        truncate: yarn rounds the ramp boundaries to whole dimensions.

    Example:
        >>> RopeScaling("llama3", 8.0, original_max_len=8192).kind
        'llama3'
    """

    kind: Literal["linear", "dynamic", "yarn", "llama3"]
    factor: float
    original_max_len: int | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self):
        o = "RopeScaling"
        _check_choice(o, "kind", self.kind, ROPE_SCALINGS)
        if not (isinstance(self.factor, (int, float)) and self.factor > 0):
            raise ValueError(f"{o}.factor must be a number > 0, got {self.factor!r}")
        if self.original_max_len is not None:
            _check_positive(o, "original_max_len", self.original_max_len)
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(
                f"{o}: llama3 needs high_freq_factor > low_freq_factor > 0, got "
                f"{self.high_freq_factor} and {self.low_freq_factor}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """One transformer family: BERT encoders, GPT-2 and Llama decoders.

    The architecture fixes the block recipe:

    ========  ==========  ==================  ==========  ==========  ========
    arch      attention   norm                positions   MLP         head
    ========  ==========  ==================  ==========  ==========  ========
    bert      bidirect.   LayerNorm, post     learned     GELU        mlm/none
    gpt2      causal      LayerNorm, pre      learned     GELU(tanh)  lm
    llama     causal      RMSNorm, pre        RoPE        SwiGLU      lm
    ========  ==========  ==================  ==========  ==========  ========

    The fields after ``moe`` are feature flags on that recipe, off by default, which express the
    other families jaxslim converts (RoBERTa, DistilBERT, GPT-NeoX, Mistral, Qwen, Phi-3, Gemma,
    OLMo 2): one model class, so pruning, slimming, growth and sharding work on all of them.

    Attributes:
        arch: one of ``ARCHS``.
        vocab_size: token vocabulary size.
        d_model: residual width.
        n_layers: number of blocks.
        n_heads: query heads per layer (the maximum when ``layer_heads`` is set).
        d_ff: FFN hidden width (the maximum when ``layer_ffn`` is set).
        n_kv_heads: key/value heads (grouped-query attention); defaults to ``n_heads``.
        head_dim: width of one head; defaults to ``d_model // n_heads``.
        max_len: learned position table size (bert, gpt2).
        type_vocab_size: token type table size (bert).
        norm_eps: epsilon of LayerNorm / RMSNorm.
        rope_theta: RoPE base (llama, or any decoder with ``rotary=True``).
        activation: FFN activation (for llama, the gate activation of SwiGLU).
        tie_embeddings: the output head reuses the token embedding.
        head: ``"none"`` (hidden states only), ``"mlm"`` (BERT masked-LM head), ``"lm"``, or
            ``"cls"``: sequence classification into ``num_labels`` classes, from BERT's pooler
            output (with a bias) or, for a decoder, from the last token that is not
            ``pad_token_id`` (without one), as transformers' ``*ForSequenceClassification``.
        num_labels: classes of the ``"cls"`` head.
        shared_expert_ffn: width of a dense "shared expert" FFN that every expert layer adds to its
            experts' output (Qwen2-MoE); None: none.
        shared_expert_gate: the shared expert's output is scaled by ``sigmoid(x @ shared_gate)``.
        pad_positions: learned positions count the tokens that are not ``pad_token_id`` from
            ``pad_token_id + 1``, and padding sits at ``pad_token_id`` (RoBERTa, XLM-R).
        pooler: BERT's tanh pooler over the first token.
        attn_bias: biases on q/k/v/o projections.
        mlp_bias: biases on FFN projections.
        layer_heads: per-layer query-head counts of a slimmed model (unscanned only).
        layer_ffn: per-layer FFN widths of a slimmed model (unscanned only).
        scan_layers: stack the blocks on a leading ``layers`` axis and run them with ``lax.scan``.
        remat: rematerialise each block in the backward pass.
        dtype: compute dtype; ``param_dtype``: storage dtype of the weights.
        pad_token_id: padding token of the tokenizer, kept for conversion.
        moe: mixture-of-experts FFNs (:class:`MoeConfig`); None for a dense model.
        rope_scaling: RoPE position scaling (:class:`RopeScaling`, llama); None for plain RoPE.
        sliding_window: causal layers listed in ``sliding_layers`` attend only to the last
            ``sliding_window`` positions (the query's own included); None: every earlier token.
        sliding_layers: indices of the layers with the sliding window; None: all of them.
        attn_out_bias: a bias on the attention output projection; None follows ``attn_bias``
            (Qwen2 has q/k/v biases and none on the output).
        qk_norm: RMSNorm (over ``head_dim``, one scale shared by all heads) on queries and keys
            before RoPE, as in Qwen3.
        hf_family: the Hugging Face family a converted model came from (``"qwen2"``,
            ``"mistral"``, ...), so conversion writes the same architecture back; None: the
            architecture's own (Llama for ``arch="llama"``).
        bos_token_id: beginning-of-sequence token, kept for conversion.
        eos_token_id: end-of-sequence token(s), kept for conversion (Llama 3.1 has three).
        partial_rotary_factor: the fraction of each head's dimensions that RoPE rotates (the
            leading ``int(head_dim * factor)``; Phi-3.5 / Phi-4-mini, Pythia).
        norm_offset: RMSNorm multiplies by ``norm_offset + scale`` (Gemma stores ``scale`` around
            0 and uses 1); the scales of a fresh model start at ``1 - norm_offset``.
        embed_scale: token embeddings are multiplied by ``sqrt(d_model)`` (Gemma).
        post_norms: each block also normalises the attention and FFN outputs before adding them
            to the residual (Gemma 2 / 3: ``post_attn_norm``, ``post_mlp_norm``).
        attn_softcap: attention scores become ``c * tanh(score / c)`` before masking (Gemma 2).
        logit_softcap: output logits become ``c * tanh(logit / c)`` (Gemma 2).
        attn_scale_dim: scores are scaled by ``attn_scale_dim ** -0.5`` instead of
            ``head_dim ** -0.5`` (Gemma 2 / 3's ``query_pre_attn_scalar``).
        input_norms: the sublayers read the normalised residual stream (pre-norm); False: they
            read it as it is and only ``post_norms`` normalise (OLMo 2).
        qk_norm_scope: ``"head"``: each head's query / key normalised over ``head_dim`` with one
            shared scale (Qwen3, Gemma 3); ``"layer"``: all heads' queries (keys) normalised together
            with a scale per head and dimension (OLMo 2).
        rotary: RoPE instead of a learned position table; None: the architecture's own (llama
            only). A GPT-2-style decoder with ``rotary=True`` is GPT-NeoX / Pythia.
        parallel_residual: attention and FFN both read the block input and are added together,
            ``x + attn(norm1(x)) + mlp(norm2(x))`` (GPT-NeoX / Pythia).
        local_rope_theta: RoPE base of the sliding-window layers, which then use plain RoPE while
            the others use ``rope_theta`` and ``rope_scaling`` (Gemma 3); None: one RoPE for all.
    """

    arch: Literal["bert", "gpt2", "llama"]
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    max_len: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"
    tie_embeddings: bool = True
    head: Literal["none", "mlm", "lm"] = "none"
    pooler: bool = False
    attn_bias: bool = True
    mlp_bias: bool = True
    layer_heads: tuple[int, ...] | None = None
    layer_ffn: tuple[int, ...] | None = None
    scan_layers: bool = True
    remat: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    param_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    pad_token_id: int | None = None
    moe: MoeConfig | None = None
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] | None = None
    attn_out_bias: bool | None = None
    qk_norm: bool = False
    hf_family: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    partial_rotary_factor: float = 1.0
    norm_offset: float = 0.0
    embed_scale: bool = False
    post_norms: bool = False
    attn_softcap: float | None = None
    logit_softcap: float | None = None
    attn_scale_dim: float | None = None
    local_rope_theta: float | None = None
    input_norms: bool = True
    qk_norm_scope: Literal["head", "layer"] = "head"
    rotary: bool | None = None
    parallel_residual: bool = False
    num_labels: int = 2
    pad_positions: bool = False
    shared_expert_ffn: int | None = None
    shared_expert_gate: bool = True

    def __post_init__(self):
        o = "ModelConfig"
        _check_choice(o, "arch", self.arch, ARCHS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
            _check_positive(o, name, getattr(self, name))
        _check_positive(o, "type_vocab_size", self.type_vocab_size, allow_zero=True)
        _check_choice(o, "activation", self.activation, ACTIVATIONS)
        _check_choice(o, "head", self.head, HEADS)
        _check_choice(o, "dtype", self.dtype, DTYPES)
        _check_choice(o, "param_dtype", self.param_dtype, DTYPES)
        if self.n_kv_heads is not None:
            _check_positive(o, "n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(f"{o}.n_kv_heads must divide n_heads={self.n_heads}, got {self.n_kv_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"{o}.n_heads must divide d_model={self.d_model} when head_dim is not given, "
                f"got {self.n_heads}"
            )
        if self.head_dim is not None:
            _check_positive(o, "head_dim", self.head_dim)
        if not (isinstance(self.partial_rotary_factor, (int, float)) and 0 < self.partial_rotary_factor <= 1):
            raise ValueError(
                f"{o}.partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor!r}"
            )
        if self.rope and (self.rotary_dim % 2 or self.rotary_dim == 0):
            raise ValueError(
                f"{o}: RoPE needs an even, non-zero number of rotated dimensions, got "
                f"int(head_dim={self.head_dim_} * partial_rotary_factor={self.partial_rotary_factor}) = "
                f"{self.rotary_dim}"
            )
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ValueError(f"{o}.norm_eps must be a float > 0, got {self.norm_eps!r}")
        if self.head == "mlm" and self.arch != "bert":
            raise ValueError(f"{o}.head='mlm' needs arch='bert', got arch={self.arch!r}")
        if self.pooler and self.arch != "bert":
            raise ValueError(f"{o}.pooler=True needs arch='bert', got arch={self.arch!r}")
        for name, full in (("layer_heads", self.n_heads), ("layer_ffn", self.d_ff)):
            widths = getattr(self, name)
            if widths is None:
                continue
            if not isinstance(widths, tuple) or len(widths) != self.n_layers:
                raise ValueError(
                    f"{o}.{name} must be a tuple of n_layers={self.n_layers} integers, got {widths!r}"
                )
            for w in widths:
                _check_positive(o, name + " entry", w, allow_zero=True)
                if w > full:
                    raise ValueError(f"{o}.{name} entries must be <= {full}, got {widths!r}")
            if self.scan_layers:
                raise ValueError(
                    f"{o}.{name} (per-layer widths) needs scan_layers=False: a scanned stack has "
                    "one width for every layer"
                )
        if self.layer_heads is not None:
            group = self.n_heads // self.kv_heads
            bad = [h for h in self.layer_heads if h % group]
            if bad:
                raise ValueError(
                    f"{o}.layer_heads entries must be multiples of the query group size {group} "
                    f"(n_heads / n_kv_heads), got {self.layer_heads!r}"
                )
        if self.moe is not None:
            if not isinstance(self.moe, MoeConfig):
                raise ValueError(f"{o}.moe must be a MoeConfig or None, got {self.moe!r}")
            if not self.uniform:
                raise ValueError(
                    f"{o}.moe cannot be combined with per-layer widths (layer_heads / layer_ffn)"
                )
            if self.scan_layers and self.n_layers % self.moe.every:
                raise ValueError(
                    f"{o}: a scanned stack runs groups of moe.every={self.moe.every} layers, so it must "
                    f"divide n_layers={self.n_layers} (or set scan_layers=False)"
                )
            if not any(self.moe.is_moe_layer(i) for i in range(self.n_layers)):
                raise ValueError(
                    f"{o}: moe.every={self.moe.every}, moe.offset={self.moe.offset} put experts in none of "
                    f"the {self.n_layers} layers"
                )

        self._check_attention_variants()

    def _check_attention_variants(self) -> None:
        o = "ModelConfig"
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, RopeScaling):
                raise ValueError(f"{o}.rope_scaling must be a RopeScaling or None, got {self.rope_scaling!r}")
            if not self.rope:
                raise ValueError(f"{o}.rope_scaling needs RoPE (arch='llama'), got arch={self.arch!r}")
        if self.sliding_window is not None:
            _check_positive(o, "sliding_window", self.sliding_window)
            if not self.causal:
                raise ValueError(f"{o}.sliding_window needs a causal decoder, got arch={self.arch!r}")
        if self.sliding_layers is not None:
            if self.sliding_window is None:
                raise ValueError(f"{o}.sliding_layers needs sliding_window, which is None")
            layers = self.sliding_layers
            if not isinstance(layers, tuple) or any(
                not isinstance(i, int) or not 0 <= i < self.n_layers for i in layers
            ):
                raise ValueError(
                    f"{o}.sliding_layers must be a tuple of layer indices in [0, n_layers={self.n_layers}), "
                    f"got {layers!r}"
                )
        for name in ("attn_softcap", "logit_softcap", "attn_scale_dim", "local_rope_theta"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{o}.{name} must be a number > 0 or None, got {value!r}")
        if self.local_rope_theta is not None and (not self.rope or self.sliding_window is None):
            raise ValueError(
                f"{o}.local_rope_theta is the RoPE base of sliding-window layers: it needs arch='llama' "
                f"and a sliding_window, got arch={self.arch!r}, sliding_window={self.sliding_window}"
            )
        if self.norm_offset and not self.rms_norm:
            raise ValueError(f"{o}.norm_offset needs RMSNorm (arch='llama'), got arch={self.arch!r}")
        _check_choice(o, "qk_norm_scope", self.qk_norm_scope, ("head", "layer"))
        _check_positive(o, "num_labels", self.num_labels)
        if self.shared_expert_ffn is not None:
            _check_positive(o, "shared_expert_ffn", self.shared_expert_ffn)
            if self.moe is None:
                raise ValueError(
                    f"{o}.shared_expert_ffn needs moe (it is added to expert layers), got moe=None"
                )
        if self.pad_positions and (self.rope or self.pad_token_id is None):
            raise ValueError(
                f"{o}.pad_positions=True needs learned positions and a pad_token_id, got rope={self.rope}, "
                f"pad_token_id={self.pad_token_id}"
            )
        if self.head == "cls" and self.arch == "bert" and not self.pooler:
            raise ValueError(f"{o}.head='cls' on a BERT classifies the pooler output: it needs pooler=True")
        if self.rotary and not self.causal:
            raise ValueError(
                f"{o}.rotary=True needs a causal decoder (gpt2 or llama), got arch={self.arch!r}"
            )
        if self.parallel_residual and (not self.pre_norm or self.post_norms or not self.input_norms):
            raise ValueError(
                f"{o}.parallel_residual=True needs a plain pre-norm block (gpt2 or llama, no post_norms, "
                "input_norms=True)"
            )
        if not self.input_norms and not (self.pre_norm and self.post_norms):
            raise ValueError(
                f"{o}.input_norms=False needs post_norms=True on a pre-norm architecture (gpt2 or llama): "
                "some norm must keep the residual stream in scale"
            )
        if self.post_norms and not self.pre_norm:
            raise ValueError(f"{o}.post_norms needs a pre-norm block (gpt2 or llama), got arch={self.arch!r}")
        if self.qk_norm and not self.rms_norm:
            raise ValueError(f"{o}.qk_norm=True needs RMSNorm (arch='llama'), got arch={self.arch!r}")
        eos = self.eos_token_id
        if eos is not None and not isinstance(eos, int):
            if not (isinstance(eos, tuple) and eos and all(isinstance(i, int) for i in eos)):
                raise ValueError(
                    f"{o}.eos_token_id must be an int, a non-empty tuple of ints or None, got {eos!r}"
                )

    # -- derived -------------------------------------------------------------------------------
    def window_of(self, layer: int) -> int:
        """The sliding window of ``layer``; 0 when it attends to every earlier token."""
        if self.sliding_window is None:
            return 0
        if self.sliding_layers is None or layer in self.sliding_layers:
            return self.sliding_window
        return 0

    @property
    def rotary_dim(self) -> int:
        """The leading dimensions of each head that RoPE rotates."""
        return int(self.head_dim_ * self.partial_rotary_factor)

    @property
    def out_bias(self) -> bool:
        """Whether the attention output projection has a bias."""
        return self.attn_bias if self.attn_out_bias is None else self.attn_out_bias

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def causal(self) -> bool:
        return self.arch != "bert"

    @property
    def pre_norm(self) -> bool:
        return self.arch != "bert"

    @property
    def rms_norm(self) -> bool:
        return self.arch == "llama"

    @property
    def rope(self) -> bool:
        return self.arch == "llama" if self.rotary is None else self.rotary

    @property
    def gated_mlp(self) -> bool:
        return self.arch == "llama"

    def heads_in(self, layer: int) -> int:
        """Query heads of ``layer``."""
        return self.n_heads if self.layer_heads is None else self.layer_heads[layer]

    def kv_heads_in(self, layer: int) -> int:
        """Key/value heads of ``layer`` (the query group size stays constant)."""
        return self.heads_in(layer) * self.kv_heads // self.n_heads

    def ffn_in(self, layer: int) -> int:
        """FFN hidden width of ``layer``."""
        return self.d_ff if self.layer_ffn is None else self.layer_ffn[layer]

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` holds mixture-of-experts FFNs."""
        return self.moe is not None and self.moe.is_moe_layer(layer)

    @property
    def layer_period(self) -> int:
        """Layers per scanned group: ``moe.every`` for a mixture of experts (dense and expert blocks
        differ, so the scan runs over groups of them), else 1."""
        return 1 if self.moe is None else self.moe.every

    @property
    def expert_ffn(self) -> int:
        """Hidden width of one expert FFN."""
        return (self.moe.d_ff if self.moe is not None and self.moe.d_ff else None) or self.d_ff

    @property
    def uniform(self) -> bool:
        """Every layer has the full head count and FFN width."""
        return self.layer_heads is None and self.layer_ffn is None

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def bert(cls, **kw) -> ModelConfig:
        """BERT encoder defaults (post-LN, GELU, eps 1e-12); sizes from ``kw``."""
        kw = {"norm_eps": 1e-12, "activation": "gelu", "pooler": True, **kw}
        return cls(arch="bert", **kw)

    @classmethod
    def gpt2(cls, **kw) -> ModelConfig:
        """GPT-2 decoder defaults (pre-LN, tanh GELU, tied LM head)."""
        kw = {"norm_eps": 1e-5, "activation": "gelu_tanh", "head": "lm", "max_len": 1024, **kw}
        return cls(arch="gpt2", **kw)

    @classmethod
    def llama(cls, **kw) -> ModelConfig:
        """Llama decoder defaults (RMSNorm, RoPE, SwiGLU, no biases)."""
        kw = {
            "norm_eps": 1e-6,
            "activation": "silu",
            "head": "lm",
            "attn_bias": False,
            "mlp_bias": False,
            "tie_embeddings": False,
            **kw,
        }
        return cls(arch="llama", **kw)

    @classmethod
    def minilm_l6(cls, **kw) -> ModelConfig:
        """all-MiniLM-L6-v2: 6 layers, width 384, 12 heads, FFN 1536."""
        return cls.bert(
            vocab_size=30522, d_model=384, n_layers=6, n_heads=12, d_ff=1536, pad_token_id=0, **kw
        )

    @classmethod
    def gpt2_small(cls, **kw) -> ModelConfig:
        """GPT-2 small: 12 layers, width 768, 12 heads."""
        return cls.gpt2(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, **kw)


MESH_AXES = ("data", "fsdp", "tensor", "expert")

# Logical axis name -> mesh axes, in priority order. Held as data so a user can swap the layout
# without touching a layer. `None` means replicated.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...] | str | None], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("vocab", "tensor"),
    ("exp", "expert"),
    ("layers", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_exp", "expert"),
    ("act_vocab", "tensor"),
)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh with axes ``data``, ``fsdp``, ``tensor``, ``expert``.

    One size may be ``-1``: it takes whatever devices the others leave. ``axis_type`` is ``"auto"``
    (GSPMD propagation, the default) or ``"explicit"`` (sharding in types).

    Example:
        >>> MeshConfig(data=2, tensor=-1).sizes(8)
        (2, 1, 4, 1)
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1
    axis_type: Literal["auto", "explicit"] = "auto"
    rules: tuple[tuple[str, tuple[str, ...] | str | None], ...] = field(default=DEFAULT_RULES)

    def __post_init__(self):
        sizes = [getattr(self, a) for a in MESH_AXES]
        for a, s in zip(MESH_AXES, sizes, strict=False):
            if not isinstance(s, int) or isinstance(s, bool) or (s < 1 and s != -1):
                raise ValueError(f"MeshConfig.{a} must be a positive integer or -1, got {s!r}")
        if sizes.count(-1) > 1:
            raise ValueError(
                f"MeshConfig: at most one axis may be -1 (fill), got {dict(zip(MESH_AXES, sizes, strict=False))}"
            )
        _check_choice("MeshConfig", "axis_type", self.axis_type, ("auto", "explicit"))
        for rule in self.rules:
            if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
                raise ValueError(f"MeshConfig.rules entries must be (logical_name, mesh_axes), got {rule!r}")
            axes = (rule[1],) if isinstance(rule[1], str) else (rule[1] or ())
            unknown = [a for a in axes if a not in MESH_AXES]
            if unknown:
                raise ValueError(
                    f"MeshConfig.rules maps {rule[0]!r} to unknown mesh axes {unknown}; "
                    f"mesh axes are {MESH_AXES}"
                )

    def sizes(self, n_devices: int) -> tuple[int, ...]:
        sizes = [getattr(self, a) for a in MESH_AXES]
        fixed = 1
        for s in sizes:
            fixed *= s if s != -1 else 1
        if -1 in sizes:
            if n_devices % fixed:
                raise ValueError(
                    f"MeshConfig {dict(zip(MESH_AXES, sizes, strict=False))}: {n_devices} devices are not divisible "
                    f"by the fixed axes' product {fixed}"
                )
            sizes[sizes.index(-1)] = n_devices // fixed
        elif fixed != n_devices:
            raise ValueError(
                f"MeshConfig {dict(zip(MESH_AXES, sizes, strict=False))} needs {fixed} devices, {n_devices} are available"
            )
        return tuple(sizes)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule, gradient noise and AGVM.

    Attributes:
        name: ``"adamw"``, ``"lamb"`` (trust ratio per layer of a scanned stack and per expert),
            ``"lars"`` or ``"sgd"`` (``b1`` is the momentum of SGD and LARS).
        lr: peak learning rate.
        warmup_steps: linear warm-up length.
        decay: the schedule after the warm-up: ``"cosine"``, ``"linear"``, ``"constant"``,
            ``"wsd"`` (stable, then ``decay_shape`` over the last ``decay_fraction`` of the steps),
            ``"infinite"`` (``decay_shape`` cooldown over ``cooldown_steps`` to
            ``constant_lr_ratio * lr``, constant, and an exponential anneal over the last
            ``decay_fraction`` of the steps; 0 keeps it constant) or ``"repeated_cosine"`` (cycles of
            ``cycle_steps``, each re-warmed over ``warmup_steps``).
        final_lr_ratio: final learning rate as a fraction of ``lr``.
        weight_decay: decoupled weight decay (matrices only; biases and norm scales are excluded).
        clip_norm: global gradient-norm clip; 0 disables it.
        lamb_preset: ``""`` (LAMB from the fields here) or a reference's recipe: ``"tf_addons"``,
            ``"apex"``, ``"nvlamb"``, ``"deepspeed"``, ``"optax"``: eps, trust mask, clamp, bias
            correction and apex's clip to 1.0 come from the preset; lr, betas, weight decay, a
            ``trust_min`` / ``trust_max`` set here and ``clip_norm`` (applied outside) from the fields.
        trust_mask: which params get the LAMB / LARS trust ratio: ``"decay"`` (those with weight
            decay, as TF-addons) or ``"all"``.
        trust_min / trust_max: clamp of the trust ratio; 0 means no bound.
        trust_coefficient: LARS's trust coefficient.
        bias_correction: LAMB's Adam bias correction.
        noise_eta / noise_gamma: gradient noise of variance ``eta / (1 + t)^gamma`` (0: none).
        agvm_every: AGVM measures the gradient variance every this many steps (0: off).
        agvm_start: the first step AGVM measures at.
        agvm_modules: regular expressions over parameter paths, one AGVM module each (a parameter
            belongs to the first that matches; the first is the reference module, the backbone).
    """

    name: Literal["adamw", "lamb", "lars", "sgd"] = "adamw"
    lr: float = 3e-4
    warmup_steps: int = 100
    decay: Literal["cosine", "linear", "constant", "wsd", "infinite", "repeated_cosine"] = "cosine"
    final_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    decay_shape: str = ""
    decay_fraction: float = 0.2
    cooldown_steps: int = 0
    constant_lr_ratio: float = 0.5
    cycle_steps: int = 0
    lamb_preset: Literal["", "tf_addons", "apex", "nvlamb", "deepspeed", "optax"] = ""
    trust_mask: Literal["decay", "all"] = "decay"
    trust_min: float = 0.0
    trust_max: float = 0.0
    trust_coefficient: float = 0.001
    bias_correction: bool = True
    noise_eta: float = 0.0
    noise_gamma: float = 0.55
    agvm_every: int = 0
    agvm_start: int = 0
    agvm_modules: tuple[str, ...] = ("embed", "attn", "mlp|moe", ".")

    def __post_init__(self):
        o = "OptimConfig"
        _check_choice(o, "name", self.name, ("adamw", "lamb", "lars", "sgd"))
        _check_choice(
            o, "decay", self.decay, ("cosine", "linear", "constant", "wsd", "infinite", "repeated_cosine")
        )
        _check_choice(
            o, "lamb_preset", self.lamb_preset, ("", "tf_addons", "apex", "nvlamb", "deepspeed", "optax")
        )
        _check_choice(o, "trust_mask", self.trust_mask, ("decay", "all"))
        shapes = {"wsd": ("", "linear", "cosine", "sqrt"), "infinite": ("", "cosine", "linear", "inv_sqrt")}
        _check_choice(o, "decay_shape", self.decay_shape, shapes.get(self.decay, ("",)))
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"{o}.lr must be a float > 0, got {self.lr!r}")
        _check_positive(o, "warmup_steps", self.warmup_steps, allow_zero=True)
        for name in ("final_lr_ratio", "b1", "b2", "decay_fraction", "constant_lr_ratio"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"{o}.{name} must be in [0, 1], got {v!r}")
        for name in (
            "eps",
            "weight_decay",
            "clip_norm",
            "trust_min",
            "trust_max",
            "trust_coefficient",
            "noise_eta",
            "noise_gamma",
        ):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"{o}.{name} must be a float >= 0, got {v!r}")
        if self.trust_min and self.trust_max and self.trust_min > self.trust_max:
            raise ValueError(
                f"{o}.trust_min={self.trust_min!r} must not exceed {o}.trust_max={self.trust_max!r} "
                "(the trust-ratio clamp)"
            )
        for name in ("cooldown_steps", "cycle_steps", "agvm_every", "agvm_start"):
            _check_positive(o, name, getattr(self, name), allow_zero=True)
        if self.decay == "repeated_cosine" and self.cycle_steps <= self.warmup_steps:
            raise ValueError(
                f"{o}.cycle_steps={self.cycle_steps} must exceed warmup_steps={self.warmup_steps} "
                'with decay="repeated_cosine"'
            )
        if not isinstance(self.agvm_modules, tuple) or not self.agvm_modules:
            raise ValueError(
                f"{o}.agvm_modules must be a non-empty tuple of regular expressions, got {self.agvm_modules!r}"
            )
        for pattern in self.agvm_modules:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(f"{o}.agvm_modules: {pattern!r} is not a regular expression ({e})") from e


@dataclass(frozen=True)
class CheckpointConfig:
    """When and how checkpoints are written.

    Attributes:
        every: save every this many steps (and at the end); 0 disables checkpointing.
        keep: keep the last this many checkpoints.
        keep_every: also keep every checkpoint whose step is a multiple of this (0: none).
        async_save: write in the background while training continues.
        compression: ``"none"`` (plain Orbax), ``"excp"`` (ExCP: residual against the previous
            reconstructed checkpoint, weight-momentum shrinking, k-means codes; lossy) or
            ``"lossless"`` (XOR residual in byte planes; bit-exact). Training resumes from either.
        weight_bits: bits of a weight-residual code with ``"excp"`` (2..8).
        moment_bits: bits of an Adam-moment code with ``"excp"`` (2..8).
        keyframe_bits: bits of a keyframe's weight codes with ``"excp"`` (2..8).
        keyframe_every: a full keyframe every this many saves; a restore applies at most
            ``keyframe_every - 1`` residuals.
        alpha: ExCP's weight-threshold scale ``min(2.5, alpha / sqrt(mean(v)))`` numerator.
        beta: ExCP's momentum threshold, ``beta * mean(|m|)``.
        moment_fill: what a lossy restore puts where Adam's second moment was dropped:
            ``"factored"`` (a rank-1 log-domain estimate), ``"scalar"`` or ``"zero"`` (see
            ``jaxslim.checkpoint.CodecConfig.moment_fill``).
    """

    every: int = 100
    keep: int = 3
    keep_every: int = 0
    async_save: bool = True
    compression: str = "none"
    weight_bits: int = 2
    moment_bits: int = 2
    keyframe_bits: int = 8
    keyframe_every: int = 5
    alpha: float = 5e-5
    beta: float = 2.0
    moment_fill: str = "factored"

    def __post_init__(self):
        o = "CheckpointConfig"
        _check_positive(o, "every", self.every, allow_zero=True)
        _check_positive(o, "keep", self.keep)
        _check_positive(o, "keep_every", self.keep_every, allow_zero=True)
        modes = ("none", "excp", "lossless")
        if self.compression not in modes:
            raise ValueError(f"{o}.compression must be one of {modes}, got {self.compression!r}")
        for name in ("weight_bits", "moment_bits", "keyframe_bits"):
            b = getattr(self, name)
            if not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8:
                raise ValueError(f"{o}.{name} must be an integer from 2 to 8, got {b!r}")
        _check_positive(o, "keyframe_every", self.keyframe_every)
        for name in ("alpha", "beta"):
            x = getattr(self, name)
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not 0 <= x < float("inf"):
                raise ValueError(f"{o}.{name} must be a finite number >= 0, got {x!r}")
        fills = ("factored", "scalar", "zero")
        if self.moment_fill not in fills:
            raise ValueError(f"{o}.moment_fill must be one of {fills}, got {self.moment_fill!r}")


# 256 byte symbols plus the three special tokens of a trained byte-level BPE: a smaller vocabulary
# could not encode every byte.
MIN_BPE_VOCAB = 259
# Token ids are stored on disk as uint32 at most; 2**20 is far beyond any useful trained BPE.
MAX_BPE_VOCAB = 1 << 20


def _is_int(value: Any) -> bool:
    # bool is an int subclass; a flag passed where a count belongs is a mistake worth catching.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"DataConfig.{name} must be an integer {bound}, got {value!r}")


def _check_str(name: str, value: Any, *, optional: bool) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        what = "a non-empty string" + (" or None" if optional else "")
        raise ValueError(f"DataConfig.{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Text data for training: corpus, tokenizer, packing, split, order and MLM masking.

    Attributes:
        corpus: an embedded corpus (``"shakespeare"``, ``"kjv"``), a local path (a ``.txt``,
            ``.jsonl`` or ``.json`` file, or a folder of them), or a Hugging Face hub dataset
            written ``"hf:owner/name"`` or ``"hf:owner/name:config"`` (needs hub access).
        seq_len: tokens a model sees per sequence. Causal LM batches hold ``seq_len + 1`` tokens
            (inputs and shifted targets); MLM batches hold ``seq_len``.
        batch_size: global batch size in sequences, summed over all hosts.
        tokenizer: path to a ``tokenizer.json`` (or a folder holding one) to use as is; ``None``
            trains a byte-level BPE on the training split (cached).
        bpe_vocab_size: vocabulary size of the trained BPE (ignored when ``tokenizer`` is set).
        val_fraction: share of the text (by characters, whole documents) held out for validation.
        split_seed: seed of the document-level train / validation split. Kept apart from ``seed``
            so that runs with different shuffles are evaluated on the same held-out text.
        seed: seed of the per-epoch shuffle and of MLM masking.
        mlm: masked-LM batches (BERT 80/10/10 masking) instead of causal-LM batches.
        mlm_probability: share of non-special tokens selected for masking.
        text_field: record field holding the text in ``.jsonl`` / ``.json`` files and hub datasets.
        cache_dir: root of jaxslim's data cache; ``None`` uses ``$JAXSLIM_CACHE``, else
            ``$XDG_CACHE_HOME/jaxslim``, else ``~/.cache/jaxslim``.
        manifest: a dataset made by ``jaxslim-data prepare`` (its ``manifest.json`` or directory).
            When set, training and evaluation read its ``train`` and ``val`` shards from disk and
            ``corpus``, ``bpe_vocab_size``, ``val_fraction``, ``split_seed`` and ``text_field`` are
            not used (the prepared split is the split); ``tokenizer``, when also set, must be the
            manifest's tokenizer.
        prefetch: batches of prepared data built ahead on a background thread (0: none).
        verify_shards: hash every prepared shard against the manifest before training (reads the
            whole corpus once; ``jaxslim-data verify`` does the same offline).
    """

    corpus: str = "shakespeare"
    seq_len: int = 256
    batch_size: int = 32
    tokenizer: str | None = None
    bpe_vocab_size: int = 8192
    val_fraction: float = 0.05
    split_seed: int = 0
    seed: int = 0
    mlm: bool = False
    mlm_probability: float = 0.15
    text_field: str = "text"
    cache_dir: str | None = None
    manifest: str | None = None
    prefetch: int = 2
    verify_shards: bool = False

    def __post_init__(self) -> None:
        _check_str("corpus", self.corpus, optional=False)
        _check_int("seq_len", self.seq_len, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_str("tokenizer", self.tokenizer, optional=True)
        _check_int("bpe_vocab_size", self.bpe_vocab_size, MIN_BPE_VOCAB, MAX_BPE_VOCAB)
        if not _is_real(self.val_fraction) or not 0 < self.val_fraction <= 0.5:
            raise ValueError(
                f"DataConfig.val_fraction must be a number in (0, 0.5], got {self.val_fraction!r}"
            )
        _check_int("split_seed", self.split_seed, 0)
        _check_int("seed", self.seed, 0)
        if not isinstance(self.mlm, bool):
            raise ValueError(f"DataConfig.mlm must be True or False, got {self.mlm!r}")
        if not _is_real(self.mlm_probability) or not 0 < self.mlm_probability < 1:
            raise ValueError(
                f"DataConfig.mlm_probability must be a number in (0, 1), got {self.mlm_probability!r}"
            )
        _check_str("text_field", self.text_field, optional=False)
        _check_str("cache_dir", self.cache_dir, optional=True)
        _check_str("manifest", self.manifest, optional=True)
        _check_int("prefetch", self.prefetch, 0, 64)
        if not isinstance(self.verify_shards, bool):
            raise ValueError(f"DataConfig.verify_shards must be True or False, got {self.verify_shards!r}")

    @property
    def sequence_width(self) -> int:
        """Tokens per packed sequence: ``seq_len + 1`` for causal LM, ``seq_len`` for MLM."""
        return self.seq_len if self.mlm else self.seq_len + 1


def _default_model() -> ModelConfig:
    # a small GPT-2; the vocabulary follows the tokenizer when the run starts
    return ModelConfig.gpt2(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=256)


@dataclass(frozen=True)
class PruneConfig:
    """Gradual pruning during training (:func:`jaxslim.prune.prune` around the optimizer).

    Masks follow Zhu & Gupta's cubic schedule from ``initial_sparsity`` at ``begin_step`` to
    ``sparsity`` at ``begin_step + num_updates * update_every``, updated every ``update_every``
    steps; pruned weights stay exactly zero. Per-layer sparsity is logged at every logged step.

    Attributes:
        kind: ``"none"`` (no pruning), ``"unstructured"``, ``"nm"`` (N:M along each kernel's
            contraction axis), ``"heads"``, ``"neurons"`` or ``"channels"``.
        sparsity: final fraction pruned, in ``(0, 1)`` (``kind="nm"`` prunes ``1 - n/m``).
        initial_sparsity: ``s_i`` of the cubic schedule.
        criterion: ``"magnitude"``, ``"random"`` or ``"saliency"`` (``|w * g|``).
        allocation: ``"layer"`` (every layer the same sparsity) or ``"global"`` (unstructured).
        n, m: the N:M pattern.
        begin_step / num_updates / update_every: ``t0``, ``n`` and ``dt`` of the schedule.
        ste: straight-through: params stay dense, the forward pass sees the masked weights and the
            masks are recomputed every ``update_every`` steps for the whole run (N:M training).
        sr_ste_decay: SR-STE's pull of pruned weights towards zero (needs ``ste``).
    """

    kind: Literal["none", "unstructured", "nm", "heads", "neurons", "channels"] = "none"
    sparsity: float = 0.0
    initial_sparsity: float = 0.0
    criterion: Literal["magnitude", "random", "saliency"] = "magnitude"
    allocation: Literal["layer", "global"] = "layer"
    n: int = 2
    m: int = 4
    begin_step: int = 0
    num_updates: int = 1
    update_every: int = 1
    ste: bool = False
    sr_ste_decay: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def end_step(self) -> int:
        """The step at which the schedule reaches its final sparsity."""
        return self.begin_step + self.num_updates * self.update_every

    def __post_init__(self):
        o = "PruneConfig"
        _check_choice(o, "kind", self.kind, ("none", "unstructured", "nm", "heads", "neurons", "channels"))
        _check_choice(o, "criterion", self.criterion, ("magnitude", "random", "saliency"))
        _check_choice(o, "allocation", self.allocation, ("layer", "global"))
        _check_positive(o, "begin_step", self.begin_step, allow_zero=True)
        _check_positive(o, "num_updates", self.num_updates)
        _check_positive(o, "update_every", self.update_every)
        for name in ("sparsity", "initial_sparsity"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ValueError(f"{o}.{name} must be in [0, 1), got {v!r}")
        if self.kind not in ("none", "nm") and self.sparsity <= 0:
            raise ValueError(f"{o}.sparsity must be in (0, 1) for kind={self.kind!r}, got {self.sparsity!r}")
        if self.initial_sparsity > self.sparsity and self.kind != "nm":
            raise ValueError(
                f"{o}.initial_sparsity={self.initial_sparsity} must not exceed sparsity={self.sparsity}"
            )
        if self.kind == "nm" and not (
            isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m
        ):
            raise ValueError(f"{o}: N:M needs integers 0 < n < m, got n={self.n!r}, m={self.m!r}")
        if self.allocation == "global" and self.kind != "unstructured":
            raise ValueError(f'{o}.allocation="global" is for kind="unstructured", got kind={self.kind!r}')
        if not (isinstance(self.sr_ste_decay, (int, float)) and self.sr_ste_decay >= 0):
            raise ValueError(f"{o}.sr_ste_decay must be a float >= 0, got {self.sr_ste_decay!r}")
        if self.sr_ste_decay and not self.ste:
            raise ValueError(f"{o}.sr_ste_decay needs ste=True (SR-STE acts on dense weights)")
        if self.ste and self.criterion == "saliency":
            raise ValueError(f'{o}.ste needs criterion "magnitude" or "random" (masks precede the gradient)')


@dataclass(frozen=True)
class StageConfig:
    """One growth of a staged run (:mod:`jaxslim.grow`): the model before it is ``width`` times
    narrower and/or half as deep as the model after it.

    Attributes:
        width: width growth factor (1: none); it must divide every width and head count.
        depth: 2 doubles the stack (interleaved or appended new blocks), 1 leaves it.
        depth_mode: ``"identity"`` (new blocks add nothing: exactly loss-preserving, pre-norm
            models) or ``"copy"`` (stacking copies; not loss-preserving).
        placement: ``"interleave"`` (block i -> 2i, 2i + 1) or ``"append"``.
        at_step: grow after this many optimizer steps; ``None``: when the slope of the run's
            log validation loss against log training FLOPs rises above ``threshold`` (checked at
            every evaluation, so set ``eval_every``).
        restart_step: the schedule step the grown model continues from; ``None``: the step at
            growth divided by ``constant``.
        rewarm_steps: linear re-warm-up of the learning rate after the jump (0: none).
        threshold / constant: the slope rule's threshold and the step ratio; ``None``: the
            reference's values for the operator (width, depth or both).
    """

    width: int = 1
    depth: int = 1
    depth_mode: Literal["identity", "copy"] = "identity"
    placement: Literal["interleave", "append"] = "interleave"
    at_step: int | None = None
    restart_step: int | None = None
    rewarm_steps: int = 0
    threshold: float | None = None
    constant: float | None = None

    @property
    def operator(self) -> str:
        """``"width"``, ``"depth"`` or ``"depth_width"`` (the planner's names)."""
        return {(True, False): "width", (False, True): "depth", (True, True): "depth_width"}[
            (self.width > 1, self.depth > 1)
        ]

    def __post_init__(self):
        o = "StageConfig"
        _check_positive(o, "width", self.width)
        if self.depth not in (1, 2):
            raise ValueError(f"{o}.depth must be 1 or 2 (depth growth doubles the stack), got {self.depth!r}")
        if self.width == 1 and self.depth == 1:
            raise ValueError(f"{o}: a stage must grow: set width >= 2 and/or depth=2")
        _check_choice(o, "depth_mode", self.depth_mode, ("identity", "copy"))
        _check_choice(o, "placement", self.placement, ("interleave", "append"))
        for name in ("at_step", "restart_step"):
            if getattr(self, name) is not None:
                _check_positive(o, name, getattr(self, name), allow_zero=name == "restart_step")
        _check_positive(o, "rewarm_steps", self.rewarm_steps, allow_zero=True)
        if self.threshold is not None and not (_is_real(self.threshold) and self.threshold < 0):
            raise ValueError(f"{o}.threshold must be a negative slope or None, got {self.threshold!r}")
        if self.constant is not None and not (_is_real(self.constant) and self.constant >= 1):
            raise ValueError(f"{o}.constant must be a number >= 1 or None, got {self.constant!r}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run: model, mesh, data, optimizer, checkpoints, evaluation and logging.

    Presets live in ``configs/*.py`` (``get_config(arg) -> TrainConfig``); the command line overrides
    any field (``--optim.lr 3e-4 --data.batch-size 16``). The resolved config is written to
    ``<workdir>/config.json``.

    Attributes:
        model / mesh / data / optim / checkpoint / prune: the parts (``model.vocab_size`` is set to the
            tokenizer's vocabulary size when they differ). With ``stages``, ``model`` is the
            final model.
        workdir: run directory: checkpoints, metrics.jsonl, TensorBoard events, tokenizer, plots.
        steps: total optimizer steps (a resumed run continues up to this).
        seed: model initialisation and per-step PRNG seed.
        accum_steps: micro-batches per optimizer step (``data.batch_size`` must divide by it).
        log_every: steps between logged training metrics.
        eval_every: steps between evaluations on the validation split (0: only at the end).
        eval_batches: validation batches per evaluation (0: the whole split).
        sample_tokens: tokens of text generated from the final model (causal LM only; 0: none).
        sample_prompt: the text that generation continues.
        tensorboard: also write TensorBoard events (through tensorboardX).
        verbose: print every row of the parameter and sharding table at start-up (else the first 40).
        profile_start / profile_steps: a ``jax.profiler`` trace of ``profile_steps`` steps from
            ``profile_start`` into ``<workdir>/profile`` (0 steps: no trace).
        init_from: a model directory (jaxslim's ``save_jaxslim`` format or a Hugging Face checkpoint)
            whose weights start a fresh run (a resumed run ignores it). A dense model starts a
            mixture-of-experts ``model`` by upcycling (every expert a copy of the FFN, new routers);
            the optimizer state starts fresh.
        stages: staged training: the run starts from ``model`` shrunk by every stage and grows
            the whole training state at each stage (:class:`StageConfig`); ``steps`` is the
            length of the final model's schedule, which the run follows to its end.
    """

    model: ModelConfig = field(default_factory=lambda: _default_model())
    mesh: MeshConfig = field(default_factory=MeshConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    workdir: str = "runs/default"
    steps: int = 1000
    seed: int = 0
    accum_steps: int = 1
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 0
    sample_tokens: int = 0
    sample_prompt: str = "\n"
    tensorboard: bool = True
    verbose: bool = False
    profile_start: int = 0
    profile_steps: int = 0
    init_from: str | None = None
    stages: tuple[StageConfig, ...] = ()

    def __post_init__(self):
        o = "TrainConfig"
        for name, kind in (
            ("model", ModelConfig),
            ("mesh", MeshConfig),
            ("data", DataConfig),
            ("optim", OptimConfig),
            ("checkpoint", CheckpointConfig),
            ("prune", PruneConfig),
        ):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{o}.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        if not isinstance(self.workdir, str) or not self.workdir.strip():
            raise ValueError(f"{o}.workdir must be a non-empty path, got {self.workdir!r}")
        _check_positive(o, "steps", self.steps)
        _check_positive(o, "seed", self.seed, allow_zero=True)
        _check_positive(o, "accum_steps", self.accum_steps)
        _check_positive(o, "log_every", self.log_every)
        for name in ("eval_every", "eval_batches", "sample_tokens", "profile_start", "profile_steps"):
            _check_positive(o, name, getattr(self, name), allow_zero=True)
        if self.data.batch_size % self.accum_steps:
            raise ValueError(
                f"{o}.accum_steps={self.accum_steps} must divide data.batch_size={self.data.batch_size}"
            )
        if self.data.mlm != (self.model.arch == "bert"):
            want = "data.mlm=True" if self.model.arch == "bert" else "data.mlm=False"
            raise ValueError(
                f"{o}: model.arch={self.model.arch!r} trains with {want} "
                f"(encoders use masked LM, decoders causal LM), got data.mlm={self.data.mlm}"
            )
        if self.model.max_len and not self.model.rope and self.data.seq_len > self.model.max_len:
            raise ValueError(
                f"{o}: data.seq_len={self.data.seq_len} exceeds model.max_len={self.model.max_len} "
                "(the learned position table)"
            )
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ValueError(f"{o}.init_from must be a model directory path or None, got {self.init_from!r}")
        moe = self.model.moe
        if moe is not None and self.mesh.expert != -1 and moe.num_experts % self.mesh.expert:
            raise ValueError(
                f"{o}: mesh.expert={self.mesh.expert} must divide model.moe.num_experts={moe.num_experts} "
                "(experts are sharded over the expert axis)"
            )
        if self.sample_tokens and self.data.mlm:
            raise ValueError(f"{o}.sample_tokens needs a causal LM; set it to 0 for masked-LM runs")
        if self.stages:
            self._check_stages()

    def _check_stages(self) -> None:
        from jaxslim.grow.stages import start_model

        o = "TrainConfig"
        if not all(isinstance(s, StageConfig) for s in self.stages):
            raise ValueError(f"{o}.stages must hold StageConfig values, got {self.stages!r}")
        at = [s.at_step for s in self.stages]
        known = [a for a in at if a is not None]
        if known != sorted(set(known)) or any(a >= self.steps for a in known):
            raise ValueError(
                f"{o}.stages: at_step values must increase and stay below steps={self.steps}, got {at}"
            )
        if any(a is None for a in at) and not self.eval_every:
            raise ValueError(
                f"{o}.stages without at_step grow by the validation-loss slope: set eval_every > 0"
            )
        if self.init_from is not None:
            raise ValueError(
                f"{o}: init_from and stages do not combine (a staged run starts from its small model)"
            )
        start_model(self.model, self.stages)  # raises when a stage does not fit the model

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)
