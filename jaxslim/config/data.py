"""Data config: corpus, tokenizer, packing, split, order and MLM masking."""

from __future__ import annotations

from dataclasses import dataclass

from jaxslim.config.validate import Config, at_least, between, bounded, nonempty

# 256 byte symbols plus the three special tokens of a trained byte-level BPE: a smaller vocabulary
# could not encode every byte.
MIN_BPE_VOCAB = 259
# Token ids are stored on disk as uint32 at most; 2**20 is far beyond any useful trained BPE.
MAX_BPE_VOCAB = 1 << 20


@dataclass(frozen=True)
class DataConfig(Config):
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

    corpus: str = nonempty("shakespeare")
    seq_len: int = at_least(1, 256)
    batch_size: int = at_least(1, 32)
    tokenizer: str | None = nonempty(None)
    bpe_vocab_size: int = between(MIN_BPE_VOCAB, MAX_BPE_VOCAB, 8192)
    val_fraction: float = bounded(0.05, gt=0, le=0.5)
    split_seed: int = at_least(0, 0)
    seed: int = at_least(0, 0)
    mlm: bool = False
    mlm_probability: float = between(0, 1, 0.15, open_low=True, open_high=True)
    text_field: str = nonempty("text")
    cache_dir: str | None = nonempty(None)
    manifest: str | None = nonempty(None)
    prefetch: int = between(0, 64, 2)
    verify_shards: bool = False

    @property
    def sequence_width(self) -> int:
        """Tokens per packed sequence: ``seq_len + 1`` for causal LM, ``seq_len`` for MLM."""
        return self.seq_len if self.mlm else self.seq_len + 1
