"""Tokenizers for the text pipeline: a byte-level BPE trained once per corpus, or any tokenizer.json.

Why train one rather than reuse a shipped one: the embedded corpora are Early Modern English and
small. A byte-level BPE fitted to the training split (8,192 tokens for Shakespeare) packs about 3.4
characters per token, keeps case and layout, decodes back to exactly the input text, needs no
download, and keeps the embedding table small for CPU runs. The only tokenizer.json shipped in the
packages here, MiniLM's uncased 30,522-token WordPiece, lowercases and drops whitespace layout, and
has a table almost four times larger. Training takes about a second; the result is cached under
``<cache>/tokenizers/`` keyed by the training text and the recipe, and a run saves its copy next to
its checkpoints (:meth:`Tokenizer.save`), so a resumed or evaluated run reads the very same one.

Any existing ``tokenizer.json`` loads too (:func:`load_tokenizer`), e.g. the WordPiece tokenizer
shipped with all-MiniLM-L6-v2 for BERT-style MLM; its ``[SEP]`` separates documents and its
``[MASK]`` is the mask token.

Example:
    >>> tok = train_bpe(["to be or not to be"] * 20, vocab_size=300)
    >>> tok.decode(tok.encode("to be")) == "to be"
    True
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxslim.data.corpora import cache_root, documents_fingerprint
from jaxslim.paths import absolute

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
MASK_TOKEN = "<mask>"
BPE_SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)
# Looked up in this order in a loaded tokenizer. A BERT vocabulary has no end-of-text token; its
# [SEP] plays the same role between packed documents.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
PAD_CANDIDATES = (PAD_TOKEN, "[PAD]", "<|padding|>")
MASK_CANDIDATES = (MASK_TOKEN, "[MASK]")
# Bump when the training recipe changes, so caches made by the old recipe are not reused.
BPE_RECIPE = "jaxslim-bytelevel-bpe-1"
TOKENIZER_FILE = "tokenizer.json"


def _first_id(backend: tokenizers.Tokenizer, candidates: Sequence[str]) -> int | None:
    for token in candidates:
        idx = backend.token_to_id(token)
        if idx is not None:
            return int(idx)
    return None


class Tokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` plus the special ids that packing and masking need.

    Truncation and padding stored in a loaded file are switched off: documents are encoded whole
    and packed, never cut to a model's length or padded one by one.

    Attributes:
        backend: the ``tokenizers.Tokenizer``.
        source: where it came from (a path, or ``"trained"``).
        vocab_size: number of ids, added tokens included.
        eos_id: id appended after every document.
        pad_id: id of padding rows in the last validation batch (``eos_id`` when there is none).
        mask_id: id of the MLM mask token, or ``None`` when the vocabulary has none.
        special_ids: sorted ids of special tokens; MLM never masks them nor draws them at random.
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, source: str = "trained"):
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.source = source
        self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        eos = _first_id(backend, EOS_CANDIDATES)
        if eos is None:
            raise ValueError(
                f"tokenizer {source} has no end-of-text token to separate documents; looked for "
                f"{', '.join(EOS_CANDIDATES)}"
            )
        self.eos_id = eos
        pad = _first_id(backend, PAD_CANDIDATES)
        self.pad_id = eos if pad is None else pad
        self.mask_id = _first_id(backend, MASK_CANDIDATES)
        specials = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self.special_ids = np.array(sorted(specials | {eos, self.pad_id}), np.int64)

    def to_json(self) -> str:
        """The tokenizer serialised as ``tokenizer.json`` text."""
        return self.backend.to_str()

    @property
    def fingerprint(self) -> str:
        """sha256 of the serialised tokenizer; token caches are keyed by it."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, no special tokens added.

        Example:
            >>> tok = train_bpe(["abc abc"] * 10, vocab_size=270)
            >>> tok.decode(tok.encode("abc")) == "abc"
            True
        """
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[np.ndarray]:
        """Ids of many texts at once (parallel in Rust), as int64 arrays, no special tokens added."""
        # The fast variant skips computing character offsets, which packing never uses.
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int64) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, special tokens included (so document boundaries stay visible)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes ``tokenizer.json`` into ``directory`` (a run directory), created if needed.

        An identical file already there is kept; a different one is never overwritten.

        Returns:
            The path of the file.

        Raises:
            FileExistsError: ``directory`` already holds a different ``tokenizer.json`` (the run was
                made with another tokenizer).
        """
        directory = absolute(directory)
        path = directory / TOKENIZER_FILE
        text = self.to_json()
        if path.exists():
            if path.read_text(encoding="utf-8") == text:
                return path
            raise FileExistsError(
                f"{path} holds a different tokenizer than this data pipeline's ({self.source}); a run "
                "must keep the tokenizer it started with. Pass DataConfig.tokenizer="
                f"'{path}' to use it, or choose a new run directory."
            )
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, text)
        return path

    def __repr__(self) -> str:
        return (
            f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, mask_id={self.mask_id})"
        )


