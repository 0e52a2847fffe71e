"""Sample sets for post-training pruning: sentences from a corpus, tokenized into length buckets.

Pruning statistics are sums over examples, so the examples may be reordered freely: they are sorted
by length and padded only to the next multiple of ``bucket`` tokens, which on short sentences costs a
fraction of padding everything to ``max_len`` (and compiles one shape per bucket).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslim.data.corpora import corpus_text
from jaxslim.paths import absolute


def load_sentences(
    source: str,
    n: int,
    *,
    seed: int = 0,
    min_words: int = 4,
    skip: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> list[str]:
    """``n`` distinct sentences drawn without replacement from ``source``.

    Args:
        source: an embedded corpus (``"kjv"``, ``"shakespeare"``, ``"vader"``), a local text file (one
            sentence per line) or ``hf:owner/name`` (see :func:`jaxslim.data.corpus_text`).
        n: how many (fewer are returned when the source has fewer lines).
        seed: the draw's seed.
        min_words: lines with fewer words are dropped.
        skip: drop the first ``skip`` drawn sentences (a held-out set disjoint from a sample set
            drawn with the same seed: ``skip=n_sample``).
    """

    path = absolute(source)
    if path.is_file() and path.suffix == ".txt":
        try:
            docs = [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
            ) from None
    else:
        docs = corpus_text(source, cache_dir)
    lines = [ln.strip() for doc in docs for ln in doc.splitlines()]
    lines = sorted({ln for ln in lines if len(ln.split()) >= min_words})
    if not lines:
        raise ValueError(f"no sentences of at least {min_words} words in {source!r}")
    order = np.random.default_rng(seed).permutation(len(lines))
    return [lines[i] for i in order[skip : skip + n]]


def tokenize(tokenizer, sentences: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each sentence (a ``tokenizers.Tokenizer`` or a path to ``tokenizer.json``),
    truncated to ``max_len``."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_len)
    return [e.ids for e in tokenizer.encode_batch(list(sentences))]


def bucket_batches(
    ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
    bucket: int = 16,
    pad_id: int = 0,
    labels: Sequence[int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Batches sorted by length, padded to a multiple of ``bucket``: ``tokens``, ``attention_mask``,
    ``index`` (position in ``ids``, for per-example noise) and ``label`` when given."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(ids[i]) for i in idx)
        width = -(-width // bucket) * bucket
        tokens = np.full((len(idx), width), pad_id, np.int32)
        mask = np.zeros((len(idx), width), np.int32)
        for row, i in enumerate(idx):
            tokens[row, : len(ids[i])] = ids[i]
            mask[row, : len(ids[i])] = 1
        batch = {"tokens": tokens, "attention_mask": mask, "index": idx.astype(np.int32)}
        if labels is not None:
            batch["label"] = np.asarray(labels, np.int32)[idx]
        out.append(batch)
    return out


def mean_length(batches: Sequence[dict[str, np.ndarray]]) -> float:
    """Average number of real tokens per example (the cost model's sequence length); a batch
    without an ``attention_mask`` (causal-LM samples) counts every token."""
    masks = [b["attention_mask"] if "attention_mask" in b else np.ones_like(b["tokens"]) for b in batches]
    tokens = sum(int(m.sum()) for m in masks)
    examples = sum(len(m) for m in masks)
    return tokens / examples


def embed_sentences(
    model, batches: Sequence[dict[str, np.ndarray]], head_mask=None, neuron_mask=None
) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings of ``model`` (masks optional), one row per
    sentence in ``batches``' ``index`` order (as :func:`bucket_batches` numbers them)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, tokens, mask, hm, nm):
        h = nnx.merge(graphdef, state)(tokens, attention_mask=mask, head_mask=hm, neuron_mask=nm).hidden
        m = mask[..., None].astype(h.dtype)
        e = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

    out: dict[int, np.ndarray] = {}
    for b in batches:
        emb = np.asarray(run(state, b["tokens"], b["attention_mask"], head_mask, neuron_mask))
        out.update(zip(b["index"].tolist(), emb, strict=True))
    return np.stack([out[i] for i in sorted(out)])
