"""Tokenize a corpus once into sharded token files and a manifest (``jaxslim-data prepare``).

**Plan.** The inputs (globs of ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` files, folders of
them, an embedded corpus name or ``hf:owner/name``) are expanded and sorted, then cut into *units*
of about ``unit_bytes`` of input: JSON-lines files by byte ranges (a line belongs to the range its
first byte is in), parquet files by row groups, ``.txt`` files whole (one document per file, as in
:mod:`~jaxslim.data.corpora`), in-memory corpora by document ranges. The plan depends only on the
inputs and the options, never on the number of workers.

**Units become shards.** Each unit is tokenized on its own (documents in order, each followed by
the end-of-text id, as :func:`~jaxslim.data.packing.tokenize_documents` does) into
``train/<unit>.bin`` and ``val/<unit>.bin``, written beside their final names and renamed into
place, and then a small done-marker under ``.prepare/`` records its counts and sha256. So the
shards are byte-identical whether one process or many made them, and an interrupted prepare
resumes by skipping the units whose marker and files are in place. When every unit is done the
manifest is written (atomically) and ``.prepare/`` removed.

**Split.** A document goes to validation when a keyed hash of its text falls below
``val_fraction``: a per-document rule that needs no global view of the corpus, gives the same
answer in every worker, and sends duplicated documents to the same side (no leak of a repeated
document from training into validation).

**Tokenizer.** A given ``tokenizer.json``, or a byte-level BPE
(:func:`~jaxslim.data.tokenizer.train_bpe`) trained on the first ``bpe_sample_bytes`` of training
documents in plan order. It is saved as ``tokenizer.json`` next to the manifest, which records its
sha256.

**Parallelism.** ``workers > 1`` runs units in a process pool (``forkserver`` start: the parent may
hold JAX threads, which ``fork`` must not copy); each worker tokenizes single-threaded so the pool
does not oversubscribe the cores. ``workers=1`` runs in this process and lets the Rust tokenizer use
its own threads.

**Why not grain + ArrayRecord.** grain 0.2.18 was evaluated against this format and the in-house
iterator (``benchmarks/data_scale.py`` runs both when grain is importable). grain has the pieces:
a random-access index shuffle that needs no table, a checkpointable iterator, ArrayRecord files
with random access. It was not adopted, because on the guarantees that matter here it gives less
with more:

- *Fixed global batch for any host count.* grain shards per host before batching: either every
  ``P``-th row (``ds[index::count]``) or, with ``ShardOptions`` / ``IndexSampler``, a consecutive
  block of the dataset that each host then shuffles on its own. Either way which rows form global
  batch ``k``, and in what order, depends on the host count ``P``. Here host ``h`` takes the contiguous
  slice ``[h * B / P, (h + 1) * B / P)`` of global batch ``k``, the layout
  ``jax.make_array_from_process_local_data`` expects, for any ``P``.
- *Exact resume across batch size and host count.* grain's state is each host's position in its
  own slice of its own pipeline (and its format follows grain's version); the state here is one
  global row position, valid for any batch size and host count.
- *Packing.* ArrayRecord stores records: packed rows of one ``seq_len`` are baked in at write time
  (another ``seq_len`` means rewriting the corpus, and the rows overlap by one token). Shards here
  are the id stream; any ``seq_len`` packs at read time.
- *Dependencies and speed.* grain brings absl (its flags clash with pytest's argv, see the style
  notes), etils and the ``array_record`` C++ wheel; the in-house reader is numpy and ``os.preadv``
  (the reader, the Feistel shuffle and the prefetcher are about 250 lines). Measured on 2 shared
  cores, the same rows through ``grain.MapDataset`` (shuffle, map, batch) were 1.5-3x slower than
  the in-house iterator (two runs), and reading packed rows back from an ArrayRecord file through
  grain's ``ArrayRecordDataSource`` in-process ran at 45-110k tokens/s against 1.6-8M (one record
  per read; grain's worker processes were not tried, and would spend the same cores).

grain earns its keep with heavy per-example transforms run in worker processes (decoding images,
augmentations); slicing token rows is not that.

Example:
    >>> m = prepare(["corpus/*.jsonl"], "data/prepared", vocab_size=8192)  # doctest: +SKIP
    >>> m.tokens("train")  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from jaxslim.data.corpora import CORPORA, HUB_PREFIX, cache_root, corpus_text
from jaxslim.data.packing import stream_dtype
from jaxslim.data.shards import FORMAT, MANIFEST_FILE, SPLITS, Manifest, PreparedDataError, read_manifest
from jaxslim.data.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_bpe

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
WORK_DIR = ".prepare"
DEFAULT_UNIT_BYTES = 64 << 20
DEFAULT_BPE_SAMPLE_BYTES = 64 << 20
# Text per call into the tokenizer: keeps a worker's memory at a few MB of text and ids however
# large its unit, while giving the Rust side enough to batch.
_CHUNK_BYTES = 4 << 20
_CHUNK_DOCS = 1024


@dataclass(frozen=True)
class Source:
    """One input: a file (``kind`` from its suffix) or an in-memory corpus (``kind="memory"``)."""

    name: str
    kind: str
    size: int
    mtime_ns: int = 0


@dataclass(frozen=True)
class Piece:
    """Part of one source: a byte range (jsonl), a row-group range (parquet), a document range
    (memory) or the whole file (txt)."""

    source: int
    start: int
    stop: int
    nbytes: int


@dataclass(frozen=True)
class _Job:
    """What a worker needs to turn a unit into its shards."""

    index: int
    pieces: tuple[Piece, ...]
    sources: tuple[Source, ...]
    out: str
    text_field: str
    val_fraction: float
    split_seed: int
    dtype: str


# -- inputs and plan ------------------------------------------------------------------------------


def _file_source(path: pathlib.Path) -> Source:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"input file {path} has suffix {path.suffix!r}; supported: {', '.join(SUFFIXES)}")
    st = path.stat()
    return Source(str(path), suffix.lstrip("."), st.st_size, st.st_mtime_ns)


def expand_inputs(patterns: Sequence[str]) -> list[Source]:
    """The sources of ``patterns``, in a fixed order.

    Each pattern is an embedded corpus name (``"shakespeare"``), ``"hf:owner/name[:config]"``, a
    folder (its supported files, recursively, sorted), a file, or a glob (``**`` allowed) whose
    matches are sorted. Paths are made absolute here.

    Raises:
        FileNotFoundError: a pattern that matches nothing.
        ValueError: no patterns, a file of an unsupported type, or the same file twice.

    Example:
        >>> expand_inputs(["corpus/*.jsonl"])  # doctest: +SKIP
    """
    if not patterns:
        raise ValueError("no inputs given: pass files, folders, globs, an embedded corpus or hf:owner/name")
    sources: list[Source] = []
    for pat in patterns:
        if pat in CORPORA or pat.startswith(HUB_PREFIX):
            sources.append(Source(pat, "memory", 0))
            continue
        p = pathlib.Path(pat).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.absolute().rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                raise FileNotFoundError(f"input folder {p.absolute()} holds no {', '.join(SUFFIXES)} files")
        elif p.is_file():
            files = [p.absolute()]
        else:
            pattern = str(pathlib.Path(os.path.expanduser(pat)).absolute())
            files = sorted(pathlib.Path(f) for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
            if not files:
                raise FileNotFoundError(
                    f"input {pat!r} matches no file (resolved to {pattern}); embedded corpora: "
                    f"{', '.join(sorted(CORPORA))}; hub datasets: '{HUB_PREFIX}owner/name'"
                )
        sources.extend(_file_source(f) for f in files)
    names = [s.name for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"inputs name the same source more than once: {', '.join(dup)}")
    return sources


def _jsonl_pieces(i: int, size: int, unit_bytes: int) -> list[Piece]:
    return [
        Piece(i, a, min(a + unit_bytes, size), min(a + unit_bytes, size) - a)
        for a in range(0, size, unit_bytes)
    ]


def _parquet_pieces(i: int, source: Source) -> list[Piece]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(source.name).metadata
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise PreparedDataError(f"{source.name} is not a readable parquet file: {e}") from e
    return [Piece(i, g, g + 1, int(meta.row_group(g).total_byte_size)) for g in range(meta.num_row_groups)]


def plan_units(
    sources: Sequence[Source], memory_docs: dict[int, list[str]], unit_bytes: int
) -> list[tuple[Piece, ...]]:
    """Cuts the sources into units of about ``unit_bytes`` (pieces of consecutive sources are
    grouped until a unit is full), independent of the number of workers."""
    pieces: list[Piece] = []
    for i, s in enumerate(sources):
        if s.kind in ("jsonl", "json"):
            pieces += _jsonl_pieces(i, s.size, unit_bytes)
        elif s.kind == "parquet":
            pieces += _parquet_pieces(i, s)
        elif s.kind == "txt":
            pieces.append(Piece(i, 0, s.size, s.size))
        else:
            docs = memory_docs[i]
            start, nbytes = 0, 0
            for j, d in enumerate(docs):
                nbytes += len(d.encode("utf-8"))
                if nbytes >= unit_bytes or j == len(docs) - 1:
                    pieces.append(Piece(i, start, j + 1, nbytes))
                    start, nbytes = j + 1, 0
    units: list[tuple[Piece, ...]] = []
    current: list[Piece] = []
    size = 0
    for p in pieces:
        current.append(p)
        size += p.nbytes
        if size >= unit_bytes:
            units.append(tuple(current))
            current, size = [], 0
    if current:
        units.append(tuple(current))
    return units


# -- reading documents ----------------------------------------------------------------------------


def _record_text(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        keys = list(record) if isinstance(record, dict) else type(record).__name__
        raise PreparedDataError(f"{where} has no text field {field!r} (it has {keys}); pass --text-field")
    return str(record[field])


def _jsonl_docs(path: str, start: int, stop: int, field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the rest of the line begun before start belongs to the previous piece
        pos = f.tell()
        while pos < stop:
            line = f.readline()
            if not line:
                break
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise PreparedDataError(
                        f"{path} byte {pos}: not a JSON line ({e}); .jsonl / .json inputs must hold one "
                        "JSON object per line"
                    ) from e
                yield _record_text(record, field, f"{path} byte {pos}")
            pos += len(line)


def _parquet_docs(path: str, group: int, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise PreparedDataError(
            f"{path} has no text column {field!r} (columns: {pf.schema_arrow.names}); pass --text-field"
        )
    for value in pf.read_row_group(group, columns=[field]).column(0).to_pylist():
        if value is not None:
            yield str(value)


def _piece_docs(job: _Job, piece: Piece, memory: dict[int, list[str]]) -> Iterator[str]:
    s = job.sources[piece.source]
    if s.kind in ("jsonl", "json"):
        yield from _jsonl_docs(s.name, piece.start, piece.stop, job.text_field)
    elif s.kind == "parquet":
        yield from _parquet_docs(s.name, piece.start, job.text_field)
    elif s.kind == "txt":
        try:
            yield pathlib.Path(s.name).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise PreparedDataError(f"{s.name} is not UTF-8 text: {e}") from e
    else:
        yield from memory[piece.source][piece.start : piece.stop]


def is_validation(text: str, val_fraction: float, seed: int) -> bool:
    """Whether a document belongs to the validation split: a keyed hash of its text below
    ``val_fraction``.

    Example:
        >>> is_validation("some text", 0.0, 0), is_validation("some text", 1.0, 0)
        (False, True)
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2.0**64


