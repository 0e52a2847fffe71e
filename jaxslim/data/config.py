"""``DataConfig``: which text to train on, how it is tokenized, packed, split, shuffled and masked.

A frozen, hashable dataclass validated in ``__post_init__``; every error names the field, the value
it got and the values it accepts.

Example:
    >>> cfg = DataConfig(corpus="shakespeare", seq_len=128, batch_size=16)
    >>> cfg.bpe_vocab_size
    8192
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    @property
    def sequence_width(self) -> int:
        """Tokens per packed sequence: ``seq_len + 1`` for causal LM, ``seq_len`` for MLM."""
        return self.seq_len if self.mlm else self.seq_len + 1
