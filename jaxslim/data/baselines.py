"""Unigram and bigram baselines: the validation loss a model must beat to have learnt anything.

Both are add-k smoothed counts fitted on the training stream and scored on the validation stream
in nats per token, the unit of the models' cross-entropy. ``k`` matters a lot for the bigram with
a large vocabulary (add-one gives most of the mass to unseen pairs), so it is chosen from a small
grid on the last 10% of the training stream and the model is then refitted on all of it; the
validation text is never used to tune anything.
"""

from __future__ import annotations

import math

import numpy as np

K_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def _unigram_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    return np.bincount(ids, minlength=vocab_size).astype(np.float64)


def _unigram_nll(counts: np.ndarray, ids: np.ndarray, k: float) -> float:
    p = (counts[ids] + k) / (counts.sum() + k * counts.size)
    return float(-np.log(p).mean())


class _Bigrams:
    """Sparse bigram counts: pairs are coded ``prev * vocab + next`` and kept sorted."""

    def __init__(self, ids: np.ndarray, vocab_size: int):
        self.vocab_size = vocab_size
        codes = ids[:-1] * np.int64(vocab_size) + ids[1:]
        self.codes, self.counts = np.unique(codes, return_counts=True)
        # Context counts are over the previous token of each pair, not the whole stream, so the
        # conditional distributions sum to one.
        self.context = np.bincount(ids[:-1], minlength=vocab_size).astype(np.float64)

    def pair_counts(self, codes: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.codes, codes)
        at_c = np.minimum(at, len(self.codes) - 1)
        hit = (at < len(self.codes)) & (self.codes[at_c] == codes)
        return np.where(hit, self.counts[at_c], 0).astype(np.float64)

    def nll(self, ids: np.ndarray, k: float) -> float:
        prev, nxt = ids[:-1], ids[1:]
        c = self.pair_counts(prev * np.int64(self.vocab_size) + nxt)
        p = (c + k) / (self.context[prev] + k * self.vocab_size)
        return float(-np.log(p).mean())


def _best_k(score, grid: tuple[float, ...]) -> float:
    return min(grid, key=score)


def ngram_baselines(
    train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int, *, k_grid: tuple[float, ...] = K_GRID
) -> dict[str, float]:
    """Validation cross-entropy (nats / token) of uniform, unigram and bigram models.

    Args:
        train_ids: the training id stream (1-D).
        val_ids: the validation id stream (1-D, at least 2 ids).
        vocab_size: number of ids.
        k_grid: add-k values to choose from (on a held-out tail of ``train_ids``).

    Returns:
        ``{"uniform": log V, "unigram": ..., "bigram": ..., "unigram_k": ..., "bigram_k": ...}``;
        the bigram scores every validation token but the first.

    Raises:
        ValueError: streams too short, or ids outside ``[0, vocab_size)``.

    Example:
        >>> ids = np.arange(5000) % 7 * 3  # 7 of 50 ids, each one fixing the next
        >>> b = ngram_baselines(ids[:4000], ids[4000:], 50)
        >>> b["bigram"] < b["unigram"] < b["uniform"]
        True
    """
    train = np.asarray(train_ids, np.int64)
    val = np.asarray(val_ids, np.int64)
    if train.ndim != 1 or val.ndim != 1 or len(train) < 20 or len(val) < 2:
        raise ValueError(
            f"need 1-D streams of >= 20 training and >= 2 validation ids, got {train.shape}, {val.shape}"
        )
    for name, ids in (("train_ids", train), ("val_ids", val)):
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"{name} holds ids outside [0, {vocab_size}): [{ids.min()}, {ids.max()}]")
    cut = len(train) - max(len(train) // 10, 2)
    fit, held = train[:cut], train[cut:]
    uni_fit = _unigram_counts(fit, vocab_size)
    uni_k = _best_k(lambda k: _unigram_nll(uni_fit, held, k), k_grid)
    bi_fit = _Bigrams(fit, vocab_size)
    bi_k = _best_k(lambda k: bi_fit.nll(held, k), k_grid)
    return {
        "uniform": math.log(vocab_size),
        "unigram": _unigram_nll(_unigram_counts(train, vocab_size), val, uni_k),
        "bigram": _Bigrams(train, vocab_size).nll(val, bi_k),
        "unigram_k": uni_k,
        "bigram_k": bi_k,
    }
