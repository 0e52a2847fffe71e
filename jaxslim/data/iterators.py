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

**Shuffles.** ``shuffle="table"`` (the in-memory corpora) draws each epoch's permutation as a
table of ``n`` int64s. ``shuffle="feistel"`` (prepared data, :mod:`jaxslim.data.shards`) computes
the same kind of bijection of ``[0, n)`` on the fly (:class:`FeistelPermutation`), so the
iterator's memory stays one batch however many rows the corpus has.

**Prefetch.** :class:`Prefetcher` builds the next batches on a background thread while the step
runs; its state is the position after the last batch *handed out*, so batches built ahead and lost
at a kill are built again on resume.

`grain` offers the same random-access shuffle and a checkpointable iterator; it is not used here
(see :mod:`jaxslim.data.prepare` for the evaluation against prepared, larger-than-memory data):
grain's usual per-host sharding (``ds[process_index::process_count]``) changes the global batch
with the host count, and its iterator state is tied to its version; the few lines below give the
properties directly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from jaxslim.data.masking import IGNORE_INDEX, MlmMasker
from jaxslim.data.packing import PackedSequences

STATE_VERSION = 1
# Distinct first entropy words keep the shuffle and the two masking streams independent.
_SHUFFLE_TAG, _TRAIN_MASK_TAG, _VAL_MASK_TAG = 0, 1, 2


_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a cheap, well-mixing bijection of uint64 (wrap-around is intended)
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A seeded pseudo-random permutation of ``[0, n)`` evaluated per index, in O(1) memory.

    A balanced Feistel network on ``2k`` bits (the smallest even width covering ``n``) is a
    bijection of ``[0, 4^k)``; re-applying it to values ``>= n`` until they fall below ``n`` ("cycle
    walking") restricts it to a bijection of ``[0, n)``. The domain is under ``4n``, so a few
    rounds of walking at most on average.

    Args:
        n: size of the domain.
        key: entropy of the round keys (e.g. ``(seed, tag, epoch)``).
        rounds: Feistel rounds.

    Example:
        >>> p = FeistelPermutation(10, (0, 0, 0))
        >>> sorted(p(np.arange(10)).tolist()) == list(range(10))
        True
    """

    def __init__(self, n: int, key, rounds: int = 6):
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        self.keys = np.random.default_rng(key).integers(0, 2**63, size=rounds, dtype=np.uint64)

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix64(right ^ k) & self.mask)
        return (left << self.half) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        x = self._round_trip(np.atleast_1d(np.asarray(index, np.uint64)))
        out_of_range = x >= self.n
        while out_of_range.any():
            x[out_of_range] = self._round_trip(x[out_of_range])
            out_of_range = x >= self.n
        return x.astype(np.int64)


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
        shuffle: ``"table"`` (a stored permutation per epoch) or ``"feistel"`` (computed per index,
            memory independent of the number of rows).
        data_id: names the data (a manifest's sha256); a state saved for other data is refused.

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
        shuffle: Literal["table", "feistel"] = "table",
        data_id: str | None = None,
    ):
        if shuffle not in ("table", "feistel"):
            raise ValueError(f"shuffle must be 'table' or 'feistel', got {shuffle!r}")
        if len(sequences) == 0:
            raise ValueError("the training split has no complete sequence: lower seq_len or add text")
        self.local_batch_size = _check_hosts(global_batch_size, process_index, process_count)
        self.sequences = sequences
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.masker = masker
        self.shuffle = shuffle
        self.data_id = data_id
        self.position = 0  # next stream position (rows since the start of epoch 0)
        self._perms: dict[int, Any] = {}

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

    def _permutation(self, epoch: int):
        perm = self._perms.get(epoch)
        if perm is None:
            if self.shuffle == "feistel":
                perm = FeistelPermutation(self.num_sequences, [self.seed, _SHUFFLE_TAG, epoch])
            else:
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
            perm = self._permutation(int(e))
            out[sel] = perm(within[sel]) if self.shuffle == "feistel" else perm[within[sel]]
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
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "epoch": int(epoch),
            "index": int(index),
            "seed": int(self.seed),
            "num_sequences": int(self.num_sequences),
            "sequence_width": int(self.sequences.width),
        }
        # Only prepared data adds these, so states of the in-memory corpora are unchanged.
        if self.shuffle != "table":
            state["shuffle"] = self.shuffle
        if self.data_id is not None:
            state["data"] = self.data_id
        return state

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
        if state.get("shuffle", "table") != self.shuffle:
            raise ValueError(
                f"the data iterator state was saved with the {state.get('shuffle', 'table')!r} shuffle, "
                f"this iterator uses {self.shuffle!r}: resume with the same kind of data (prepared "
                "manifest or in-memory corpus)"
            )
        if self.data_id is not None and state.get("data", self.data_id) != self.data_id:
            raise ValueError(
                f"the data iterator state was saved for prepared data {state['data']}, not "
                f"{self.data_id} (manifest sha256): resume with the manifest the run started with"
            )
        if epoch < 0 or not 0 <= index < self.num_sequences:
            raise ValueError(f"data iterator state out of range: epoch {epoch}, index {index}")
        self.position = epoch * self.num_sequences + index


class Prefetcher:
    """Builds the next ``depth`` batches of an iterator on a background thread.

    Helps when reading a batch waits on storage (a network file system, a cold page cache); the
    thread starts at the first ``next`` and stops at ``set_state`` / ``close``. ``get_state`` is the
    position after the last batch handed out, never after the batches built ahead.

    Args:
        iterator: a :class:`TrainIterator` (anything with ``get_state`` / ``set_state``).
        depth: batches built ahead.

    Example:
        >>> it = Prefetcher(TrainIterator(PackedSequences(np.arange(101), seq_len=4), global_batch_size=5))
        >>> _ = next(it); it.get_state()["index"]
        5
        >>> it.close()
    """

    def __init__(self, iterator, depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.iterator = iterator
        self.depth = depth
        self._state: dict | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()

    def __getattr__(self, name: str):
        # local_batch_size, steps_per_epoch, ... of the wrapped iterator
        try:
            return getattr(self.__dict__["iterator"], name)
        except KeyError:
            raise AttributeError(name) from None

    @staticmethod
    def _work(iterator, q: queue.Queue, stop: threading.Event) -> None:
        # A static method: the thread holds no reference to the Prefetcher, so dropping the
        # Prefetcher (end of a training run) collects it, and __del__ stops the thread.
        while not stop.is_set():
            item: tuple[Any, Any] | BaseException
            try:
                item = (next(iterator), iterator.get_state())
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._thread is None:
            if self._state is None:
                self._state = self.iterator.get_state()
            self._stop = threading.Event()
            self._queue = queue.Queue(self.depth)
            self._thread = threading.Thread(
                target=self._work,
                args=(self.iterator, self._queue, self._stop),
                name="jaxslim-prefetch",
                daemon=True,
            )
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, self._state = item
        return batch

    def get_state(self) -> dict[str, Any]:
        """The position after the last batch returned by ``next``."""
        return dict(self._state) if self._state is not None else self.iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Drops the batches built ahead and continues from ``state``."""
        self.close()
        self.iterator.set_state(state)
        self._state = None

    def close(self) -> None:
        """Stops the background thread (``next`` starts it again from the current state)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self._state is not None:
                # the thread ran ahead: rewind the wrapped iterator to what was handed out
                self.iterator.set_state(self._state)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


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
