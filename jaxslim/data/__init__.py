"""Text pipelines: corpora, tokenizers, packing, shuffled resumable per-host batches, MLM masking,
and corpora prepared once into token shards on disk (:func:`prepare`, ``DataConfig.manifest``).

Start from a :class:`DataConfig` and :class:`TextData`; the pieces below it are public for use in
other pipelines.

Example:
    >>> from jaxslim.data import DataConfig, TextData
    >>> data = TextData(DataConfig(corpus="shakespeare", seq_len=128, batch_size=16))  # doctest: +SKIP
    >>> it = data.train_iterator(process_index=0, process_count=1)  # doctest: +SKIP
    >>> next(it)["tokens"].shape  # doctest: +SKIP
    (16, 129)
"""

from jaxslim.config import DataConfig
from jaxslim.data.baselines import ngram_baselines
from jaxslim.data.corpora import (
    CORPORA,
    CorpusError,
    cache_root,
    corpus_files,
    corpus_text,
    documents_fingerprint,
    labelled_sentences,
)
from jaxslim.data.iterators import FeistelPermutation, Prefetcher, TrainIterator, validation_batches
from jaxslim.data.masking import IGNORE_INDEX, MlmMasker
from jaxslim.data.packing import PackedSequences, tokenize_documents
from jaxslim.data.pipeline import TextData
from jaxslim.data.prepare import prepare
from jaxslim.data.shards import Manifest, PreparedDataError, ShardedTokens, read_manifest, verify_shards
from jaxslim.data.split import split_documents
from jaxslim.data.tokenizer import Tokenizer, cached_bpe, load_tokenizer, train_bpe

__all__ = [
    "CORPORA",
    "IGNORE_INDEX",
    "CorpusError",
    "DataConfig",
    "FeistelPermutation",
    "Manifest",
    "MlmMasker",
    "PackedSequences",
    "Prefetcher",
    "PreparedDataError",
    "ShardedTokens",
    "TextData",
    "Tokenizer",
    "TrainIterator",
    "cache_root",
    "cached_bpe",
    "corpus_files",
    "labelled_sentences",
    "corpus_text",
    "documents_fingerprint",
    "load_tokenizer",
    "ngram_baselines",
    "prepare",
    "read_manifest",
    "split_documents",
    "tokenize_documents",
    "train_bpe",
    "validation_batches",
    "verify_shards",
]