def _atomic_write(path: pathlib.Path, text: str) -> None:
    # Write beside the target and rename, so a reader (or a concurrent host sharing the cache)
    # never sees a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a ``tokenizer.json`` (or the one inside a folder, such as a run directory).

    Args:
        path: the file, or a folder that holds ``tokenizer.json``.

    Returns:
        The tokenizer.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a Hugging Face ``tokenizers`` file, or has no end-of-text token.

    Example:
        >>> tok = load_tokenizer("runs/shakespeare")  # doctest: +SKIP
    """
    p = absolute(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"tokenizer file {p} does not exist (expected a tokenizer.json or its folder)"
        )
    try:
        backend = tokenizers.Tokenizer.from_file(str(p))
    except Exception as e:  # noqa: BLE001 - the Rust side raises a bare Exception on a bad file
        raise ValueError(f"{p} is not a Hugging Face tokenizers file: {e}") from e
    return Tokenizer(backend, source=str(p))


def train_bpe(documents: Sequence[str], vocab_size: int, *, min_frequency: int = 2) -> Tokenizer:
    """Trains a byte-level BPE with the special tokens ``<|endoftext|>``, ``<pad>``, ``<mask>``.

    Args:
        documents: the training text (never the validation split).
        vocab_size: target vocabulary size, specials and the 256 byte symbols included; a small
            corpus may yield fewer tokens (no pair left occurs ``min_frequency`` times).
        min_frequency: a pair is merged only if it occurs at least this often.

    Returns:
        The trained tokenizer (ids 0, 1, 2 are the special tokens).

    Example:
        >>> tok = train_bpe(["the cat sat on the mat"] * 50, vocab_size=280)
        >>> tok.eos_id, tok.pad_id, tok.mask_id
        (0, 1, 2)
    """
    backend = tokenizers.Tokenizer(models.BPE())
    # No prefix space: a document starts exactly as written and decoding gives it back unchanged.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BPE_SPECIAL_TOKENS),
        # All 256 byte symbols from the start, so text unseen in training still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer, length=len(documents))
    return Tokenizer(backend, source="trained")


def cached_bpe(
    documents: Sequence[str],
    vocab_size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """:func:`train_bpe`, trained once and then read from the cache.

    The cache key is the training text (:func:`~jaxslim.data.corpora.documents_fingerprint`), the
    vocabulary size, ``min_frequency`` and the recipe version, so a changed corpus, split or size
    trains a new tokenizer and nothing stale is reused.

    Args:
        documents: the training split.
        vocab_size: target vocabulary size.
        cache_dir: root of the data cache (see :func:`~jaxslim.data.corpora.cache_root`).
        min_frequency: see :func:`train_bpe`.

    Returns:
        The tokenizer; its ``source`` is the cached file.

    Example:
        >>> tok = cached_bpe(train_docs, 8192)  # doctest: +SKIP
    """
    key = hashlib.sha256(
        f"{BPE_RECIPE}|{vocab_size}|{min_frequency}|{documents_fingerprint(documents)}".encode()
    ).hexdigest()[:20]
    path = cache_root(cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{key}" / TOKENIZER_FILE
    if path.is_file():
        try:
            return load_tokenizer(path)
        except ValueError:
            pass  # an unreadable cache entry is rebuilt below
    tok = train_bpe(documents, vocab_size, min_frequency=min_frequency)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, tok.to_json())
    # Read back what was written, so the first run and every later one see byte-identical
    # tokenizers (and hence the same token-cache keys and run-directory copies).
    return load_tokenizer(path)