# -- one unit -------------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None
_worker_memory: dict[int, list[str]] = {}


def _worker_init(tokenizer_path: str, memory: dict[int, list[str]]) -> None:
    global _worker_tokenizer, _worker_memory
    # One thread per worker: the pool already uses every core it was given.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(tokenizer_path)
    _worker_memory = memory


class _ShardWriter:
    """Appends ids to ``<final>.tmp-*`` while hashing them; ``commit`` renames it into place."""

    def __init__(self, final: pathlib.Path):
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.tmp-")
        self.tmp = pathlib.Path(tmp)
        self.f = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.tokens = 0
        self.documents = 0

    def write(self, ids: np.ndarray, documents: int) -> None:
        data = ids.tobytes()
        self.f.write(data)
        self.sha.update(data)
        self.tokens += len(ids)
        self.documents += documents

    def commit(self) -> dict[str, Any]:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.final)
        return {"documents": self.documents, "tokens": self.tokens, "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)


def _encode_chunk(tok: Tokenizer, docs: list[str], dtype: np.dtype) -> np.ndarray:
    parts = []
    eos = np.array([tok.eos_id], dtype)
    for ids in tok.encode_batch(docs):
        parts.append(ids.astype(dtype))
        parts.append(eos)
    return np.concatenate(parts)


def unit_name(index: int) -> str:
    return f"{index:05d}"


def _run_unit(job: _Job, tok: Tokenizer | None = None, memory: dict[int, list[str]] | None = None) -> dict:
    """Tokenizes one unit into its two shard files and writes its done-marker; returns the marker."""
    tok = tok or _worker_tokenizer
    memory = _worker_memory if memory is None else memory
    assert tok is not None
    out = pathlib.Path(job.out)
    dtype = np.dtype(job.dtype)
    name = unit_name(job.index)
    writers = {split: _ShardWriter(out / split / f"{name}.bin") for split in SPLITS}
    t = time.perf_counter()
    nbytes = 0
    try:
        pending: dict[str, list[str]] = {split: [] for split in SPLITS}
        pending_bytes = {split: 0 for split in SPLITS}

        def flush(split: str) -> None:
            if pending[split]:
                writers[split].write(_encode_chunk(tok, pending[split], dtype), len(pending[split]))
                pending[split], pending_bytes[split] = [], 0

        for piece in job.pieces:
            for doc in _piece_docs(job, piece, memory):
                if not doc.strip():
                    continue  # empty documents are dropped, as corpus_text does
                split = "val" if is_validation(doc, job.val_fraction, job.split_seed) else "train"
                pending[split].append(doc)
                pending_bytes[split] += len(doc)
                nbytes += len(doc)
                if pending_bytes[split] >= _CHUNK_BYTES or len(pending[split]) >= _CHUNK_DOCS:
                    flush(split)
        for split in SPLITS:
            flush(split)
        shards = {split: writers[split].commit() for split in SPLITS}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    marker = {
        "unit": job.index,
        "pieces": [asdict(p) for p in job.pieces],
        "chars": nbytes,
        "seconds": time.perf_counter() - t,
        **shards,
    }
    _atomic_write_json(out / WORK_DIR / f"{name}.json", marker)
    return marker


def _atomic_write_json(path: pathlib.Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _done_marker(out: pathlib.Path, index: int, pieces: tuple[Piece, ...], itemsize: int) -> dict | None:
    """The unit's marker when its shards are complete (sizes agree), else None."""
    name = unit_name(index)
    try:
        marker = json.loads((out / WORK_DIR / f"{name}.json").read_text())
        if marker["pieces"] != [asdict(p) for p in pieces]:
            return None
        for split in SPLITS:
            if (out / split / f"{name}.bin").stat().st_size != marker[split]["tokens"] * itemsize:
                return None
        return marker
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- the whole job --------------------------------------------------------------------------------


def _request(sources, *, text_field, val_fraction, split_seed, unit_bytes, tokenizer_spec) -> dict:
    return {
        "format": FORMAT,
        "sources": [asdict(s) for s in sources],
        "text_field": text_field,
        "split": {
            "rule": "blake2b-8 of the document text, keyed by the seed",
            "val_fraction": val_fraction,
            "seed": split_seed,
        },
        "unit_bytes": unit_bytes,
        "tokenizer": tokenizer_spec,
    }


def _diff(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _bpe_sample(
    units, sources, memory, text_field: str, val_fraction: float, split_seed: int, budget: int
) -> list[str]:
    job = _Job(0, (), tuple(sources), "", text_field, val_fraction, split_seed, "uint16")
    sample, size = [], 0
    for pieces in units:
        for piece in pieces:
            for doc in _piece_docs(job, piece, memory):
                if doc.strip() and not is_validation(doc, val_fraction, split_seed):
                    sample.append(doc)
                    size += len(doc)
                    if size >= budget:
                        return sample
    return sample


def prepare(
    inputs: Sequence[str],
    out: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    vocab_size: int = 8192,
    bpe_sample_bytes: int = DEFAULT_BPE_SAMPLE_BYTES,
    text_field: str = "text",
    val_fraction: float = 0.01,
    split_seed: int = 0,
    workers: int | None = None,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    on_unit: Callable[[dict], None] | None = None,
) -> Manifest:
    """Tokenizes ``inputs`` into shards under ``out`` and writes ``out/manifest.json``.

    Running it again with the same arguments resumes unfinished work, or returns the finished
    manifest at once.

    Args:
        inputs: files, folders, globs, embedded corpus names or ``hf:`` datasets (see
            :func:`expand_inputs`).
        out: the dataset directory (created).
        tokenizer: a ``tokenizer.json`` (or its folder); ``None`` trains a byte-level BPE.
        vocab_size: size of the trained BPE.
        bpe_sample_bytes: characters of training documents the BPE is trained on.
        text_field: the field / column holding the text in jsonl and parquet files.
        val_fraction: expected share of documents held out for validation, in [0, 1).
        split_seed: key of the split hash.
        workers: processes; default all cores.
        unit_bytes: input bytes per unit (and so per shard pair).
        cache_dir: data cache for embedded corpora and hub datasets.
        progress: show a tqdm bar over input bytes.
        on_unit: called in this process with each finished unit's marker.

    Returns:
        The written :class:`~jaxslim.data.shards.Manifest`.

    Raises:
        FileNotFoundError / ValueError: bad inputs or options.
        PreparedDataError: unreadable input, or ``out`` holds a different dataset or partial work
            of a different prepare.
    """
    t0 = time.perf_counter()
    out = pathlib.Path(out).expanduser().absolute()
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if unit_bytes < 1:
        raise ValueError(f"unit_bytes must be >= 1, got {unit_bytes!r}")
    workers = max(1, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    sources = expand_inputs(inputs)
    if tokenizer is not None:
        given = load_tokenizer(pathlib.Path(tokenizer).expanduser().absolute())
        tokenizer_spec: dict = {"given": given.fingerprint}
    else:
        given = None
        tokenizer_spec = {"bpe_vocab_size": vocab_size, "bpe_sample_bytes": bpe_sample_bytes}
    request = _request(
        sources,
        text_field=text_field,
        val_fraction=val_fraction,
        split_seed=split_seed,
        unit_bytes=unit_bytes,
        tokenizer_spec=tokenizer_spec,
    )
    work = out / WORK_DIR
    manifest_path = out / MANIFEST_FILE
    if manifest_path.is_file():
        done = read_manifest(out)
        diff = _diff(done.raw.get("request", {}), request)
        if diff:
            raise PreparedDataError(
                f"{out} already holds prepared data made with other {', '.join(diff)}; choose another "
                "output directory (nothing was overwritten)"
            )
        return done
    if out.exists() and any(out.iterdir()) and not (work / "request.json").is_file():
        raise PreparedDataError(
            f"{out} exists, is not empty and holds no prepare work ({WORK_DIR}/request.json); "
            "choose an empty or new output directory"
        )
    if (work / "request.json").is_file():
        old = json.loads((work / "request.json").read_text())
        diff = _diff(old, request)
        if diff:
            raise PreparedDataError(
                f"{out} holds unfinished work of a prepare with other {', '.join(diff)}; rerun that "
                "command to finish it, or choose another output directory"
            )
    work.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(work / "request.json", request)

    root = cache_root(None if cache_dir is None else pathlib.Path(cache_dir).expanduser().absolute())
    memory = {
        i: corpus_text(s.name, root, text_field=text_field)
        for i, s in enumerate(sources)
        if s.kind == "memory"
    }
    units = plan_units(sources, memory, unit_bytes)

    # tokenizer: the given one, the one of an interrupted run, or a BPE trained on a sample
    tok_path = out / TOKENIZER_FILE
    t = time.perf_counter()
    if given is not None:
        tok = given
    elif tok_path.is_file():
        tok = load_tokenizer(tok_path)  # trained by the interrupted run this one resumes
    else:
        sample = _bpe_sample(units, sources, memory, text_field, val_fraction, split_seed, bpe_sample_bytes)
        if not sample:
            raise PreparedDataError(
                f"the inputs hold no training text to train a tokenizer on: {list(inputs)}"
            )
        tok = train_bpe(sample, vocab_size)
        del sample
    tokenizer_s = time.perf_counter() - t
    text = tok.to_json()
    if tok_path.is_file() and tok_path.read_text(encoding="utf-8") != text:
        raise PreparedDataError(
            f"{tok_path} holds another tokenizer than this prepare's (sha256 {tok.fingerprint}); its "
            "partial shards were made with that one. Choose another output directory."
        )
    if not tok_path.is_file():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{TOKENIZER_FILE}.tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, tok_path)
    tok = load_tokenizer(tok_path)  # what later readers will load, byte for byte
    dtype = stream_dtype(tok.vocab_size)

    jobs = [
        _Job(i, pieces, tuple(sources), str(out), text_field, val_fraction, split_seed, dtype.name)
        for i, pieces in enumerate(units)
    ]
    markers: dict[int, dict] = {}
    for job in jobs:
        m = _done_marker(out, job.index, job.pieces, dtype.itemsize)
        if m is not None:
            markers[job.index] = m
    reused = len(markers)
    todo = [j for j in jobs if j.index not in markers]
    total_bytes = sum(p.nbytes for pieces in units for p in pieces)
    bar = _bar(total_bytes, progress)
    bar.update(sum(p.nbytes for j in jobs if j.index in markers for p in j.pieces))

    def finished(marker: dict) -> None:
        markers[marker["unit"]] = marker
        bar.update(sum(p["nbytes"] for p in marker["pieces"]))
        if on_unit is not None:
            on_unit(marker)

    t = time.perf_counter()
    try:
        if workers == 1 or len(todo) <= 1:
            for job in todo:
                finished(_run_unit(job, tok, memory))
        else:
            _run_pool(todo, workers, str(tok_path), memory, finished)
    finally:
        bar.close()
    tokenize_s = time.perf_counter() - t

    manifest = _manifest(out, jobs, markers, tok, dtype, request)
    manifest["prepare"] = {
        "workers": workers,
        "units": len(jobs),
        "units_reused": reused,
        "input_bytes": total_bytes,
        "tokenizer_s": round(tokenizer_s, 3),
        "tokenize_s": round(tokenize_s, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    # Empty shards (a unit with no validation document) are not listed, and half-written files
    # of an interrupted run are left over: remove both.
    listed = {s["file"] for split in SPLITS for s in manifest["splits"][split]["shards"]}
    for split in SPLITS:
        for file in (out / split).glob("*"):
            ours = file.suffix == ".bin" or ".bin.tmp-" in file.name
            if ours and file.is_file() and f"{split}/{file.name}" not in listed:
                file.unlink()
    _atomic_write_json(manifest_path, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return read_manifest(out)


def _manifest(out, jobs, markers, tok: Tokenizer, dtype: np.dtype, request: dict) -> dict:
    splits = {}
    for split in SPLITS:
        shards = [
            {
                "file": f"{split}/{unit_name(j.index)}.bin",
                "documents": markers[j.index][split]["documents"],
                "tokens": markers[j.index][split]["tokens"],
                "bytes": markers[j.index][split]["tokens"] * dtype.itemsize,
                "sha256": markers[j.index][split]["sha256"],
            }
            for j in jobs
            if markers[j.index][split]["tokens"]
        ]
        splits[split] = {
            "documents": sum(s["documents"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
        }
    return {
        "format": FORMAT,
        "dtype": dtype.name,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": tok.fingerprint,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
        },
        "split": request["split"],
        "documents": sum(splits[s]["documents"] for s in SPLITS),
        "tokens": sum(splits[s]["tokens"] for s in SPLITS),
        "characters": sum(markers[j.index]["chars"] for j in jobs),
        "splits": splits,
        "request": request,
    }


def _run_pool(todo: list[_Job], workers: int, tok_path: str, memory: dict, finished) -> None:
    # forkserver: a fresh server process forks the workers, so no JAX or tokenizer threads of this
    # process are copied into them.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(tok_path, memory),
    ) as pool:
        futures = {pool.submit(_run_unit, job) for job in todo}
        try:
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for f in done:
                    try:
                        marker = f.result()
                    except BrokenProcessPool as e:
                        raise RuntimeError(
                            "a tokenizer worker process died (out of memory, or killed); the units "
                            "finished so far are kept: run the same prepare again to resume, with "
                            "fewer --workers or a smaller --unit-mb if memory is short"
                        ) from e
                    finished(marker)
        except BaseException:
            for f in futures:
                f.cancel()
            raise


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="B", unit_scale=True, desc="prepare", dynamic_ncols=True)
