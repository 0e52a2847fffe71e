"""Model config: one transformer family (BERT encoders, GPT-2 and Llama decoders) and RoPE scaling.

Example:
    >>> cfg = ModelConfig.bert(vocab_size=128, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    >>> cfg.head_dim_
    8
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from jaxslim.config.moe import MoeConfig
from jaxslim.config.validate import Config, at_least, between, bounded, nonempty, positive

Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
# what a rematerialised block keeps for the backward pass (jaxslim.models.stack.remat_policy)
RematPolicy = Literal[
    "full",
    "none",
    "save_dots",
    "dots_with_no_batch_dims",
    "save_qkv_proj",
    "save_out_proj",
    "save_qkv_out_proj",
    "save_dot_except_mlpwi",
    "offload",
    "qkv_proj_offloaded",
]
REMAT_POLICIES: tuple[str, ...] = get_args(RematPolicy)
AttentionBackend = Literal["auto", "xla", "cudnn", "splash"]
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)


@dataclass(frozen=True)
class RopeScaling(Config):
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
        kind: the scaling rule (see above).
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
    factor: float = positive()
    original_max_len: int | None = positive(None)
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def _check(self) -> None:
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(
                "RopeScaling: llama3 needs high_freq_factor > low_freq_factor > 0, got "
                f"{self.high_freq_factor} and {self.low_freq_factor}"
            )


@dataclass(frozen=True)
class ModelConfig(Config):
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
        arch: the block recipe (table above).
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
        remat: rematerialise each block in the backward pass (what it keeps: ``remat_policy``).
        dtype: compute dtype; ``param_dtype``: storage dtype of the weights.
        pad_token_id: padding token of the tokenizer, kept for conversion.
        moe: mixture-of-experts FFNs (:class:`MoeConfig`); None for a dense model.
        rope_scaling: RoPE position scaling (:class:`RopeScaling`, llama); None for plain RoPE.
        sliding_window: the layers listed in ``sliding_layers`` attend only to keys fewer than
            ``sliding_window`` positions away from the query: in a causal decoder the last
            ``sliding_window`` positions (the query's own included), in an encoder a symmetric
            window of ``sliding_window - 1`` positions on either side (ModernBERT's local
            attention); None: every token the mask allows.
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
            only). A GPT-2-style decoder with ``rotary=True`` is GPT-NeoX / Pythia; a BERT with
            it (and pre-norm, gated FFNs) is ModernBERT.
        parallel_residual: attention and FFN both read the block input and are added together,
            ``x + attn(norm1(x)) + mlp(norm2(x))`` (GPT-NeoX / Pythia).
        local_rope_theta: RoPE base of the sliding-window layers, which then use plain RoPE while
            the others use ``rope_theta`` and ``rope_scaling`` (Gemma 3, ModernBERT); None: one RoPE
            for all.
        pooler_activation: the pooler's activation: ``"tanh"`` (BERT's pooler, RoBERTa's
            classifier), ``"relu"`` (DistilBERT's ``pre_classifier``), or an FFN activation
            (ModernBERT's ``classifier_activation``).
        norm_placement: ``"pre"``: each sublayer reads the normalised residual stream and a final
            norm follows the stack; ``"post"``: the residual sum is normalised (BERT); None: the
            architecture's own (post for bert, pre otherwise). A pre-norm BERT is ModernBERT.
        gated_ffn: the FFN is gated, ``act(x wi) * (x wu)``; None: the architecture's own (llama
            only). With ``activation="gelu"`` it is ModernBERT's GeGLU.
        norm_bias: LayerNorms have a bias (ModernBERT's are bias-free); RMSNorm never has one.
        first_attn_norm: layer 0 normalises its attention input; False: it reads the embeddings as
            they are (ModernBERT, whose embeddings end with a norm). Layer 0 keeps an attention
            norm so that every layer has the same parameters (a scanned stack), but never uses it.
        head_dense_bias: the dense layer of the masked-LM head and of the pooler has a bias
            (ModernBERT's ``classifier_bias``).
        vocab_bias: the masked-LM head adds a bias per vocabulary entry (ModernBERT's
            ``decoder_bias``).
        pooler_norm: a LayerNorm after the pooler's activation (ModernBERT's classifier head).
        pooling: what the pooler reads: ``"first"``, the first token (BERT's [CLS]), or ``"mean"``,
            the mean over the tokens the attention mask keeps (ModernBERT's ``classifier_pooling``).
        remat_policy: with ``remat``, what each block keeps for the backward pass (MaxText's
            names): ``"full"`` nothing (recompute the block), ``"none"`` everything (no
            recomputation), ``"save_dots"`` every matmul output, ``"dots_with_no_batch_dims"``
            matmul outputs without batch dimensions, ``"save_qkv_proj"`` the query / key / value
            projections, ``"save_out_proj"`` the attention output projection,
            ``"save_qkv_out_proj"`` both, ``"save_dot_except_mlpwi"`` those and the MLP's output
            (every matmul output but the MLP's input projections), ``"offload"`` each block's input
            and its query / key / value and output projections moved to host memory,
            ``"qkv_proj_offloaded"`` the query / key / value projections moved to host memory.
        attention: the attention kernel: ``"auto"`` (splash on TPU, cuDNN on GPU, XLA elsewhere),
            ``"xla"``, ``"cudnn"`` or ``"splash"`` (TPU Pallas).
    """

    arch: Literal["bert", "gpt2", "llama"]
    vocab_size: int = positive()
    d_model: int = positive()
    n_layers: int = positive()
    n_heads: int = positive()
    d_ff: int = positive()
    n_kv_heads: int | None = positive(None)
    head_dim: int | None = positive(None)
    max_len: int = positive(512)
    type_vocab_size: int = at_least(0, 2)
    norm_eps: float = positive(1e-5)
    rope_theta: float = 10000.0
    activation: Activation = "gelu"
    tie_embeddings: bool = True
    head: Literal["none", "mlm", "lm", "cls"] = "none"
    pooler: bool = False
    attn_bias: bool = True
    mlp_bias: bool = True
    layer_heads: tuple[int, ...] | None = between(0, "n_heads", None)
    layer_ffn: tuple[int, ...] | None = between(0, "d_ff", None)
    scan_layers: bool = True
    remat: bool = False
    dtype: Dtype = "float32"
    param_dtype: Dtype = "float32"
    pad_token_id: int | None = None
    moe: MoeConfig | None = None
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = positive(None)
    sliding_layers: tuple[int, ...] | None = between(0, "n_layers", None, open_high=True)
    attn_out_bias: bool | None = None
    qk_norm: bool = False
    hf_family: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = nonempty(None)
    partial_rotary_factor: float = bounded(1.0, gt=0, le=1)
    norm_offset: float = 0.0
    embed_scale: bool = False
    post_norms: bool = False
    attn_softcap: float | None = positive(None)
    logit_softcap: float | None = positive(None)
    attn_scale_dim: float | None = positive(None)
    local_rope_theta: float | None = positive(None)
    input_norms: bool = True
    qk_norm_scope: Literal["head", "layer"] = "head"
    rotary: bool | None = None
    parallel_residual: bool = False
    num_labels: int = positive(2)
    pad_positions: bool = False
    shared_expert_ffn: int | None = positive(None)
    shared_expert_gate: bool = True
    pooler_activation: Literal["tanh", "relu", "gelu", "gelu_tanh", "silu"] = "tanh"
    norm_placement: Literal["pre", "post"] | None = None
    gated_ffn: bool | None = None
    norm_bias: bool = True
    first_attn_norm: bool = True
    head_dense_bias: bool = True
    vocab_bias: bool = True
    pooler_norm: bool = False
    pooling: Literal["first", "mean"] = "first"
    remat_policy: RematPolicy = "full"
    attention: AttentionBackend = "auto"

    def _check(self) -> None:
        o = "ModelConfig"
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(f"{o}.n_kv_heads must divide n_heads={self.n_heads}, got {self.n_kv_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"{o}.n_heads must divide d_model={self.d_model} when head_dim is not given, got {self.n_heads}"
            )
        if self.rope and (self.rotary_dim % 2 or self.rotary_dim == 0):
            raise ValueError(
                f"{o}: RoPE needs an even, non-zero number of rotated dimensions, got "
                f"int(head_dim={self.head_dim_} * partial_rotary_factor={self.partial_rotary_factor}) = "
                f"{self.rotary_dim}"
            )
        self._check_widths()
        if self.moe is not None:
            self._check_moe(self.moe)
        self._check_attention()
        self._check_blocks()

    def _check_widths(self) -> None:
        o = "ModelConfig"
        for name in ("layer_heads", "layer_ffn"):
            widths = getattr(self, name)
            if widths is None:
                continue
            if len(widths) != self.n_layers:
                raise ValueError(
                    f"{o}.{name} must be a tuple of n_layers={self.n_layers} integers, got {widths!r}"
                )
            if self.scan_layers:
                raise ValueError(
                    f"{o}.{name} (per-layer widths) needs scan_layers=False: a scanned stack has one width "
                    "for every layer"
                )
        group = self.n_heads // self.kv_heads
        if self.layer_heads is not None and any(h % group for h in self.layer_heads):
            raise ValueError(
                f"{o}.layer_heads entries must be multiples of the query group size {group} "
                f"(n_heads / n_kv_heads), got {self.layer_heads!r}"
            )

    def _check_moe(self, moe: MoeConfig) -> None:
        o = "ModelConfig"
        if not self.uniform:
            raise ValueError(f"{o}.moe cannot be combined with per-layer widths (layer_heads / layer_ffn)")
        if self.scan_layers and self.n_layers % moe.every:
            raise ValueError(
                f"{o}: a scanned stack runs groups of moe.every={moe.every} layers, so it must "
                f"divide n_layers={self.n_layers} (or set scan_layers=False)"
            )
        if not any(moe.is_moe_layer(i) for i in range(self.n_layers)):
            raise ValueError(
                f"{o}: moe.every={moe.every}, moe.offset={moe.offset} put experts in none of "
                f"the {self.n_layers} layers"
            )

    def _check_attention(self) -> None:
        o = "ModelConfig"
        if self.rope_scaling is not None and not self.rope:
            raise ValueError(f"{o}.rope_scaling needs RoPE (arch='llama'), got arch={self.arch!r}")
        if self.sliding_layers is not None and self.sliding_window is None:
            raise ValueError(f"{o}.sliding_layers needs sliding_window, which is None")
        if self.local_rope_theta is not None and (not self.rope or self.sliding_window is None):
            raise ValueError(
                f"{o}.local_rope_theta is the RoPE base of sliding-window layers: it needs RoPE "
                f"and a sliding_window, got rope={self.rope}, sliding_window={self.sliding_window}"
            )
        if self.qk_norm and not self.rms_norm:
            raise ValueError(f"{o}.qk_norm=True needs RMSNorm (arch='llama'), got arch={self.arch!r}")
        if self.pad_positions and (self.rope or self.pad_token_id is None):
            raise ValueError(
                f"{o}.pad_positions=True needs learned positions and a pad_token_id, got rope={self.rope}, "
                f"pad_token_id={self.pad_token_id}"
            )

    def _check_blocks(self) -> None:
        o = "ModelConfig"
        if self.head == "mlm" and self.arch != "bert":
            raise ValueError(f"{o}.head='mlm' needs arch='bert', got arch={self.arch!r}")
        if self.pooler and self.arch != "bert":
            raise ValueError(f"{o}.pooler=True needs arch='bert', got arch={self.arch!r}")
        if (self.pooler_norm or self.pooling != "first") and not self.pooler:
            raise ValueError(
                f"{o}.pooler_norm / pooling shape the pooler: they need pooler=True, got "
                f"pooler_norm={self.pooler_norm}, pooling={self.pooling!r}"
            )
        if self.head == "cls" and self.arch == "bert" and not self.pooler:
            raise ValueError(f"{o}.head='cls' on a BERT classifies the pooler output: it needs pooler=True")
        if self.norm_offset and not self.rms_norm:
            raise ValueError(f"{o}.norm_offset needs RMSNorm (arch='llama'), got arch={self.arch!r}")
        if self.shared_expert_ffn is not None and self.moe is None:
            raise ValueError(f"{o}.shared_expert_ffn needs moe (it is added to expert layers), got moe=None")
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
        if not self.first_attn_norm and not (self.pre_norm and self.input_norms):
            raise ValueError(
                f"{o}.first_attn_norm=False skips layer 0's attention input norm: it needs a pre-norm "
                "block with input_norms=True"
            )
        if self.post_norms and not self.pre_norm:
            raise ValueError(f"{o}.post_norms needs a pre-norm block (gpt2 or llama), got arch={self.arch!r}")

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
        if self.norm_placement is not None:
            return self.norm_placement == "pre"
        return self.arch != "bert"

    @property
    def rms_norm(self) -> bool:
        return self.arch == "llama"

    @property
    def rope(self) -> bool:
        return self.arch == "llama" if self.rotary is None else self.rotary

    @property
    def gated_mlp(self) -> bool:
        return self.arch == "llama" if self.gated_ffn is None else self.gated_ffn

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
