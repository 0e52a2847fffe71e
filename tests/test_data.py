"""Tests of jaxslim.data: packing, shuffling, resuming, host sharding, MLM masking, splits,
tokenizer and token caches, n-gram baselines and config errors, on small synthetic text."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from jaxslim.data import (
    IGNORE_INDEX,
    DataConfig,
    MlmMasker,
    PackedSequences,
    TextData,
    TrainIterator,
    cached_bpe,
    load_tokenizer,
    ngram_baselines,
    split_documents,
    tokenize_documents,
    train_bpe,
    validation_batches,
)
from jaxslim.data import packing as packing_mod
from jaxslim.data import tokenizer as tokenizer_mod

WORDS = (
    "thou art the king and queen of all my love what say you lord sweet night day fair heaven "
    "death blood sword crown honour grace noble villain fool gentle"
).split()


def _markov_text(rng: np.random.Generator, n_words: int) -> str:
    # Each word has three likely successors, so bigrams carry information a unigram model lacks.
    succ = {w: [WORDS[(i * 7 + j) % len(WORDS)] for j in (1, 2, 3)] for i, w in enumerate(WORDS)}
    word, out = WORDS[0], []
    for i in range(n_words):
        out.append(word)
        if i % 12 == 11:
            out.append(".\n")
        word = succ[word][rng.integers(3)] if rng.random() < 0.9 else WORDS[rng.integers(len(WORDS))]
    return " ".join(out).replace(" .\n ", ".\n")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(24):
        (d / f"doc{i:02d}.txt").write_text(_markov_text(rng, int(rng.integers(150, 400))))
    return d


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("cache")


def _config(corpus_dir, cache_dir, **kw) -> DataConfig:
    base = dict(
        corpus=str(corpus_dir),
        seq_len=16,
        batch_size=8,
        bpe_vocab_size=320,
        val_fraction=0.1,
        cache_dir=str(cache_dir),
    )
    return DataConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data(corpus_dir, cache_dir) -> TextData:
    return TextData(_config(corpus_dir, cache_dir))


@pytest.fixture(scope="module")
def mlm_data(corpus_dir, cache_dir) -> TextData:
    return TextData(_config(corpus_dir, cache_dir, mlm=True))


def _unique_rows(n_rows: int, seq_len: int = 4) -> PackedSequences:
    # An arange stream makes every row distinct, so rows can be identified by their content.
    return PackedSequences(np.arange(n_rows * seq_len + 1), seq_len)


def _take(it, k: int) -> list[dict]:
    return [next(it) for _ in range(k)]


# -- packing ---------------------------------------------------------------------------------------


def test_stream_round_trips_documents_with_eos_between(data):
    docs = ["To be, or not to be.\n", "that is the question:  \tWhether 'tis nobler", "ü ✓ 🙂"]
    ids = tokenize_documents(data.tokenizer, docs, use_cache=False)
    eos = np.flatnonzero(ids == data.tokenizer.eos_id)
    assert len(eos) == len(docs) and eos[-1] == len(ids) - 1
    pieces = np.split(ids, eos[:-1] + 1)
    assert [data.tokenizer.decode(p[:-1]) for p in pieces] == docs


def test_packed_rows_tile_the_stream(data):
    rows = data.train_sequences
    seq_len = rows.seq_len
    all_rows = rows.take(np.arange(len(rows)))
    assert all_rows.shape == (len(rows), seq_len + 1) and all_rows.dtype == np.int32
    stream = np.asarray(data.train_tokens)
    # Inputs tile the stream with no gap; each row's last token starts the next row.
    np.testing.assert_array_equal(all_rows[:, :-1].ravel(), stream[: len(rows) * seq_len])
    np.testing.assert_array_equal(all_rows[:-1, -1], all_rows[1:, 0])
    assert len(rows) == (len(stream) - 1) // seq_len
    mlm_rows = PackedSequences(stream, seq_len, causal=False)
    np.testing.assert_array_equal(
        mlm_rows.take(np.arange(len(mlm_rows))).ravel(), stream[: len(mlm_rows) * seq_len]
    )


def test_train_batches_have_the_documented_shapes(data, mlm_data):
    b = next(data.train_iterator(process_index=0, process_count=1))
    assert set(b) == {"tokens"} and b["tokens"].shape == (8, 17) and b["tokens"].dtype == np.int32
    m = next(mlm_data.train_iterator(process_index=0, process_count=1))
    assert set(m) == {"tokens", "labels"} and m["tokens"].shape == m["labels"].shape == (8, 16)


# -- shuffle, resume, hosts ------------------------------------------------------------------------


def test_shuffle_is_deterministic_from_the_seed():
    rows = _unique_rows(50)
    a = _take(TrainIterator(rows, global_batch_size=8, seed=3), 10)
    b = _take(TrainIterator(rows, global_batch_size=8, seed=3), 10)
    c = _take(TrainIterator(rows, global_batch_size=8, seed=4), 10)
    assert all((x["tokens"] == y["tokens"]).all() for x, y in zip(a, b, strict=True))
    assert not all((x["tokens"] == y["tokens"]).all() for x, y in zip(a, c, strict=True))
    # Epochs are reshuffled: the first rows of epoch 1 are not those of epoch 0.
    it = TrainIterator(rows, global_batch_size=50, seed=3)
    assert not (next(it)["tokens"] == next(it)["tokens"]).all()


def test_each_epoch_is_a_permutation_across_batch_boundaries():
    rows, batch = _unique_rows(37), 8  # 37 rows: batches straddle epoch boundaries
    it = TrainIterator(rows, global_batch_size=batch, seed=1)
    stream = np.concatenate([b["tokens"] for b in _take(it, 10)])  # 80 rows: 2 epochs and 6
    all_rows = rows.take(np.arange(37))
    for epoch in (0, 1):
        seen = stream[epoch * 37 : (epoch + 1) * 37]
        np.testing.assert_array_equal(np.unique(seen, axis=0), np.unique(all_rows, axis=0))
        assert len(np.unique(seen[:, 0])) == 37  # nothing repeated, so nothing skipped


def test_resume_continues_exactly():
    rows = _unique_rows(37)
    full = _take(TrainIterator(rows, global_batch_size=6, seed=5), 12)
    it = TrainIterator(rows, global_batch_size=6, seed=5)
    _take(it, 7)
    state = json.loads(json.dumps(it.get_state()))  # it goes through a JSON checkpoint
    assert state["epoch"] == 1 and state["index"] == 42 - 37
    resumed = TrainIterator(rows, global_batch_size=6, seed=5)
    resumed.set_state(state)
    for want, got in zip(full[7:], _take(resumed, 5), strict=True):
        np.testing.assert_array_equal(want["tokens"], got["tokens"])


def test_resume_with_another_batch_size_and_host_count():
    rows = _unique_rows(37)
    stream = np.concatenate([b["tokens"] for b in _take(TrainIterator(rows, global_batch_size=6, seed=5), 8)])
    it = TrainIterator(rows, global_batch_size=6, seed=5)
    _take(it, 3)
    state = it.get_state()
    hosts = [
        TrainIterator(rows, global_batch_size=4, seed=5, process_index=p, process_count=2) for p in (0, 1)
    ]
    for h in hosts:
        h.set_state(state)
    got = np.concatenate([np.concatenate([next(h)["tokens"] for h in hosts]) for _ in range(5)])
    np.testing.assert_array_equal(got, stream[18:38])


def test_set_state_refuses_other_data():
    it = TrainIterator(_unique_rows(37), global_batch_size=6, seed=5)
    state = it.get_state()
    with pytest.raises(ValueError, match="num_sequences 37 .saved. vs 40"):
        TrainIterator(_unique_rows(40), global_batch_size=6, seed=5).set_state(state)
    with pytest.raises(ValueError, match="seed 5 .saved. vs 6"):
        TrainIterator(_unique_rows(37), global_batch_size=6, seed=6).set_state(state)
    with pytest.raises(ValueError, match="not a data iterator state"):
        it.set_state({"epoch": 0})


def test_two_hosts_concatenate_to_the_one_host_batch(data, mlm_data):
    for d in (data, mlm_data):
        one = d.train_iterator(process_index=0, process_count=1)
        two = [d.train_iterator(process_index=p, process_count=2) for p in (0, 1)]
        for _ in range(3):
            g = next(one)
            parts = [next(h) for h in two]
            assert parts[0]["tokens"].shape[0] == 4
            for key in g:
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), g[key])
        one_val = list(d.val_batches(process_index=0, process_count=1))
        two_val = [list(d.val_batches(process_index=p, process_count=2)) for p in (0, 1)]
        assert len(two_val[0]) == len(two_val[1]) == len(one_val)
        for g, a, b in zip(one_val, *two_val, strict=True):
            for key in g:
                np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), g[key])


def test_batch_size_must_split_over_hosts():
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        TrainIterator(_unique_rows(10), global_batch_size=8, process_index=0, process_count=3)


# -- validation ------------------------------------------------------------------------------------


def test_validation_covers_every_row_once_in_order(data):
    rows = data.val_sequences
    batches = list(data.val_batches(batch_size=8, process_index=0, process_count=1))
    assert len(batches) == -(-len(rows) // 8)
    tokens = np.concatenate([b["tokens"] for b in batches])
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.shape == (len(batches) * 8, 16)
    real = weights[:, 0] == 1
    assert real.sum() == len(rows) and real[: len(rows)].all()
    np.testing.assert_array_equal(tokens[real], rows.take(np.arange(len(rows))))
    assert (tokens[~real] == data.tokenizer.pad_id).all() and (weights[~real] == 0).all()


def test_mlm_validation_masks_are_fixed(mlm_data):
    a = list(mlm_data.val_batches(process_index=0, process_count=1))
    b = list(mlm_data.val_batches(process_index=0, process_count=1))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
    labels = np.concatenate([x["labels"] for x in a])
    assert (labels != IGNORE_INDEX).any()
    assert (labels[len(mlm_data.val_sequences) :] == IGNORE_INDEX).all()  # padding rows


# -- MLM masking -----------------------------------------------------------------------------------


def test_mlm_masking_statistics_follow_bert():
    vocab, specials, mask_id = 1000, [0, 1, 2], 2
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, vocab, (64, 512)).astype(np.int32)
    tokens[:, ::64] = 0  # separators must never be masked
    masker = MlmMasker(mask_id=mask_id, vocab_size=vocab, special_ids=specials, probability=0.15)
    keys = [(7, 1, i) for i in range(64)]
    inputs, labels = masker(tokens, keys)
    selected = labels != IGNORE_INDEX
    eligible = tokens != 0
    assert not selected[~eligible].any()
    np.testing.assert_array_equal(labels[selected], tokens[selected])
    np.testing.assert_array_equal(inputs[~selected], tokens[~selected])
    rate = selected.sum() / eligible.sum()
    masked = (inputs == mask_id) & selected
    kept = (inputs == tokens) & selected
    randomised = selected & ~masked & ~kept
    n = selected.sum()
    assert abs(rate - 0.15) < 0.01
    assert abs(masked.sum() / n - 0.8) < 0.02
    # A random draw can hit the original token (1 in 997), so "kept" is a touch above 10%.
    assert abs(kept.sum() / n - 0.1) < 0.015 and abs(randomised.sum() / n - 0.1) < 0.015
    assert not np.isin(inputs[randomised], specials).any()
    again = masker(tokens, keys)
    np.testing.assert_array_equal(again[0], inputs)
    np.testing.assert_array_equal(again[1], labels)
    other = masker(tokens, [(8, 1, i) for i in range(64)])
    assert not (other[1] == labels).all()


def test_mlm_train_masks_are_deterministic_and_resume(mlm_data):
    a = mlm_data.train_iterator(process_index=0, process_count=1)
    first = _take(a, 4)
    b = mlm_data.train_iterator(process_index=0, process_count=1)
    _take(b, 2)
    c = mlm_data.train_iterator(process_index=0, process_count=1)
    c.set_state(b.get_state())
    for want, got in zip(first[2:], _take(c, 2), strict=True):
        np.testing.assert_array_equal(want["tokens"], got["tokens"])
        np.testing.assert_array_equal(want["labels"], got["labels"])


# -- split -----------------------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_seeded(corpus_dir):
    docs = [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))]
    train, val = split_documents(docs, 0.1, seed=0)
    assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
    share = sum(map(len, val)) / sum(map(len, docs))
    assert 0.1 <= share < 0.1 + max(map(len, docs)) / sum(map(len, docs))
    assert split_documents(docs, 0.1, seed=0) == (train, val)
    assert split_documents(docs, 0.1, seed=1)[1] != val
    # One document is cut at a line break instead of being held out whole.
    t1, v1 = split_documents([docs[0]], 0.2, seed=0)
    assert t1[0] + v1[0] == docs[0] or v1[0] + t1[0] == docs[0]
    assert 0.1 < len(v1[0]) / len(docs[0]) < 0.3 and v1[0].endswith("\n")


def test_pipeline_never_trains_on_validation_text(data, corpus_dir):
    docs = [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))]
    eos = data.tokenizer.eos_id
    val_docs = data.tokenizer.decode(data.val_tokens).split(data.tokenizer.decode([eos]))[:-1]
    train_docs = data.tokenizer.decode(data.train_tokens).split(data.tokenizer.decode([eos]))[:-1]
    assert sorted(val_docs + train_docs) == sorted(docs)
    assert not set(val_docs) & set(train_docs)
    assert data.stats["val_documents"] == len(val_docs) >= 1


# -- tokenizer and caches --------------------------------------------------------------------------


def test_tokenizer_and_tokens_are_cached(corpus_dir, tmp_path, monkeypatch):
    cfg = _config(corpus_dir, tmp_path)
    first = TextData(cfg)

    def fail(*a, **k):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(tokenizer_mod, "train_bpe", fail)
    monkeypatch.setattr(packing_mod, "_encode", fail)
    second = TextData(cfg)
    assert second.tokenizer.fingerprint == first.tokenizer.fingerprint
    np.testing.assert_array_equal(second.train_tokens, first.train_tokens)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
    # Another vocabulary size is another cache entry.
    monkeypatch.undo()
    third = TextData(_config(corpus_dir, tmp_path, bpe_vocab_size=300))
    assert third.vocab_size == 300 and len(list((tmp_path / "tokenizers").iterdir())) == 2


def test_trained_bpe_has_the_special_tokens_and_round_trips(data):
    tok = data.tokenizer
    assert (tok.eos_id, tok.pad_id, tok.mask_id) == (0, 1, 2) and tok.vocab_size == 320
    assert tok.decode([0, 1, 2]) == "<|endoftext|><pad><mask>"
    text = "Thou art a villain!  Unseen: 𝔮ζ"
    assert tok.decode(tok.encode(text)) == text


def test_save_tokenizer_keeps_a_different_one(data, tmp_path):
    path = data.save_tokenizer(tmp_path)
    assert load_tokenizer(tmp_path).fingerprint == data.tokenizer.fingerprint
    assert data.save_tokenizer(tmp_path) == path  # same content: fine
    other = train_bpe(["completely different text"] * 10, vocab_size=270)
    with pytest.raises(FileExistsError, match="different tokenizer"):
        other.save(tmp_path)
    assert load_tokenizer(path).fingerprint == data.tokenizer.fingerprint


def test_given_tokenizer_is_used(data, corpus_dir, cache_dir, tmp_path):
    path = data.save_tokenizer(tmp_path)
    again = TextData(_config(corpus_dir, cache_dir, tokenizer=str(path), bpe_vocab_size=999))
    assert again.tokenizer.fingerprint == data.tokenizer.fingerprint
    np.testing.assert_array_equal(again.train_tokens, data.train_tokens)


def test_minilm_wordpiece_tokenizer_for_mlm(minilm_dir, corpus_dir, cache_dir):
    tok = load_tokenizer(minilm_dir / "tokenizer.json")
    assert (tok.eos_id, tok.pad_id, tok.mask_id, tok.vocab_size) == (102, 0, 103, 30522)
    # Its stored truncation to 128 tokens is switched off: whole documents are packed.
    assert len(tok.encode("word " * 300)) == 300
    d = TextData(_config(corpus_dir, cache_dir, tokenizer=str(minilm_dir), mlm=True))
    b = next(d.train_iterator(process_index=0, process_count=1))
    selected = b["labels"] != IGNORE_INDEX
    assert selected.any() and not np.isin(b["labels"][selected], tok.special_ids).any()
    assert (b["tokens"] == 103).any()


def test_cached_bpe_rebuilds_a_damaged_entry(tmp_path):
    docs = ["one two three four"] * 20
    tok = cached_bpe(docs, 270, cache_dir=tmp_path)
    pathlib.Path(tok.source).write_text("{ not json")
    assert cached_bpe(docs, 270, cache_dir=tmp_path).fingerprint == tok.fingerprint


# -- baselines -------------------------------------------------------------------------------------


def test_ngram_baselines_are_ordered(data):
    b = data.ngram_baselines()
    assert b["bigram"] < b["unigram"] < b["uniform"] == pytest.approx(np.log(data.vocab_size))
    with pytest.raises(ValueError, match="outside"):
        ngram_baselines(np.arange(100), np.array([1, 500]), 100)


# -- config and input errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("seq_len", 0, r"DataConfig.seq_len must be an integer >= 1, got 0"),
        ("batch_size", True, r"DataConfig.batch_size must be an integer >= 1, got True"),
        ("bpe_vocab_size", 100, r"DataConfig.bpe_vocab_size must be an integer in \[259, "),
        ("val_fraction", 0.0, r"DataConfig.val_fraction must be a number in \(0, 0.5\], got 0.0"),
        ("val_fraction", 0.7, r"DataConfig.val_fraction"),
        ("mlm_probability", 1.0, r"DataConfig.mlm_probability must be a number in \(0, 1\)"),
        ("mlm", "yes", r"DataConfig.mlm must be True or False"),
        ("corpus", "", r"DataConfig.corpus must be a non-empty string"),
        ("tokenizer", "", r"DataConfig.tokenizer must be a non-empty string or None"),
        ("seed", -1, r"DataConfig.seed must be an integer >= 0"),
    ],
)
def test_bad_config_values_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**{field: value})


def test_config_is_hashable_and_frozen():
    cfg = DataConfig()
    assert hash(cfg) == hash(DataConfig()) and cfg.sequence_width == 257
    assert DataConfig(mlm=True).sequence_width == 256
    with pytest.raises(AttributeError):
        cfg.seq_len = 3  # type: ignore[misc]


def test_sequence_longer_than_the_split_is_a_clear_error(corpus_dir, cache_dir):
    with pytest.raises(ValueError, match="validation split .* fewer than one sequence of 4097"):
        TextData(_config(corpus_dir, cache_dir, seq_len=4096))


def test_mlm_needs_a_mask_token(tmp_path, corpus_dir, cache_dir):
    import tokenizers
    from tokenizers import models, pre_tokenizers

    backend = tokenizers.Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="no mask token"):
        TextData(_config(corpus_dir, cache_dir, tokenizer=str(tmp_path), mlm=True))


def test_missing_or_bad_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file .* does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="not a Hugging Face tokenizers file"):
        load_tokenizer(tmp_path)


def test_validation_batches_direct():
    rows = _unique_rows(5)
    batches = list(validation_batches(rows, global_batch_size=4, pad_id=-1))
    assert [b["weights"][:, 0].tolist() for b in batches] == [[1, 1, 1, 1], [1, 0, 0, 0]]


def test_batches_shard_onto_the_mesh_with_jax_host_defaults(data, devices):
    from jaxslim.config import MeshConfig
    from jaxslim.sharding import make_mesh, shard_batch

    mesh_cfg = MeshConfig(data=8)
    mesh = make_mesh(mesh_cfg)
    train = shard_batch(next(data.train_iterator()), mesh, mesh_cfg.rules)  # host from jax
    val = shard_batch(next(iter(data.val_batches())), mesh, mesh_cfg.rules)
    assert train["tokens"].shape == (8, 17) and len(train["tokens"].sharding.device_set) == 8
    assert val["weights"].shape == (8, 16) and val["tokens"].shape == (8, 17)
