"""``TextData``: a ``DataConfig`` turned into tokenized, packed, split data and its iterators.

The steps, each cached so a second run starts in about a second:

1. documents of the corpus (:func:`~jaxslim.data.corpora.corpus_text`; embedded corpora are
   downloaded and extracted once);
2. a seeded, document-level train / validation split (:func:`~jaxslim.data.split.split_documents`);
3. the tokenizer: the given ``tokenizer.json``, or a byte-level BPE trained on the training split
   only (:func:`~jaxslim.data.tokenizer.cached_bpe`);
4. one id stream per split with an end-of-text id after every document, saved as ``.npy``
   (:func:`~jaxslim.data.packing.tokenize_documents`);
5. rows of ``seq_len + 1`` (causal LM) or ``seq_len`` (MLM) tokens, read by a resumable, shuffled,
   per-host training iterator and a fixed validation pass.

With ``DataConfig.manifest`` set, steps 1-4 were done once by ``jaxslim-data prepare``
(:mod:`jaxslim.data.prepare`): the id streams are the manifest's sharded ``train`` / ``val`` files,
read from disk a batch at a time (:class:`~jaxslim.data.shards.ShardedTokens`), shuffled by a
computed permutation and prefetched on a thread, so the memory of the data path does not grow
with the corpus.

Every host runs the same steps on its own and gets the same result: the split and the shuffle are
seeded, and BPE training gave byte-identical tokenizers on repeated runs. A run keeps its tokenizer
in its run directory (:meth:`TextData.save_tokenizer`), which refuses to overwrite a different one;
pass that file as ``DataConfig.tokenizer`` to pin it when resuming elsewhere.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxslim.config import DataConfig
from jaxslim.data.baselines import ngram_baselines
from jaxslim.data.corpora import cache_root, corpus_text
from jaxslim.data.iterators import Prefetcher, TrainIterator, validation_batches
from jaxslim.data.masking import MlmMasker
from jaxslim.data.packing import PackedSequences, tokenize_documents
from jaxslim.data.shards import Manifest, PreparedDataError, ShardedTokens, read_manifest, verify_shards
from jaxslim.data.split import split_documents
from jaxslim.data.tokenizer import cached_bpe, load_tokenizer

log = logging.getLogger(__name__)

# The n-gram baselines of prepared data are fitted and scored on this many tokens of each split:
# enough for a stable estimate, and memory that does not grow with the corpus.
BASELINE_TOKENS = 4_000_000


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is not None and process_count is not None:
        return process_index, process_count
    # Imported only when the caller leaves the host to JAX, so the data package itself does not
    # start a JAX backend.
    import jax

    return (
        jax.process_index() if process_index is None else process_index,
        jax.process_count() if process_count is None else process_count,
    )


class TextData:
    """Tokenized, split and packed text for one :class:`~jaxslim.config.DataConfig`.

    Args:
        config: the data config.

    Attributes:
        config: the config.
        tokenizer: the :class:`~jaxslim.data.tokenizer.Tokenizer`.
        train_tokens / val_tokens: the id streams of the two splits.
        train_sequences / val_sequences: their packed rows.
        stats: document, character, token and row counts, and seconds per preparation step.
        manifest: the :class:`~jaxslim.data.shards.Manifest` of prepared data, else ``None``.

    Raises:
        ValueError / FileNotFoundError / CorpusError: from the corpus, the tokenizer or the split;
            also a split with less text than one row, and MLM with a tokenizer lacking a mask token.
        PreparedDataError: (a ``ValueError``) a prepared dataset that is damaged, incomplete or
            made with another tokenizer than ``DataConfig.tokenizer``.

    Example:
        >>> data = TextData(DataConfig(corpus="shakespeare", seq_len=256, batch_size=32))  # doctest: +SKIP
        >>> batch = next(data.train_iterator(process_index=0, process_count=1))  # doctest: +SKIP
        >>> batch["tokens"].shape  # doctest: +SKIP
        (32, 257)
    """

    def __init__(self, config: DataConfig):
        self.config = config
        self.manifest: Manifest | None = None
        self.train_tokens: np.ndarray | ShardedTokens  # in memory, or prepared shards read on demand
        self.val_tokens: np.ndarray | ShardedTokens
        if config.manifest is not None:
            self._open_prepared(config)
        else:
            self._build(config)
        causal = not config.mlm
        self.train_sequences = PackedSequences(self.train_tokens, config.seq_len, causal=causal)
        self.val_sequences = PackedSequences(self.val_tokens, config.seq_len, causal=causal)
        source = config.corpus if self.manifest is None else str(self.manifest.path)
        for split, rows, ids in (
            ("training", self.train_sequences, self.train_tokens),
            ("validation", self.val_sequences, self.val_tokens),
        ):
            if len(rows) == 0:
                raise ValueError(
                    f"the {split} split of corpus {source!r} has {len(ids)} tokens, fewer than "
                    f"one sequence of {rows.width}; lower DataConfig.seq_len"
                    + (
                        (" or raise DataConfig.val_fraction" if split == "validation" else " or add text")
                        if self.manifest is None
                        else " or prepare more text (`jaxslim-data prepare --val-fraction`)"
                    )
                )
        if config.mlm and self.tokenizer.mask_id is None:
            raise ValueError(
                f"DataConfig.mlm is set but tokenizer {self.tokenizer.source} has no mask token "
                "(looked for <mask>, [MASK]); use a trained BPE or a BERT tokenizer"
            )
        self._masker = (
            MlmMasker(
                mask_id=self.tokenizer.mask_id,  # type: ignore[arg-type]  # not None under mlm: checked above
                vocab_size=self.tokenizer.vocab_size,
                special_ids=self.tokenizer.special_ids,
                probability=config.mlm_probability,
            )
            if config.mlm
            else None
        )
        self.stats.update(
            train_sequences=len(self.train_sequences),
            val_sequences=len(self.val_sequences),
            vocab_size=self.tokenizer.vocab_size,
        )
        log.info("data: %s", self.stats)

    def _open_prepared(self, config: DataConfig) -> None:
        t = time.perf_counter()
        assert config.manifest is not None  # the caller's condition
        m = read_manifest(pathlib.Path(config.manifest).expanduser().absolute())
        if config.verify_shards:
            verify_shards(m)
        self.manifest = m
        self.tokenizer = load_tokenizer(m.tokenizer_path)
        if config.tokenizer is not None:
            given = load_tokenizer(pathlib.Path(config.tokenizer).expanduser().absolute())
            if given.fingerprint != m.tokenizer_sha256:
                raise PreparedDataError(
                    f"DataConfig.tokenizer {given.source} (sha256 {given.fingerprint}) is not the "
                    f"tokenizer the prepared data in {m.directory} was made with (sha256 "
                    f"{m.tokenizer_sha256}); drop DataConfig.tokenizer or prepare the data with it"
                )
        self.train_tokens = m.reader("train")
        self.val_tokens = m.reader("val")
        self.stats: dict[str, Any] = {
            "manifest": str(m.path),
            "train_documents": m.documents("train"),
            "val_documents": m.documents("val"),
            "train_tokens": m.tokens("train"),
            "val_tokens": m.tokens("val"),
            "train_shards": len(m.splits["train"]),
            "val_shards": len(m.splits["val"]),
            "open_s": time.perf_counter() - t,
        }

    def _build(self, config: DataConfig) -> None:
        root = cache_root(config.cache_dir)
        times: dict[str, float] = {}

        t = time.perf_counter()
        docs = corpus_text(config.corpus, root, text_field=config.text_field)
        train_docs, val_docs = split_documents(docs, config.val_fraction, seed=config.split_seed)
        times["corpus_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if config.tokenizer is not None:
            self.tokenizer = load_tokenizer(config.tokenizer)
        else:
            self.tokenizer = cached_bpe(train_docs, config.bpe_vocab_size, cache_dir=root)
        times["tokenizer_s"] = time.perf_counter() - t
        if config.mlm and self.tokenizer.mask_id is None:
            raise ValueError(
                f"DataConfig.mlm is set but tokenizer {self.tokenizer.source} has no mask token "
                "(looked for <mask>, [MASK]); use a trained BPE or a BERT tokenizer"
            )

        t = time.perf_counter()
        self.train_tokens = tokenize_documents(self.tokenizer, train_docs, cache_dir=root)
        self.val_tokens = tokenize_documents(self.tokenizer, val_docs, cache_dir=root)
        times["tokenize_s"] = time.perf_counter() - t
        self.stats = {
            "train_documents": len(train_docs),
            "val_documents": len(val_docs),
            "train_chars": sum(len(d) for d in train_docs),
            "val_chars": sum(len(d) for d in val_docs),
            "train_tokens": len(self.train_tokens),
            "val_tokens": len(self.val_tokens),
            **times,
        }

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the model's vocabulary must be at least this large)."""
        return self.tokenizer.vocab_size

    def train_iterator(
        self, *, process_index: int | None = None, process_count: int | None = None
    ) -> TrainIterator | Prefetcher:
        """A fresh training iterator at the start of epoch 0 (``set_state`` to resume); over
        prepared data with ``DataConfig.prefetch``, wrapped in a
        :class:`~jaxslim.data.iterators.Prefetcher`.

        Args:
            process_index: this host; default ``jax.process_index()``.
            process_count: number of hosts; default ``jax.process_count()``.
        """
        index, count = _process(process_index, process_count)
        prepared = self.manifest is not None
        it = TrainIterator(
            self.train_sequences,
            global_batch_size=self.config.batch_size,
            seed=self.config.seed,
            process_index=index,
            process_count=count,
            masker=self._masker,
            shuffle="feistel" if prepared else "table",
            data_id=self.manifest.fingerprint if self.manifest is not None else None,
        )
        if prepared and self.config.prefetch:
            return Prefetcher(it, self.config.prefetch)
        return it

    def val_batches(
        self,
        *,
        batch_size: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the validation split (see :func:`~jaxslim.data.iterators.validation_batches`).

        Args:
            batch_size: global batch size; default ``config.batch_size``.
            process_index: this host; default ``jax.process_index()``.
            process_count: number of hosts; default ``jax.process_count()``.
        """
        index, count = _process(process_index, process_count)
        return validation_batches(
            self.val_sequences,
            global_batch_size=batch_size or self.config.batch_size,
            process_index=index,
            process_count=count,
            pad_id=self.tokenizer.pad_id,
            masker=self._masker,
            seed=self.config.seed,
        )

    def save_tokenizer(self, run_dir: str | os.PathLike) -> pathlib.Path:
        """Writes the tokenizer into the run directory (never over a different one); returns its path."""
        return self.tokenizer.save(run_dir)

    def ngram_baselines(self) -> dict[str, float]:
        """Unigram and bigram validation losses in nats per token (see
        :func:`~jaxslim.data.baselines.ngram_baselines`)."""
        if self.manifest is None:
            return ngram_baselines(
                np.asarray(self.train_tokens), np.asarray(self.val_tokens), self.vocab_size
            )
        # prepared data: fitted and scored on the first BASELINE_TOKENS of each split
        train = self.train_tokens[: min(BASELINE_TOKENS, len(self.train_tokens))]
        val = self.val_tokens[: min(BASELINE_TOKENS, len(self.val_tokens))]
        return ngram_baselines(train, val, self.vocab_size)

    def __repr__(self) -> str:
        s = self.stats
        source = (
            f"corpus={self.config.corpus!r}"
            if self.manifest is None
            else f"manifest={str(self.manifest.path)!r}"
        )
        return (
            f"TextData({source}, vocab_size={self.vocab_size}, "
            f"train_sequences={s['train_sequences']}, val_sequences={s['val_sequences']})"
        )
