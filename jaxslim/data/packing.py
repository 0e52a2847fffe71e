"""Tokenizing documents into one id stream (cached on disk) and packing it into fixed-length rows.

Every document's ids are followed by the end-of-text id and the documents are concatenated, so no
token is padding. The stream is cut into rows with a stride of ``seq_len``: a causal-LM row holds
``seq_len + 1`` tokens (inputs ``row[:-1]``, targets ``row[1:]``) and overlaps the next row by one
token, so every token after the first is a target exactly once; an MLM row holds ``seq_len`` tokens
with no overlap. The tail shorter than one row is dropped.

The stream is saved as ``.npy`` (uint16 when the vocabulary fits) under ``<cache>/tokens/``, keyed
by the tokenizer and the text, and memory-mapped on later runs, so a second start takes a moment and
changing ``seq_len`` does not tokenize again.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from collections.abc import Sequence

import numpy as np

from jaxslim.data.corpora import cache_root, documents_fingerprint
from jaxslim.data.shards import ShardedTokens
from jaxslim.data.tokenizer import Tokenizer

# Bump when the stream layout changes (e.g. where separators go), so old caches are not reused.
STREAM_RECIPE = "jaxslim-stream-1"
# Documents per call into the Rust tokenizer: large enough to keep its threads busy, small enough
# that a big corpus is never held as Python lists all at once.
_ENCODE_CHUNK = 512


def stream_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id (halves the cache for vocabularies <= 65,536)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _encode(tokenizer: Tokenizer, documents: Sequence[str]) -> np.ndarray:
    dtype = stream_dtype(tokenizer.vocab_size)
    eos = np.array([tokenizer.eos_id], dtype)
    parts: list[np.ndarray] = []
    for start in range(0, len(documents), _ENCODE_CHUNK):
        for ids in tokenizer.encode_batch(documents[start : start + _ENCODE_CHUNK]):
            parts.append(ids.astype(dtype))
            parts.append(eos)
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def tokenize_documents(
    tokenizer: Tokenizer,
    documents: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """One id stream: each document's ids followed by ``tokenizer.eos_id``.

    Args:
        tokenizer: the tokenizer.
        documents: the documents, in order.
        cache_dir: root of the data cache (see :func:`~jaxslim.data.corpora.cache_root`).
        use_cache: read and write ``<cache>/tokens/<key>.npy``; off, always tokenize.

    Returns:
        A 1-D unsigned integer array (memory-mapped, read-only, when it came from the cache).

    Example:
        >>> from jaxslim.data.tokenizer import train_bpe
        >>> tok = train_bpe(["ab ab ab"] * 10, vocab_size=270)
        >>> ids = tokenize_documents(tok, ["ab", "ab"], use_cache=False)
        >>> int((ids == tok.eos_id).sum())
        2
    """
    if not use_cache:
        return _encode(tokenizer, documents)
    key = hashlib.sha256(
        f"{STREAM_RECIPE}|{tokenizer.fingerprint}|{documents_fingerprint(documents)}".encode()
    ).hexdigest()[:24]
    path = cache_root(cache_dir) / "tokens" / f"{key}.npy"
    if path.is_file():
        try:
            ids = np.load(path, mmap_mode="r")
            if ids.ndim == 1 and ids.dtype == stream_dtype(tokenizer.vocab_size):
                return ids
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    ids = _encode(tokenizer, documents)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Save beside the target and rename: concurrent hosts sharing a cache never read half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, ids)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return ids


class PackedSequences:
    """Fixed-length rows cut from an id stream, addressed by row index, built lazily.

    Args:
        tokens: the 1-D id stream: an array, or prepared shards
            (:class:`~jaxslim.data.shards.ShardedTokens`), read a row at a time.
        seq_len: the model's sequence length.
        causal: rows of ``seq_len + 1`` tokens overlapping by one (causal LM), else ``seq_len``.

    Example:
        >>> rows = PackedSequences(np.arange(10), seq_len=3)
        >>> len(rows), rows.take([0, 2]).tolist()
        (3, [[0, 1, 2, 3], [6, 7, 8, 9]])
    """

    def __init__(self, tokens: np.ndarray | ShardedTokens, seq_len: int, *, causal: bool = True):
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be a 1-D id stream, got shape {tokens.shape}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.causal = causal
        self.width = seq_len + 1 if causal else seq_len
        n = len(tokens)
        self._len = (n - 1) // seq_len if causal else n // seq_len
        self._len = max(self._len, 0)

    def __len__(self) -> int:
        return self._len

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The given rows as an int32 array ``[len(rows), width]``."""
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self._len):
            raise IndexError(f"row index out of range [0, {self._len})")
        starts = rows * self.seq_len
        if hasattr(self.tokens, "windows"):  # prepared shards on disk: read just these rows
            return np.asarray(self.tokens.windows(starts, self.width), np.int32)
        return np.asarray(self.tokens[starts[:, None] + np.arange(self.width)], np.int32)

    def __repr__(self) -> str:
        return f"PackedSequences(rows={self._len}, width={self.width}, tokens={len(self.tokens)})"
