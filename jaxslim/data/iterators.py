"""Batch iterators over packed rows: a shuffled, resumable training stream and a fixed validation pass.

**Order.** Training reads an endless stream of rows: epoch ``e`` is the permutation
``default_rng([seed, 0, e]).permutation(n)`` of the ``n`` rows, and epochs follow one another
without a gap, so a batch may straddle two epochs and no row is ever skipped or repeated within an
epoch. Global batch ``k`` is stream positions ``[k * B, (k + 1) * B)``.

**Hosts.** Host ``process_index`` of ``process_count`` builds only its own contiguous slice of each
global batch (``B / process_count`` rows), the slice that
``jax.make_array_from_process_local_data`` expects, so the global batch is the same for one host or
many.

**State.** The whole position is two integers, ``{"epoch", "index"}``: the epoch and the next
position within it, plus a few fields that identify the data so a state from other data is
refused. It is JSON, goes into the checkpoint, and ``set_state`` continues exactly where the
stream stopped, even with another batch size or host count. No worker processes, no prefetch
buffers: building a batch is one fancy-indexing gather (plus masking), far below a train step.

`grain` offers the same random-access shuffle and a checkpointable iterator; it is not used here
because the data is one in-memory (memory-mapped) array, grain's usual per-host sharding
(``ds[process_index::process_count]``) changes the global batch with the host count, and its
iterator state is tied to its version; the few lines below give all three properties directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxslim.data.masking import IGNORE_INDEX, MlmMasker
from jaxslim.data.packing import PackedSequences

STATE_VERSION = 1
# Distinct first entropy words keep the shuffle and the two masking streams independent.
_SHUFFLE_TAG, _TRAIN_MASK_TAG, _VAL_MASK_TAG = 0, 1, 2


def _check_hosts(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count), got {process_index} of {process_count}"
        )
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"the global batch size {global_batch_size} must be a positive multiple of the "
            f"process count {process_count}"
        )
    return global_batch_size // process_count


class TrainIterator:
    """Endless per-host training batches of shuffled packed rows, resumable from a tiny state.

    Yields ``{"tokens": int32 [local_batch, seq_len + 1]}`` for causal LM, or, with a masker,
    ``{"tokens": int32 [local_batch, seq_len], "labels": int32 [local_batch, seq_len]}`` (labels
    -100 where not masked).

    Args:
        sequences: the packed training rows.
        global_batch_size: rows per step over all hosts.
        seed: seed of the per-epoch shuffle and of the masks.
        process_index: this host's index.
        process_count: number of hosts.
        masker: MLM masking; ``None`` for causal LM.

    Example:
        >>> rows = PackedSequences(np.arange(101), seq_len=4)
        >>> it = TrainIterator(rows, global_batch_size=5, seed=0)
        >>> first = next(it)["tokens"]; state = it.get_state(); second = next(it)["tokens"]
        >>> it2 = TrainIterator(rows, global_batch_size=5, seed=0); it2.set_state(state)
        >>> bool((next(it2)["tokens"] == second).all())
        True
    """

    def __init__(
        self,
        sequences: PackedSequences,
        *,
        global_batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        masker: MlmMasker | None = None,
    ):
        if len(sequences) == 0:
            raise ValueError("the training split has no complete sequence: lower seq_len or add text")
        self.local_batch_size = _check_hosts(global_batch_size, process_index, process_count)
        self.sequences = sequences
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.masker = masker
        self.position = 0  # next stream position (rows since the start of epoch 0)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def num_sequences(self) -> int:
        """Rows per epoch."""
        return len(self.sequences)

    @property
    def epoch(self) -> int:
        """The epoch of the next row."""
        return self.position // self.num_sequences

    @property
    def steps_per_epoch(self) -> float:
        """Global batches per epoch (fractional: batches run across epoch boundaries)."""
        return self.num_sequences / self.global_batch_size

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, _SHUFFLE_TAG, epoch]).permutation(self.num_sequences)
            # A batch touches at most a couple of epochs unless it is larger than an epoch; keep
            # only the newest two so memory stays at two permutations.
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = perm
        return perm

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """Row indices at the given stream positions."""
        epochs, within = np.divmod(np.asarray(positions, np.int64), self.num_sequences)
        out = np.empty(within.shape, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._permutation(int(e))[within[sel]]
        return out

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        lb = self.local_batch_size
        positions = self.position + self.process_index * lb + np.arange(lb, dtype=np.int64)
        tokens = self.sequences.take(self.rows_at(positions))
        self.position += self.global_batch_size
        if self.masker is None:
            return {"tokens": tokens}
        inputs, labels = self.masker(tokens, [(self.seed, _TRAIN_MASK_TAG, int(p)) for p in positions])
        return {"tokens": inputs, "labels": labels}

    def get_state(self) -> dict[str, Any]:
        """The iterator's position as a small JSON-serialisable dict, for the checkpoint.

        Example:
            >>> it = TrainIterator(PackedSequences(np.arange(41), seq_len=4), global_batch_size=4)
            >>> _ = next(it); _ = next(it); _ = next(it)
            >>> it.get_state()["epoch"], it.get_state()["index"]
            (1, 2)
        """
        epoch, index = divmod(self.position, self.num_sequences)
        return {
            "version": STATE_VERSION,
            "epoch": int(epoch),
            "index": int(index),
            "seed": int(self.seed),
            "num_sequences": int(self.num_sequences),
            "sequence_width": int(self.sequences.width),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a state returned by :meth:`get_state` (of this or an identical pipeline).

        The batch size and host count may differ from the run that saved it: the state is a
        position in the global stream of rows.

        Raises:
            ValueError: a malformed state, or one saved for other data (rows, width or seed differ).
        """
        try:
            version = int(state["version"])
            epoch, index = int(state["epoch"]), int(state["index"])
            saved = {k: int(state[k]) for k in ("seed", "num_sequences", "sequence_width")}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a data iterator state: {state!r} ({e})") from e
        if version != STATE_VERSION:
            raise ValueError(f"data iterator state version {version}, expected {STATE_VERSION}")
        ours = {
            "seed": self.seed,
            "num_sequences": self.num_sequences,
            "sequence_width": self.sequences.width,
        }
        if saved != ours:
            diff = ", ".join(
                f"{k} {saved[k]} (saved) vs {ours[k]} (now)" for k in ours if saved[k] != ours[k]
            )
            raise ValueError(
                f"the data iterator state was saved for other data: {diff}. Resume with the same "
                "corpus, tokenizer, split, seq_len and seed."
            )
        if epoch < 0 or not 0 <= index < self.num_sequences:
            raise ValueError(f"data iterator state out of range: epoch {epoch}, index {index}")
        self.position = epoch * self.num_sequences + index


