"""The transformer family: BERT encoders, GPT-2 and Llama decoders, with MLM and LM heads.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxslim.config import ModelConfig
    >>> cfg = ModelConfig.llama(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 8), jnp.int32)).logits.shape
    (2, 8, 64)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models.stack import Stack
from jaxslim.nn import Embeddings, Norm, activation, dtypes, expand_to, param, project, rope_tables


class ModelOutput(NamedTuple):
    """``hidden``: last hidden state ``[b, t, d]``; ``logits``: ``[b, t, vocab]`` (float32) when the
    model has an LM head, ``[b, num_labels]`` for a classification head; ``pooled``: BERT's pooler output ``[b, d]`` when it has one; ``moe``: the
    expert layers' routing metrics and router losses (:func:`jaxslim.moe.routing_metrics`), each
    stacked on a leading axis of one entry per expert layer, when the model has experts."""

    hidden: jax.Array
    logits: jax.Array | None = None
    pooled: jax.Array | None = None
    moe: dict | None = None


class MlmHead(nnx.Module):
    """BERT's masked-LM head: dense, GELU, LayerNorm, then the tied decoder plus a vocab bias (the
    dense layer's bias and the vocab bias can be switched off: ModernBERT)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        _, pdt = dtypes(cfg)
        self.act = cfg.activation
        self.w = param(rngs, (cfg.d_model, cfg.d_model), ("embed", None), pdt)
        self.b = param(None, (cfg.d_model,), (None,), pdt, "zeros") if cfg.head_dense_bias else None
        self.norm = Norm(cfg)
        self.vocab_bias = param(None, (cfg.vocab_size,), ("vocab",), pdt, "zeros") if cfg.vocab_bias else None

    def __call__(self, x, embeddings: Embeddings) -> jax.Array:
        h = x @ self.w[...].astype(x.dtype)
        if self.b is not None:
            h = h + expand_to(self.b[...].astype(x.dtype), h.ndim)
        logits = embeddings.attend(self.norm(activation(self.act)(h)))
        if self.vocab_bias is None:
            return logits
        return logits + expand_to(self.vocab_bias[...].astype(x.dtype), logits.ndim)


