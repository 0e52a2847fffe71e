"""Text generation from a causal LM: temperature and top-k sampling inside one compiled loop.

There is no key/value cache: each new token re-reads a fixed window of the most recent
``window`` tokens, so every step has the same shape and the whole loop is one ``lax.fori_loop``.
That costs ``window`` times the work of a cached decoder per token, which is fine for the short
samples a training run prints; it is not a serving path.

Example:
    >>> from flax import nnx
    >>> from jaxslim.config import ModelConfig
    >>> from jaxslim.models import Transformer
    >>> model = Transformer(ModelConfig.gpt2(vocab_size=32, d_model=16, n_layers=1, n_heads=2,
    ...                                      d_ff=32, max_len=8), rngs=nnx.Rngs(0))
    >>> generate(model, [1, 2], 5, rng=jax.random.key(0)).shape
    (5,)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslim.models.transformer import Transformer


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int) -> jax.Array:
    """One token id per row of ``logits: [..., vocab]``; temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1)


@partial(jax.jit, static_argnames=("graphdef", "n_tokens", "temperature", "top_k"))
def _generate(graphdef, state, window_ids, length, rng, *, n_tokens, temperature, top_k):
    model = nnx.merge(graphdef, state)
    width = window_ids.shape[0]

    def body(i, carry):
        ids, n, rng, out = carry
        rng, step_rng = jax.random.split(rng)
        logits = model(ids[None]).logits[0, n - 1]
        tok = sample_logits(logits, step_rng, temperature=temperature, top_k=top_k).astype(ids.dtype)
        full = n == width
        # a full window slides left by one; otherwise the token goes into the next free slot
        ids = jnp.where(full, jnp.roll(ids, -1), ids)
        ids = ids.at[jnp.where(full, width - 1, n)].set(tok)
        return ids, jnp.minimum(n + 1, width), rng, out.at[i].set(tok)

    out = jnp.zeros((n_tokens,), window_ids.dtype)
    return jax.lax.fori_loop(0, n_tokens, body, (window_ids, length, rng, out))[3]


def generate(
    model: Transformer,
    prompt: Sequence[int],
    n_tokens: int,
    *,
    rng: jax.Array,
    temperature: float = 0.8,
    top_k: int = 40,
    window: int | None = None,
) -> jax.Array:
    """Samples ``n_tokens`` ids that continue ``prompt`` (a non-empty list of ids).

    Args:
        model: a causal :class:`~jaxslim.models.Transformer` (``head="lm"``).
        prompt: token ids to continue; only its last ``window`` ids are used.
        n_tokens: number of ids to generate.
        rng: a PRNG key.
        temperature: softmax temperature; 0 picks the most likely token every time.
        top_k: sample among the ``top_k`` most likely tokens (0: all).
        window: context length; default the model's ``max_len`` (its position table).

    Returns:
        ``int32 [n_tokens]``: the generated ids (without the prompt).
    """
    cfg = model.cfg
    if not cfg.causal or cfg.head != "lm":
        raise ValueError(f"generate needs a causal LM (gpt2 or llama with head='lm'), got arch={cfg.arch!r}")
    if not prompt:
        raise ValueError("generate needs a prompt of at least one token id")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    width = window or cfg.max_len
    prompt = list(prompt)[-width:]
    ids = jnp.zeros((width,), jnp.int32).at[: len(prompt)].set(jnp.asarray(prompt, jnp.int32))
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef,
        state,
        ids,
        jnp.int32(len(prompt)),
        rng,
        n_tokens=n_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
    )