def validation_batches(
    sequences: PackedSequences,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    pad_id: int = 0,
    masker: MlmMasker | None = None,
    seed: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the validation rows in their stored order, as per-host batches.

    The last global batch is filled up with rows of ``pad_id`` so every batch has the same shape
    (one compilation). Causal-LM batches carry ``"weights"`` float32 ``[local_batch, seq_len]``,
    1 on real targets and 0 on padding rows; MLM batches carry ``"labels"``, -100 on padding rows.
    MLM masks depend only on ``seed`` and the row, so every evaluation scores the same positions.

    Args:
        sequences: the packed validation rows.
        global_batch_size: rows per batch over all hosts.
        process_index: this host's index.
        process_count: number of hosts.
        pad_id: token id of padding rows.
        masker: MLM masking; ``None`` for causal LM.
        seed: seed of the validation masks.

    Yields:
        Batches ``{"tokens", "weights"}`` (causal LM) or ``{"tokens", "labels"}`` (MLM).

    Example:
        >>> rows = PackedSequences(np.arange(13), seq_len=4)  # 3 rows of 5 tokens
        >>> [b["weights"].sum(1).tolist() for b in validation_batches(rows, global_batch_size=2)]
        [[4.0, 4.0], [4.0, 0.0]]
    """
    lb = _check_hosts(global_batch_size, process_index, process_count)
    n = len(sequences)
    for start in range(0, n, global_batch_size):
        positions = start + process_index * lb + np.arange(lb, dtype=np.int64)
        valid = positions < n
        tokens = sequences.take(np.where(valid, positions, 0))
        tokens[~valid] = pad_id
        if masker is None:
            weights = np.broadcast_to(valid[:, None], (lb, sequences.width - 1)).astype(np.float32)
            yield {"tokens": tokens, "weights": weights}
        else:
            inputs, labels = masker(tokens, [(seed, _VAL_MASK_TAG, int(p)) for p in positions])
            inputs[~valid] = pad_id
            labels[~valid] = IGNORE_INDEX
            yield {"tokens": inputs, "labels": labels}