class Transformer(nnx.Module):
    """Embeddings, a (scanned or unscanned) stack of blocks, a final norm and the configured head."""

    hf_source: str | None = None  # the Hugging Face folder a converted model came from (its side files)

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        _, pdt = dtypes(cfg)
        self.cfg = cfg
        self.embed = Embeddings(cfg, rngs=rngs)
        self.stack = Stack(cfg, rngs=rngs)
        self.final_norm = Norm(cfg) if cfg.pre_norm else None
        if cfg.pooler:
            self.pooler_w: nnx.Param | None = param(rngs, (cfg.d_model, cfg.d_model), ("embed", None), pdt)
            self.pooler_b: nnx.Param | None = (
                param(None, (cfg.d_model,), (None,), pdt, "zeros") if cfg.head_dense_bias else None
            )
        else:
            self.pooler_w = self.pooler_b = None
        self.pooler_norm = Norm(cfg) if cfg.pooler_norm else None
        self.mlm = MlmHead(cfg, rngs=rngs) if cfg.head == "mlm" else None
        if cfg.head == "cls":  # BERT: a linear classifier on the pooler output; decoders: `score`, no bias
            self.cls_w: nnx.Param | None = param(rngs, (cfg.d_model, cfg.num_labels), ("embed", None), pdt)
            self.cls_b: nnx.Param | None = (
                param(None, (cfg.num_labels,), (None,), pdt, "zeros") if cfg.arch == "bert" else None
            )
        else:
            self.cls_w = self.cls_b = None
        untied_lm = cfg.head == "lm" and not cfg.tie_embeddings
        self.lm_head = (
            param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pdt) if untied_lm else None
        )

    def __call__(
        self,
        tokens: jax.Array,
        *,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        head_mask: jax.Array | None = None,
        neuron_mask: jax.Array | None = None,
        rng: jax.Array | None = None,
        logits: bool = True,
    ) -> ModelOutput:
        """Runs the model on ``tokens: [batch, length]`` (int).

        Args:
            attention_mask: ``[batch, length]``, 1 for real tokens and 0 for padding.
            token_type_ids: BERT segment ids.
            positions: ``[batch, length]`` position ids; default ``0..length-1``.
            head_mask: ``[layers, heads]`` multipliers of each attention head's output.
            neuron_mask: ``[layers, d_ff]`` multipliers of each FFN hidden unit (dense FFNs only).
            rng: PRNG key for the stochastic parts of expert layers in training (THOR's draws,
                router jitter, expert dropout); each layer folds in its index.
            logits: False skips an LM head (``logits=None``): a loss that computes them piece by
                piece from ``hidden`` with :meth:`lm_logits` never holds all of them.
        """
        self._check_mask("head_mask", head_mask, self.cfg.n_heads)
        self._check_mask("neuron_mask", neuron_mask, self.cfg.d_ff)
        if neuron_mask is not None and self.cfg.moe is not None:
            raise ValueError("neuron_mask masks dense FFN units; this model's FFNs include expert layers")
        x, mask, rope = self.embed_inputs(
            tokens, attention_mask=attention_mask, token_type_ids=token_type_ids, positions=positions
        )
        cfg = self.cfg
        x, moe = self.stack(x, mask=mask, rope=rope, head_mask=head_mask, neuron_mask=neuron_mask, rng=rng)
        if self.final_norm is not None:
            x = self.final_norm(x)
        pooled = None
        if self.pooler_w is not None:
            pooled = self._pool(x, attention_mask)
        out = None
        if self.mlm is not None:
            out = self._finish_logits(self.mlm(x, self.embed))
        elif cfg.head == "lm" and logits:
            out = self.lm_logits(x)
        elif cfg.head == "cls":
            out = self._classify(tokens, x, pooled).astype(jnp.float32)  # class scores are not soft-capped
        return ModelOutput(hidden=x, logits=out, pooled=pooled, moe=moe)

    def lm_logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head on (final-normed) ``hidden: [..., d_model]``: float32 ``[..., vocab]``."""
        logits = (
            self.embed.attend(hidden)
            if self.lm_head is None
            else project(
                "btd,dv->btv",
                hidden,
                self.lm_head,
                ("batch", "length", "act_embed"),
                ("batch", "length", "act_vocab"),
            )
        )
        return self._finish_logits(logits)

    def _finish_logits(self, logits: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32)
        cap = self.cfg.logit_softcap
        return logits if cap is None else cap * jnp.tanh(logits / cap)

    def _pool(self, x, attention_mask):
        """The pooler output ``[batch, d]``: dense, activation (and a norm) over the first token or
        the mean of the unmasked ones (``cfg.pooling``)."""
        cfg = self.cfg
        if cfg.pooling == "first":
            source = x[:, 0]
        elif attention_mask is None:
            source = jnp.mean(x, axis=1)
        else:
            keep = attention_mask.astype(x.dtype)[:, :, None]
            source = jnp.sum(x * keep, axis=1) / jnp.sum(keep, axis=1)
        pooled = source @ self.pooler_w[...].astype(x.dtype)
        if self.pooler_b is not None:
            pooled = pooled + expand_to(self.pooler_b[...].astype(x.dtype), 2)
        act = jnp.tanh if cfg.pooler_activation == "tanh" else activation(cfg.pooler_activation)
        pooled = act(pooled)
        return pooled if self.pooler_norm is None else self.pooler_norm(pooled)

    def _classify(self, tokens, x, pooled):
        """``[batch, num_labels]`` logits: of the pooler output (BERT) or of the last token that is not
        ``pad_token_id`` (decoders; the last position when there is no pad token)."""
        w = self.cls_w[...].astype(x.dtype)
        if pooled is not None:
            return pooled @ w + expand_to(self.cls_b[...].astype(x.dtype), 2)
        t = tokens.shape[1]
        if self.cfg.pad_token_id is None:
            last = jnp.full((tokens.shape[0],), t - 1)
        else:
            last = jnp.argmax(jnp.arange(t)[None] * (tokens != self.cfg.pad_token_id), axis=-1)
        return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0] @ w

    def embed_inputs(self, tokens, *, attention_mask=None, token_type_ids=None, positions=None):
        """The stack's inputs: embedded tokens ``[b, t, d]``, the boolean padding mask ``[b, 1, 1, t]``
        (or None; a causal model's attention adds causality itself) and the RoPE tables (or None; with
        ``local_rope_theta``, the global cos and sin followed by the sliding layers' own)."""
        cfg = self.cfg
        b, t = tokens.shape
        if cfg.pad_positions and t + cfg.pad_token_id + 1 > cfg.max_len:
            raise ValueError(
                f"sequence length {t} exceeds the model's {cfg.max_len - cfg.pad_token_id - 1} positions "
                f"(max_len={cfg.max_len}, counted from pad_token_id + 1 = {cfg.pad_token_id + 1})"
            )
        if not cfg.rope and t > cfg.max_len:
            raise ValueError(f"sequence length {t} exceeds the model's max_len={cfg.max_len}")
        if positions is None and cfg.pad_positions:  # RoBERTa: count real tokens after the pad id
            real = (tokens != cfg.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x = self.embed(tokens, positions, token_type_ids)
        # padding only: attention applies causality itself, never as a [t, t] mask
        mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
        rope = None
        if cfg.rope:
            rope = rope_tables(
                positions, cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling, max_len=cfg.max_len
            )
            if cfg.local_rope_theta is not None:  # sliding-window layers rotate with their own base
                rope = (
                    *rope,
                    *rope_tables(positions, cfg.rotary_dim, cfg.local_rope_theta, max_len=cfg.max_len),
                )
        return x, mask, rope

    def _check_mask(self, name: str, mask, width: int) -> None:
        if mask is None:
            return
        cfg = self.cfg
        if isinstance(mask, (list, tuple)):
            if len(mask) != cfg.n_layers:
                raise ValueError(f"{name} must have one entry per layer ({cfg.n_layers}), got {len(mask)}")
            return
        if cfg.uniform and tuple(mask.shape) != (cfg.n_layers, width):
            raise ValueError(f"{name} must have shape {(cfg.n_layers, width)}, got {tuple(mask.shape)}")
