"""Prepared token shards on disk: the manifest, its checks, and a reader whose memory is one batch.

``jaxslim-data prepare`` (:mod:`jaxslim.data.prepare`) writes a dataset directory::

    manifest.json          format, tokenizer sha256, split rule, per-split document / token counts,
                           and per shard: file, documents, tokens, bytes, sha256
    tokenizer.json         the tokenizer every shard was made with
    train/00000.bin ...    raw little-endian token ids (``dtype`` in the manifest), documents
    val/00000.bin ...      followed by the end-of-text id, exactly the stream of the in-memory path

A split is the concatenation of its shards in manifest order: one long id stream, cut into rows
by :class:`~jaxslim.data.packing.PackedSequences` exactly as an in-memory stream is. Shard paths in
the manifest are relative to it, so a dataset directory can be copied or mounted anywhere.

**Reading.** :class:`ShardedTokens` serves rows with ``os.preadv`` straight into the batch buffer.
It does not memory-map the shards: a host that reads random rows of a memory-mapped corpus for
long enough maps most of its pages, and those pages count in the process's resident memory (they
are reclaimable, but RSS limits and out-of-memory killers see them). Positioned reads leave the
data in the page cache, outside the process, so the reader's own memory is the batch plus a few
open file descriptors, whatever the corpus size.

**Checks.** Opening a manifest checks its format, that every shard exists with the size its token
count implies, and that ``tokenizer.json`` is the tokenizer the manifest names (sha256). Hashing
every shard (:func:`verify_shards`) reads the whole corpus, so it is explicit: ``jaxslim-data
verify``, or ``DataConfig.verify_shards``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT = "jaxslim-tokens-1"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val")
# Open file descriptors kept per reader; a corpus of thousands of shards reopens the least
# recently used ones instead of holding one descriptor per shard.
_MAX_OPEN = 64


class PreparedDataError(ValueError):
    """A prepared dataset is malformed, incomplete, corrupt or made with another tokenizer."""


def file_sha256(path: str | os.PathLike, *, block: int = 1 << 22) -> str:
    """sha256 hex digest of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    """One shard of a split, as the manifest records it."""

    file: str
    documents: int
    tokens: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A prepared dataset's ``manifest.json``, checked.

    Attributes:
        directory: the dataset directory (absolute).
        dtype: dtype of the token ids in the shards.
        tokenizer_sha256: sha256 of the tokenizer's JSON text.
        vocab_size / eos_id: of that tokenizer.
        splits: ``{"train": [Shard, ...], "val": [...]}``.
        raw: the manifest as read.
        fingerprint: sha256 of the manifest file; an iterator state names the data by it.
    """

    directory: pathlib.Path
    dtype: np.dtype
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    splits: dict[str, tuple[Shard, ...]]
    raw: dict[str, Any]
    fingerprint: str

    @property
    def path(self) -> pathlib.Path:
        return self.directory / MANIFEST_FILE

    @property
    def tokenizer_path(self) -> pathlib.Path:
        return self.directory / self.raw["tokenizer"]["file"]

    def tokens(self, split: str) -> int:
        """Token count of a split."""
        return sum(s.tokens for s in self.splits[split])

    def documents(self, split: str) -> int:
        """Document count of a split."""
        return sum(s.documents for s in self.splits[split])

    def reader(self, split: str) -> ShardedTokens:
        """A :class:`ShardedTokens` over one split."""
        return ShardedTokens([(self.directory / s.file, s.tokens) for s in self.splits[split]], self.dtype)


def _manifest_path(path: str | os.PathLike) -> pathlib.Path:
    p = pathlib.Path(path).expanduser().absolute()
    return p / MANIFEST_FILE if p.is_dir() else p


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> Manifest:
    """Reads and checks a prepared dataset's manifest.

    Args:
        path: ``manifest.json`` or the dataset directory.
        check_files: also check that every shard exists with the size its token count implies and
            that ``tokenizer.json`` hashes to the manifest's tokenizer sha256.

    Returns:
        The :class:`Manifest`.

    Raises:
        FileNotFoundError: no manifest at ``path``.
        PreparedDataError: a malformed manifest, a missing or wrongly sized shard, or a
            ``tokenizer.json`` that is not the manifest's tokenizer.

    Example:
        >>> m = read_manifest("data/prepared")  # doctest: +SKIP
        >>> m.tokens("train")  # doctest: +SKIP
        1234567
    """
    mpath = _manifest_path(path)
    if not mpath.is_file():
        raise FileNotFoundError(
            f"no prepared-data manifest at {mpath} (expected the manifest.json written by "
            "`jaxslim-data prepare`, or its directory)"
        )
    text = mpath.read_bytes()
    try:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise PreparedDataError(
                f"{mpath} has format {raw.get('format')!r}, expected {FORMAT!r} (a manifest of "
                "`jaxslim-data prepare`)"
            )
        tok = raw["tokenizer"]
        dtype = np.dtype(raw["dtype"])
        splits = {
            name: tuple(
                Shard(str(s["file"]), int(s["documents"]), int(s["tokens"]), str(s["sha256"]))
                for s in raw["splits"][name]["shards"]
            )
            for name in SPLITS
        }
        manifest = Manifest(
            directory=mpath.parent,
            dtype=dtype,
            tokenizer_sha256=str(tok["sha256"]),
            vocab_size=int(tok["vocab_size"]),
            eos_id=int(tok["eos_id"]),
            splits=splits,
            raw=raw,
            fingerprint=hashlib.sha256(text).hexdigest(),
        )
    except PreparedDataError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PreparedDataError(f"{mpath} is not a valid prepared-data manifest: {e!r}") from e
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise PreparedDataError(f"{mpath}: dtype {dtype} is not uint16 or uint32")
    if check_files:
        _check_files(manifest)
    return manifest


def _check_files(m: Manifest) -> None:
    problems = []
    for split, shards in m.splits.items():
        for s in shards:
            p = m.directory / s.file
            want = s.tokens * m.dtype.itemsize
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                problems.append(f"{p} is missing ({split} shard of {s.tokens} tokens)")
                continue
            if size != want:
                problems.append(f"{p} has {size} bytes, expected {want} ({s.tokens} tokens of {m.dtype})")
    if problems:
        raise PreparedDataError(
            f"the prepared data in {m.directory} is incomplete or damaged:\n  " + "\n  ".join(problems)
        )
    tp = m.tokenizer_path
    if not tp.is_file():
        raise PreparedDataError(f"{tp} is missing; the manifest's tokenizer has sha256 {m.tokenizer_sha256}")
    got = hashlib.sha256(tp.read_text(encoding="utf-8").encode("utf-8")).hexdigest()
    if got != m.tokenizer_sha256:
        raise PreparedDataError(
            f"{tp} has sha256 {got}, but the manifest's shards were made with tokenizer "
            f"{m.tokenizer_sha256}: the tokenizer file was replaced; prepare the data again"
        )


def verify_shards(manifest: Manifest, splits: Sequence[str] = SPLITS) -> None:
    """Hashes every shard and compares with the manifest (reads the whole corpus once).

    Raises:
        PreparedDataError: naming every shard whose sha256 differs, with both digests.

    Example:
        >>> verify_shards(read_manifest("data/prepared"))  # doctest: +SKIP
    """
    bad = []
    for split in splits:
        for s in manifest.splits[split]:
            p = manifest.directory / s.file
            got = file_sha256(p)
            if got != s.sha256:
                bad.append(f"{p}: sha256 {got}, expected {s.sha256}")
    if bad:
        raise PreparedDataError(
            f"corrupt shard{'s' if len(bad) > 1 else ''} in {manifest.directory} (prepare the data "
            "again or restore the files):\n  " + "\n  ".join(bad)
        )


class ShardedTokens:
    """A split's shards read as one 1-D id stream, by positioned reads into the caller's buffer.

    Supports ``len``, ``ndim``, ``dtype``, slicing (``x[a:b]``) and :meth:`windows`, the gather
    that :class:`~jaxslim.data.packing.PackedSequences` uses; a row may span two shards.

    Args:
        shards: ``(path, tokens)`` per shard, in stream order.
        dtype: the ids' dtype.

    Example:
        >>> import tempfile; d = pathlib.Path(tempfile.mkdtemp())
        >>> np.arange(5, dtype=np.uint16).tofile(d / "a.bin"); np.arange(5, 9, dtype=np.uint16).tofile(d / "b.bin")
        >>> x = ShardedTokens([(d / "a.bin", 5), (d / "b.bin", 4)], np.uint16)
        >>> x.windows(np.array([3]), 4).tolist()
        [[3, 4, 5, 6]]
    """

    ndim = 1

    def __init__(self, shards: Sequence[tuple[str | os.PathLike, int]], dtype: np.dtype | type):
        self.dtype = np.dtype(dtype)
        self.paths = [pathlib.Path(p) for p, _ in shards]
        counts = np.array([int(n) for _, n in shards], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes_read = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        try:
            fd = os.open(self.paths[shard], os.O_RDONLY)
        except FileNotFoundError as e:
            raise PreparedDataError(f"shard {self.paths[shard]} is missing") from e
        self._fds[shard] = fd
        if len(self._fds) > _MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _read(self, start: int, out: np.ndarray) -> None:
        """Fills ``out`` (1-D, contiguous) with ids ``[start, start + len(out))``."""
        n = len(out)
        if start < 0 or start + n > len(self):
            raise IndexError(f"token range [{start}, {start + n}) outside [0, {len(self)})")
        pos, done = start, 0
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        item = self.dtype.itemsize
        view = out.data.cast("B")
        while done < n:
            while self.offsets[shard + 1] <= pos:  # skip empty shards
                shard += 1
            take = min(n - done, int(self.offsets[shard + 1]) - pos)
            offset = (pos - int(self.offsets[shard])) * item
            buf = view[done * item : (done + take) * item]
            fd = self._fd(shard)
            got = 0
            while got < len(buf):
                k = os.preadv(fd, [buf[got:]], offset + got)
                if k == 0:
                    raise PreparedDataError(
                        f"shard {self.paths[shard]} ended early at byte {offset + got}: it is "
                        "truncated; verify the data (`jaxslim-data verify`) or prepare it again"
                    )
                got += k
            pos += take
            done += take
        self.bytes_read += n * item

    def windows(self, starts: np.ndarray, width: int) -> np.ndarray:
        """Ids ``[s, s + width)`` for each start ``s``, as an array ``[len(starts), width]``."""
        starts = np.asarray(starts, np.int64).reshape(-1)
        out = np.empty((len(starts), width), self.dtype)
        with self._lock:
            for i, s in enumerate(starts):
                self._read(int(s), out[i])
        return out

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("ShardedTokens supports slices and windows(), not fancy indexing")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise TypeError("ShardedTokens slices must have step 1")
        out = np.empty(max(stop - start, 0), self.dtype)
        with self._lock:
            self._read(start, out)
        return out

    def close(self) -> None:
        """Closes the open file descriptors (reopened on the next read)."""
        with self._lock:
            while self._fds:
                os.close(self._fds.popitem()[1])

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"ShardedTokens(shards={len(self.paths)}, tokens={len(self)}, dtype={self.dtype})"
