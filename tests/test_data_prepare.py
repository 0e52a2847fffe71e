"""Prepared data (``jaxslim-data prepare``, ``DataConfig.manifest``): parallel runs give the same
bytes as one process, an interrupted prepare resumes, hosts read disjoint halves of each global
batch, a resumed stream equals the uninterrupted one, and damaged or foreign data is refused by
name. Everything runs on small files written here."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from jaxslim.cli import data as cli
from jaxslim.data import (
    DataConfig,
    FeistelPermutation,
    PackedSequences,
    PreparedDataError,
    TextData,
    TrainIterator,
    prepare,
    read_manifest,
    train_bpe,
    verify_shards,
)

WORDS = (
    "thou art the king and queen of all my love what say you lord sweet night day fair heaven "
    "death blood sword crown honour grace noble villain fool gentle"
).split()
OPTS = dict(vocab_size=320, val_fraction=0.2, unit_bytes=6_000, bpe_sample_bytes=20_000)


def _doc(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(20, 120)))) + "."


def write_corpus(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Two jsonl files, two txt files and a parquet file of three row groups (~40 KB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    d = root / "corpus"
    (d / "sub").mkdir(parents=True)
    for name in ("a.jsonl", "sub/b.jsonl"):
        with open(d / name, "w") as f:
            for _ in range(40):
                f.write(json.dumps({"text": _doc(rng), "id": 1}) + "\n")
    for name in ("c.txt", "sub/d.txt"):
        (d / name).write_text(_doc(rng) + "\n" + _doc(rng))
    table = pa.table({"text": [_doc(rng) for _ in range(30)]})
    pq.write_table(table, d / "e.parquet", row_group_size=10)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    return write_corpus(tmp_path_factory.mktemp("prep"))


@pytest.fixture(scope="module")
def dataset(corpus) -> pathlib.Path:
    out = corpus.parent / "single"
    prepare([str(corpus)], out, workers=1, **OPTS)
    return out


def _files(d: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _manifest_minus_timing(d: pathlib.Path) -> dict:
    m = json.loads((d / "manifest.json").read_text())
    m.pop("prepare")
    return m


def test_manifest_describes_the_shards(dataset):
    m = read_manifest(dataset)
    raw = m.raw
    assert raw["format"] == "jaxslim-tokens-1" and raw["dtype"] == "uint16"
    assert len(m.splits["train"]) >= 4  # several units: the plan cut the inputs
    assert m.documents("train") + m.documents("val") == 40 + 40 + 2 + 30  # jsonl + txt + parquet
    assert 0 < m.documents("val") < m.documents("train")
    for split in ("train", "val"):
        ids = np.concatenate([np.fromfile(dataset / s.file, np.uint16) for s in m.splits[split]])
        assert len(ids) == m.tokens(split)
        assert int((ids == m.eos_id).sum()) == m.documents(split)  # one end-of-text per document
    assert not (dataset / ".prepare").exists()
    verify_shards(m)


def test_documents_decode_back_and_each_lands_in_one_split(corpus, dataset):
    from jaxslim.data import load_tokenizer

    m = read_manifest(dataset)
    tok = load_tokenizer(m.tokenizer_path)
    texts = set()
    for split in ("train", "val"):
        ids = np.concatenate([np.fromfile(dataset / s.file, np.uint16) for s in m.splits[split]])
        cuts = np.flatnonzero(ids == m.eos_id)
        starts = np.concatenate([[0], cuts[:-1] + 1])
        texts |= {(split, tok.decode(ids[a:b])) for a, b in zip(starts, cuts, strict=True)}
    first = json.loads((corpus / "a.jsonl").read_text().splitlines()[0])["text"]
    assert sum(t == first for _, t in texts) == 1
    assert (corpus / "c.txt").read_text() in {t for _, t in texts}


@pytest.mark.slow
def test_parallel_prepare_is_byte_identical_to_one_process(corpus, dataset):
    out = corpus.parent / "parallel"
    m = prepare([str(corpus)], out, workers=2, **OPTS)
    assert m.raw["prepare"]["workers"] == 2
    assert _files(out).keys() == _files(dataset).keys()
    assert _files(out) == {k: v for k, v in _files(dataset).items() if k != "manifest.json"} | {
        "manifest.json": (out / "manifest.json").read_bytes()
    }
    assert _manifest_minus_timing(out) == _manifest_minus_timing(dataset)


def test_interrupted_prepare_resumes_to_the_same_bytes(corpus, dataset, tmp_path):
    out = tmp_path / "resumed"
    done = []

    def stop_after_three(marker):
        done.append(marker["unit"])
        if len(done) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill between units

    with pytest.raises(KeyboardInterrupt):
        prepare([str(corpus)], out, workers=1, on_unit=stop_after_three, **OPTS)
    assert not (out / "manifest.json").exists() and (out / ".prepare").is_dir()
    # a half-written shard of the unit being written at the kill
    (out / "train" / ".00009.bin.tmp-x").write_bytes(b"\x01\x02\x03")
    m = prepare([str(corpus)], out, workers=1, **OPTS)
    assert m.raw["prepare"]["units_reused"] == 3
    assert _files(out).keys() == _files(dataset).keys() - {".prepare"}
    assert {k: v for k, v in _files(out).items() if k != "manifest.json"} == {
        k: v for k, v in _files(dataset).items() if k != "manifest.json"
    }
    assert _manifest_minus_timing(out) == _manifest_minus_timing(dataset)
    # a finished dataset is returned as is
    assert prepare([str(corpus)], out, workers=1, **OPTS).fingerprint == m.fingerprint


def test_resume_with_other_options_is_refused(corpus, tmp_path):
    out = tmp_path / "partial"

    def stop(marker):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([str(corpus)], out, workers=1, on_unit=stop, **OPTS)
    with pytest.raises(PreparedDataError, match="unfinished work of a prepare with other split"):
        prepare([str(corpus)], out, workers=1, **{**OPTS, "val_fraction": 0.3})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(PreparedDataError, match="is not empty and holds no prepare work"):
        prepare([str(corpus)], tmp_path / "busy", workers=1, **OPTS)


def _data(dataset, **kw) -> TextData:
    return TextData(DataConfig(manifest=str(dataset), seq_len=16, batch_size=8, **kw))


@pytest.mark.parametrize("prefetch", [0, 3])
def test_two_hosts_read_disjoint_halves_of_the_one_host_batch(dataset, prefetch):
    one = _data(dataset, prefetch=prefetch)
    hosts = [_data(dataset, prefetch=prefetch) for _ in range(2)]
    it1 = one.train_iterator(process_index=0, process_count=1)
    its = [h.train_iterator(process_index=i, process_count=2) for i, h in enumerate(hosts)]
    steps = len(one.train_sequences) // 8 + 3  # across an epoch boundary
    for _ in range(steps):
        full = next(it1)["tokens"]
        halves = [next(it)["tokens"] for it in its]
        assert full.shape == (8, 17) and halves[0].shape == (4, 17)
        np.testing.assert_array_equal(np.concatenate(halves), full)
    if not prefetch:  # (with prefetch each reader has also run ahead by a varying amount)
        # each host read only its own rows: half the tokens of the one-host reader
        read = [h.train_tokens.bytes_read for h in hosts]
        assert read[0] == read[1] == one.train_tokens.bytes_read // 2 > 0


def test_resume_after_kill_equals_the_uninterrupted_stream(dataset):
    ref_it = _data(dataset, prefetch=0).train_iterator(process_index=0, process_count=1)
    ref = [next(ref_it)["tokens"] for _ in range(40)]
    killed = _data(dataset, prefetch=4).train_iterator(process_index=0, process_count=1)
    for i in range(13):
        np.testing.assert_array_equal(next(killed)["tokens"], ref[i])
    state = json.loads(json.dumps(killed.get_state()))  # as stored in a checkpoint
    killed.close()  # the process dies with batches built ahead and never handed out
    assert state["index"] == 13 * 8 % len(ref_it.sequences) and state["shuffle"] == "feistel"
    resumed = _data(dataset, prefetch=4).train_iterator(process_index=0, process_count=1)
    resumed.set_state(state)
    for i in range(13, 40):
        np.testing.assert_array_equal(next(resumed)["tokens"], ref[i])
    # the same position resumed on two hosts gives the two halves
    halves = []
    for i in range(2):
        it = _data(dataset).train_iterator(process_index=i, process_count=2)
        it.set_state(state)
        halves.append(next(it)["tokens"])
    np.testing.assert_array_equal(np.concatenate(halves), ref[13])


def test_state_of_other_prepared_data_is_refused(corpus, dataset, tmp_path):
    other = tmp_path / "other"
    prepare([str(corpus)], other, workers=1, **{**OPTS, "split_seed": 1})
    state = _data(dataset).train_iterator(process_index=0, process_count=1).get_state()
    it = _data(other).train_iterator(process_index=0, process_count=1)
    with pytest.raises(ValueError, match="saved for"):
        it.set_state(state)


def test_evaluation_reads_the_val_split(dataset):
    data = _data(dataset)
    m = read_manifest(dataset)
    batches = list(data.val_batches(process_index=0, process_count=1))
    rows = (m.tokens("val") - 1) // 16
    assert sum(int(b["weights"][:, 0].sum()) for b in batches) == rows
    first = np.concatenate([np.fromfile(dataset / s.file, np.uint16) for s in m.splits["val"]])[:17]
    np.testing.assert_array_equal(batches[0]["tokens"][0], first)
    assert set(data.ngram_baselines()) >= {"unigram", "bigram"}


def test_corrupt_shard_is_named(dataset, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    m = read_manifest(bad)
    shard = bad / m.splits["train"][1].file
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(
        PreparedDataError, match=rf"(?s)corrupt shard .*train/{shard.name}: sha256 \w+, expected"
    ):
        verify_shards(m)
    with pytest.raises(PreparedDataError, match=shard.name):
        _data(bad, verify_shards=True)
    assert cli.main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxslim-data: error: verify failed") and shard.name in err
    assert err.count("\n") == 1
    # a truncated shard is caught when the manifest is opened, without hashing
    shard.write_bytes(bytes(raw[:-2]))
    with pytest.raises(PreparedDataError, match=rf"{shard.name} has \d+ bytes, expected \d+"):
        _data(bad)
    shard.unlink()
    with pytest.raises(PreparedDataError, match=rf"{shard.name} is missing"):
        read_manifest(bad)


def test_manifest_from_another_tokenizer_is_refused(dataset, tmp_path):
    other = train_bpe([" ".join(WORDS[::-1])] * 30, vocab_size=300)
    path = other.save(tmp_path / "other-tok")
    with pytest.raises(PreparedDataError, match="is not the tokenizer the prepared data .* was made with"):
        _data(dataset, tokenizer=str(path))
    # the manifest's own tokenizer is accepted
    _data(dataset, tokenizer=str(dataset / "tokenizer.json"))
    # a dataset whose tokenizer.json was swapped for another
    swapped = tmp_path / "swapped"
    shutil.copytree(dataset, swapped)
    shutil.copy(path, swapped / "tokenizer.json")
    with pytest.raises(PreparedDataError, match="shards were made with tokenizer"):
        _data(swapped)
    # prepare refuses to finish a dataset with another tokenizer than its partial work's
    with pytest.raises(PreparedDataError, match="already holds prepared data made with other tokenizer"):
        prepare([str(dataset.parent / "corpus")], dataset, tokenizer=path, workers=1, **OPTS)


def test_bad_inputs_are_named(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n')
    with pytest.raises(PreparedDataError, match=r"x.jsonl byte 17: not a JSON line"):
        prepare([str(tmp_path / "x.jsonl")], tmp_path / "o1", workers=1, **OPTS)
    (tmp_path / "y.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(PreparedDataError, match=r"no text field 'text' \(it has \['body'\]\)"):
        prepare([str(tmp_path / "y.jsonl")], tmp_path / "o2", workers=1, **OPTS)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        prepare([str(tmp_path / "none" / "*.jsonl")], tmp_path / "o3", workers=1, **OPTS)
    (tmp_path / "z.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        prepare([str(tmp_path / "z.csv")], tmp_path / "o4", workers=1, **OPTS)


def test_cli_prepare_with_relative_paths(tmp_path, monkeypatch, capsys):
    write_corpus(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["prepare", "corpus/**/*.jsonl", "corpus/c.txt", "--out", "out", "--vocab-size", "300"]
    args += ["--val-fraction", "0.2", "--workers", "1", "--unit-mb", "0.01", "--no-progress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "prepared" in out and "tokens/s" in out
    m = read_manifest("out")
    assert m.directory == tmp_path / "out" and m.documents("train") + m.documents("val") == 81
    assert all(not pathlib.Path(s.file).is_absolute() for s in m.splits["train"])
    assert cli.main(args) == 0  # finished: returns at once
    capsys.readouterr()
    assert cli.main(["verify", "out"]) == 0
    assert "all sha256 match" in capsys.readouterr().out
    data = TextData(DataConfig(manifest="out", seq_len=8, batch_size=4))
    assert data.manifest.directory == tmp_path / "out"

    for bad, what in (
        (["prepare", "missing/*.jsonl", "--out", "o"], "matches no file"),
        (["prepare", "corpus/a.jsonl", "--out", "corpus"], "is not empty and holds no prepare work"),
        (["verify", "nowhere"], "no prepared-data manifest"),
        (["prepare", "corpus/a.jsonl", "--out", "o", "--vocab-size", "5"], "--vocab-size must be"),
    ):
        assert cli.main(bad) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("jaxslim-data: error: ") and what in err and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_feistel_shuffle_is_a_permutation_per_epoch():
    for n in (1, 2, 7, 1000, 4097):
        p = FeistelPermutation(n, (0, 0, 0))
        assert sorted(p(np.arange(n)).tolist()) == list(range(n))
    a = FeistelPermutation(1000, (0, 0, 0))(np.arange(1000))
    b = FeistelPermutation(1000, (0, 0, 1))(np.arange(1000))
    assert (a != b).mean() > 0.9 and abs(np.corrcoef(np.arange(1000), a)[0, 1]) < 0.2


def test_in_memory_iterator_state_is_unchanged():
    it = TrainIterator(PackedSequences(np.arange(101), seq_len=4), global_batch_size=5)
    next(it)
    assert set(it.get_state()) == {"version", "epoch", "index", "seed", "num_sequences", "sequence_width"}


@pytest.mark.slow
def test_training_reads_prepared_data_and_resumes_exactly(dataset, tmp_path, monkeypatch, capsys):
    from jaxslim.cli import train as train_cli

    shutil.copytree(dataset, tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # a relative manifest path, as a user types it
    # (run directories stay absolute: a relative --workdir is not this test's subject)
    run = {name: str(tmp_path / name) for name in ("straight", "resumed")}
    common = ["shakespeare_gpt:tiny", "--data.manifest", "data", "--data.seq-len", "16"]
    common += ["--model.max-len", "16", "--log-every", "1", "--sample-tokens", "0", "--no-tensorboard"]
    common += ["--optim.decay", "constant"]  # the same rates whatever --steps says
    assert train_cli.main([*common, "--workdir", run["straight"], "--steps", "6"]) == 0
    assert (
        train_cli.main([*common, "--workdir", run["resumed"], "--steps", "4", "--checkpoint.every", "2"]) == 0
    )
    assert (
        train_cli.main([*common, "--workdir", run["resumed"], "--steps", "6", "--checkpoint.every", "2"]) == 0
    )
    assert "resuming from step 4" in capsys.readouterr().out

    def losses(run):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    assert losses("resumed") == losses("straight")  # the same batches, bit for bit
    assert (tmp_path / "resumed" / "tokenizer.json").read_bytes() == (
        tmp_path / "data" / "tokenizer.json"
    ).read_bytes()
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["data"]["manifest"] == "data"


def test_dropping_a_prefetcher_stops_its_thread(dataset):
    import gc
    import threading

    it = _data(dataset, prefetch=2).train_iterator(process_index=0, process_count=1)
    next(it)
    assert any(t.name == "jaxslim-prefetch" for t in threading.enumerate())
    del it
    gc.collect()
    assert not any(t.name == "jaxslim-prefetch" for t in threading.enumerate())


def test_data_config_checks_the_new_fields():
    with pytest.raises(ValueError, match=r"DataConfig.prefetch must be an integer in \[0, 64\]"):
        DataConfig(prefetch=-1)
    with pytest.raises(ValueError, match="DataConfig.manifest must be a non-empty string or None"):
        DataConfig(manifest="")
    with pytest.raises(ValueError, match="DataConfig.verify_shards must be True or False"):
        DataConfig(verify_shards=1)


def test_train_cli_names_a_missing_manifest(tmp_path, monkeypatch, capsys):
    from jaxslim.cli import train as train_cli

    monkeypatch.chdir(tmp_path)
    args = ["shakespeare_gpt:tiny", "--data.manifest", "nowhere", "--workdir", str(tmp_path / "run")]
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "no prepared-data manifest at" in err and str(tmp_path / "nowhere") in err


@pytest.mark.slow
def test_prepare_killed_mid_run_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(3)
    (tmp_path / "in").mkdir()
    for f in range(4):
        with open(tmp_path / "in" / f"{f}.jsonl", "w") as fh:
            for _ in range(1500):
                fh.write(json.dumps({"text": _doc(rng)}) + "\n")
    train_bpe([_doc(rng) for _ in range(200)], vocab_size=320).save(tmp_path / "tok")
    args = ["prepare", "in", "--out", "out", "--tokenizer", "tok", "--workers", "1"]
    args += ["--unit-mb", "0.03", "--val-fraction", "0.1", "--no-progress"]
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "jaxslim.cli.data", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    markers = tmp_path / "out" / ".prepare"
    deadline = time.time() + 120
    while len(list(markers.glob("*.json"))) < 4:  # request.json and three finished units
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert subprocess.run(cmd, cwd=tmp_path, env=env).returncode == 0
    resumed = read_manifest(tmp_path / "out")
    assert resumed.raw["prepare"]["units_reused"] >= 3
    prepare(
        [str(tmp_path / "in")],
        tmp_path / "clean",
        tokenizer=tmp_path / "tok",
        workers=1,
        unit_bytes=int(0.03 * (1 << 20)),
        val_fraction=0.1,
    )
    assert _files(tmp_path / "out").keys() == _files(tmp_path / "clean").keys()
    for k, v in _files(tmp_path / "clean").items():
        if k != "manifest.json":
            assert _files(tmp_path / "out")[k] == v, k
    assert _manifest_minus_timing(tmp_path / "out") == _manifest_minus_timing(tmp_path / "clean")


def test_an_embedded_corpus_is_prepared_in_document_ranges(tmp_path, monkeypatch):
    import sys

    from jaxslim.data import load_tokenizer

    prepare_mod = sys.modules["jaxslim.data.prepare"]  # the module (the package exports the function)
    rng = np.random.default_rng(5)
    docs = [_doc(rng) for _ in range(60)]
    # the embedded corpus' documents, without the download (the corpora have their own tests)
    monkeypatch.setattr(prepare_mod, "corpus_text", lambda name, root, text_field: docs)
    m = prepare(["shakespeare"], tmp_path / "out", workers=1, **OPTS)
    assert len(m.splits["train"]) > 1 and m.documents("train") + m.documents("val") == 60
    tok = load_tokenizer(m.tokenizer_path)
    ids = np.concatenate([np.fromfile(m.directory / s.file, np.uint16) for s in m.splits["train"]])
    first_train = next(d for d in docs if not prepare_mod.is_validation(d, OPTS["val_fraction"], 0))
    assert tok.decode(ids[: np.flatnonzero(ids == m.eos_id)[0]]) == first_train
