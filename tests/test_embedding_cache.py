"""The on-disk word-vector cache: hits, misses, invalidation, corruption, atomic segments; dtypes."""

import json
import random
import string
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmask_fast import embedding_cache
from diffmask_fast.advice import DiffmaskWarning
from diffmask_fast.embedding import WordEmbedder, weights_fingerprint


@pytest.fixture(scope="module")
def tokenizer(minilm_tokenizer):
    return minilm_tokenizer


def tiny_bert(tokenizer, seed, **options):
    from transformers import BertConfig, BertModel

    config = BertConfig(**{"vocab_size": tokenizer.vocab_size, "hidden_size": 24, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "intermediate_size": 48, **options})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertModel(config).eval()


def count_forwards(model):
    counter = {"calls": 0, "rows": 0}

    def hook(module, args, kwargs, output):
        counter["calls"] += 1
        counter["rows"] += int(kwargs["input_ids"].shape[0])

    model.register_forward_hook(hook, with_kwargs=True)
    return counter


def random_words(n, rng):
    return sorted({"".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 12))) for _ in range(n)})


@pytest.fixture
def rng(seed):
    return random.Random(seed)


def embedder(model, tokenizer, cache_dir, **options):
    return WordEmbedder(model, tokenizer, pooling=options.pop("pooling", "mean"), cache_dir=cache_dir,
                        progress=False, **options)


def test_hit_runs_no_forward_pass_and_returns_the_same_vectors(tokenizer, tmp_path, rng):
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    counter = count_forwards(model)
    words = random_words(40, rng)
    first = embedder(model, tokenizer, tmp_path).embed(words)
    assert counter["rows"] == len(words)
    again = embedder(model, tokenizer, tmp_path)  # a fresh embedder, as in a new run
    before = dict(counter)
    shuffled = rng.sample(words, len(words))
    vectors = again.embed(shuffled + shuffled[:5])
    assert counter == before, "a cache hit must not run the model"
    expected = first[[words.index(w) for w in shuffled + shuffled[:5]]]
    torch.testing.assert_close(vectors, expected, atol=0, rtol=0)
    uncached = embedder(model, tokenizer, None).embed(shuffled)
    torch.testing.assert_close(vectors[: len(shuffled)], uncached, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["pooled", "mean"])
def test_a_model_left_in_train_mode_embeds_without_dropout(tokenizer, tmp_path, rng, seed, pooling):
    """A model shared with training code may be in train mode: dropout would make the vectors
    random, and the cache would keep them under the key of the deterministic ones."""
    words = random_words(20, rng)
    model = tiny_bert(tokenizer, seed)
    expected = embedder(model, tokenizer, None, pooling=pooling).embed(words)
    shared = embedder(model, tokenizer, tmp_path, pooling=pooling)
    model.train()
    assert torch.equal(shared.embed(words), expected)
    assert model.training and all(m.training for m in model.modules()), "the caller's mode is put back"
    model.eval()
    assert torch.equal(embedder(model, tokenizer, tmp_path, pooling=pooling).embed(words), expected)


def test_numpy_integer_settings_work_with_the_cache(tokenizer, tmp_path, seed):
    """They were accepted, then failed as the cache key was written as JSON."""
    model = tiny_bert(tokenizer, seed)
    made = embedder(model, tokenizer, tmp_path, max_length=np.int64(16), batch_size=np.int32(4))
    assert type(made.max_length) is int and made.embed(["enzyme", "kinase"]).shape[0] == 2


def test_settings_that_would_fail_mid_run_are_refused_when_made(tokenizer, seed):
    """A fractional max_length failed inside transformers at the first long word; a tokenizer
    with more ids than the model embeds, at the first word holding one."""
    model = tiny_bert(tokenizer, seed)
    for options, message in [({"max_length": 8.5}, "max_length must be a whole number, got 8.5"),
                             ({"max_length": None}, "max_length must be a whole number, got None"),
                             ({"batch_size": "8"}, "batch_size must be a whole number, got '8'"),
                             ({"batch_size": True}, "batch_size must be a whole number, got True")]:
        with pytest.raises(TypeError, match=message):
            embedder(model, tokenizer, None, **options)
    small = tiny_bert(tokenizer, seed)
    small.resize_token_embeddings(tokenizer.vocab_size - 10, mean_resizing=False)
    for pooling in ("mean", "input_embeddings"):
        with pytest.raises(ValueError, match=f"has {len(tokenizer)} tokens but the model embeds only "
                                             f"{tokenizer.vocab_size - 10}.*resize_token_embeddings"):
            embedder(small, tokenizer, None, pooling=pooling)


def test_the_compute_precision_follows_weights_loaded_in_bf16(tokenizer, seed):
    model = tiny_bert(tokenizer, seed).to(torch.bfloat16)
    assert embedder(model, tokenizer, None).compute_dtype == "bfloat16"
    assert embedder(model, tokenizer, None, pooling="input_embeddings").compute_dtype == "bfloat16"
    assert embedder(model, tokenizer, None).cache_key()[1]["dtype"] == "bfloat16"
    assert embedder(tiny_bert(tokenizer, seed), tokenizer, None).compute_dtype == "float32"


def test_miss_embeds_only_new_words_and_extends_the_cache(tokenizer, tmp_path, rng):
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    counter = count_forwards(model)
    words = random_words(60, rng)
    old, new = words[:35], words[35:]
    embedder(model, tokenizer, tmp_path).embed(old)
    counter["rows"] = 0
    vectors = embedder(model, tokenizer, tmp_path).embed(new + old)
    assert counter["rows"] == len(new)
    torch.testing.assert_close(vectors, embedder(model, tokenizer, None).embed(new + old), atol=1e-6, rtol=1e-5)
    counter["rows"] = 0
    embedder(model, tokenizer, tmp_path).embed(words)
    assert counter["rows"] == 0


def test_an_interrupted_run_keeps_the_pieces_it_finished(tokenizer, tmp_path, rng, monkeypatch):
    from diffmask_fast import embedding

    monkeypatch.setattr(embedding, "CACHE_PIECE", 8)
    monkeypatch.setattr(embedding, "CACHE_SECONDS", 0.0)  # pieces of CACHE_PIECE words, however fast
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    words = random_words(30, rng)
    expected = embedder(model, tokenizer, None).embed(words)
    interrupted = embedder(model, tokenizer, tmp_path)
    embed_piece = interrupted._embed_uncached
    pieces = []

    def stopped_at_the_third_piece(piece, bar):
        pieces.append(len(piece))
        if len(pieces) == 3:
            raise KeyboardInterrupt
        return embed_piece(piece, bar)

    monkeypatch.setattr(interrupted, "_embed_uncached", stopped_at_the_third_piece)
    with pytest.raises(KeyboardInterrupt):
        interrupted.embed(words)
    counter = count_forwards(model)
    again = embedder(model, tokenizer, tmp_path).embed(words)
    assert counter["rows"] == len(words) - 16, "the two finished pieces were cached"
    torch.testing.assert_close(again, expected, atol=1e-6, rtol=1e-5)
    # A fast embedder takes larger pieces: about CACHE_SECONDS of work each.
    monkeypatch.setattr(embedding, "CACHE_SECONDS", 3600.0)
    fast = embedder(model, tokenizer, tmp_path / "fast")
    sizes = []
    embed_all = fast._embed_uncached
    monkeypatch.setattr(fast, "_embed_uncached", lambda piece, bar: sizes.append(len(piece)) or embed_all(piece, bar))
    fast.embed(words)
    assert sizes == [8, len(words) - 8]


def test_changed_weights_pooling_or_settings_never_read_stale_vectors(tokenizer, tmp_path, rng):
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    words = random_words(20, rng)
    e = embedder(model, tokenizer, tmp_path)
    before = e.embed(words)
    fingerprint = weights_fingerprint(model)
    with torch.no_grad():
        model.embeddings.LayerNorm.weight.data[0] += 0.5  # one weight, changed in place behind the cache's back
    assert weights_fingerprint(model) != fingerprint
    counter = count_forwards(model)
    after = e.embed(words)
    assert counter["rows"] == len(words), "the perturbed model must be run again"
    torch.testing.assert_close(after, embedder(model, tokenizer, None).embed(words), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(after, before)
    keys = {e.cache_key()[0]}
    for options in ({"pooling": "pooled"}, {"pooling": "input_embeddings"}, {"max_length": 16}, {"dtype": "bfloat16"}):
        keys.add(embedder(model, tokenizer, tmp_path, **options).cache_key()[0])
    assert len(keys) == 5
    plain = embedder(model, tokenizer, tmp_path, pooling="input_embeddings")
    halved = embedder(model, tokenizer, tmp_path, pooling="input_embeddings", dtype="bfloat16")
    assert plain.cache_key() == halved.cache_key() and halved.compute_dtype == "float32"  # no forward pass
    assert embedder(model, tokenizer, tmp_path, dtype="bf16").compute_dtype == "bfloat16"
    other = tiny_bert(tokenizer, rng.randrange(2**31))
    assert embedder(other, tokenizer, tmp_path).cache_key()[0] not in keys
    directories = list((tmp_path / "embeddings").iterdir())
    assert len(directories) == 2 and all((d / "key.json").is_file() for d in directories)


def segment_files(root):
    return sorted((root / "embeddings").glob("*/seg-*"))


def test_a_tokenizer_changed_after_first_use_is_followed(tokenizer, tmp_path, rng):
    import copy

    tokenizer = copy.deepcopy(tokenizer)  # the fixture is shared: not changed
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    words = random_words(10, rng)
    cached = embedder(model, tokenizer, tmp_path)
    cached.embed(words)
    tokenizer.add_tokens(words[:3])  # now one token each
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    assert tokenizer(words[0], add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(words[0])]
    expected = embedder(model, tokenizer, None).embed(words)
    torch.testing.assert_close(cached.embed(words), expected, atol=1e-6, rtol=1e-5)
    # What the changed tokenizer cached is right for a new run too.
    torch.testing.assert_close(embedder(model, tokenizer, tmp_path).embed(words), expected, atol=1e-6, rtol=1e-5)


def test_a_tokenizer_that_reads_words_otherwise_gets_vectors_of_its_own(tokenizer, tmp_path, rng):
    """The same vocabulary and weights, but a tokenizer that reads "k" as "c": the cache key must
    follow the tokenizer itself (the test above also changes the weights, which change the key anyway)."""
    import copy

    from tokenizers import normalizers

    model = tiny_bert(tokenizer, rng.randrange(2**31))
    respelling = copy.deepcopy(tokenizer)
    respelling.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.BertNormalizer(),
                                                                    normalizers.Replace("k", "c")])
    words = ["kinase", "keratin", "kidney"]
    for word in words:
        read = respelling(word, add_special_tokens=False)["input_ids"]
        assert read != tokenizer(word, add_special_tokens=False)["input_ids"] and tokenizer.unk_token_id not in read
    embedder(model, tokenizer, tmp_path).embed(words)  # cached as the first tokenizer reads them
    torch.testing.assert_close(embedder(model, respelling, tmp_path).embed(words),
                               embedder(model, respelling, None).embed(words))


def test_fingerprints_are_taken_once_per_scoring_call(tokenizer, tmp_path, rng, monkeypatch):
    from diffmask_fast import embedding
    from diffmask_fast.scoring import WordScorer

    model = tiny_bert(tokenizer, rng.randrange(2**31))
    reads = {"weights": 0}
    real = embedding.weights_fingerprint

    def counted(model):
        reads["weights"] += 1
        return real(model)

    monkeypatch.setattr(embedding, "weights_fingerprint", counted)
    cached = embedder(model, tokenizer, tmp_path)
    words = random_words(40, rng)
    cached.embed(words[:5])
    cached.embed(words[5:10])
    assert reads["weights"] == 2  # outside a block the weights may have changed between calls
    with cached.unchanged():
        cached.embed(words[10:15])
        cached.embed(words[15:20])
    assert reads["weights"] == 3
    scorer = WordScorer(cached, words[:2], chunk_size=7)
    reads["weights"] = 0
    table = scorer.score(words)
    assert reads["weights"] == 1 and len(table) == len(words)  # six chunks, one fingerprint


def test_the_tokenizer_fingerprint_ignores_call_settings_and_follows_changes(tokenizer):
    import copy

    from diffmask_fast.embedding import tokenizer_fingerprint

    tokenizer = copy.deepcopy(tokenizer)  # the fixture is shared: not changed
    plain = tokenizer_fingerprint(tokenizer)
    tokenizer(["a few words"] * 2, truncation=True, max_length=4, padding="max_length")  # sets them on the backend
    assert tokenizer_fingerprint(tokenizer) == plain
    tokenizer.add_tokens(["phosphorylation"])
    assert tokenizer_fingerprint(tokenizer) != plain


def test_a_tokenizer_with_a_pre_tokenizer_written_in_python_is_fingerprinted_and_embeds(bert_wordpiece, rng):
    """A backend part written in Python (RoFormer's jieba pre-tokenizer) cannot be serialized:
    the fingerprint failed with "Custom PreTokenizer cannot be serialized", and so did embed."""
    import copy

    from tokenizers.pre_tokenizers import PreTokenizer

    from diffmask_fast.embedding import tokenizer_fingerprint

    class SpaceSplitter:
        def pre_tokenize(self, pretokenized):
            pretokenized.split(lambda i, text: text.split(" ", "removed"))

    custom = copy.deepcopy(bert_wordpiece)
    custom.backend_tokenizer.pre_tokenizer = PreTokenizer.custom(SpaceSplitter())
    fingerprint = tokenizer_fingerprint(custom)
    assert fingerprint == tokenizer_fingerprint(custom) != tokenizer_fingerprint(bert_wordpiece)
    model = tiny_bert(custom, rng.randrange(2**31))
    vectors = WordEmbedder(model, custom, pooling="mean", device="cpu", progress=False).embed(["enzyme", "binds"])
    assert vectors.shape == (2, model.config.hidden_size) and torch.isfinite(vectors).all()
    custom.add_tokens(["phosphorylation"])
    assert tokenizer_fingerprint(custom) != fingerprint, "its vocabulary still counts"


def test_a_tokenizer_read_from_files_without_a_backend_is_fingerprinted_by_their_content(tmp_path):
    """A tokenizer without a ``tokenizers`` backend (a Python SentencePiece one) was known by its
    vocabulary and settings: its model file, rewritten at the same path with the same pieces and
    other scores, tokenizes otherwise but kept the fingerprint, and the cached vectors."""
    from types import SimpleNamespace

    from diffmask_fast.embedding import tokenizer_fingerprint

    model_file = tmp_path / "spiece.model"
    model_file.write_bytes(b"pieces with their first scores")
    tokenizer = SimpleNamespace(get_vocab=lambda: {"\u2581the": 0, "\u2581kinase": 1}, all_special_tokens=["<unk>"],
                                init_kwargs={"vocab_file": str(model_file), "do_lower_case": False})
    first = tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(tokenizer) == first
    model_file.write_bytes(b"pieces with other scores")
    assert tokenizer_fingerprint(tokenizer) != first


@pytest.mark.parametrize("damage", ["truncate_vectors", "garble_vectors", "delete_vectors", "garble_words", "truncate_words"])
def test_corrupt_segments_are_reported_discarded_and_rebuilt(tokenizer, tmp_path, rng, damage):
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    words = random_words(30, rng)
    expected = embedder(model, tokenizer, tmp_path).embed(words)
    vectors_file = next(p for p in segment_files(tmp_path) if p.suffix == ".npy")
    words_file = vectors_file.with_suffix(".json")
    if damage == "truncate_vectors":
        data = vectors_file.read_bytes()
        vectors_file.write_bytes(data[: len(data) // 2])
    elif damage == "garble_vectors":
        data = bytearray(vectors_file.read_bytes())
        data[-7] ^= 0xFF  # same size, one byte of one vector changed
        vectors_file.write_bytes(bytes(data))
    elif damage == "delete_vectors":
        vectors_file.unlink()
    elif damage == "garble_words":
        words_file.write_text('{"format": "diffmask_fast.embedding_cache/1", "words": [1, 2', encoding="utf-8")
    else:
        words_file.write_bytes(words_file.read_bytes()[:10])
    counter = count_forwards(model)
    with pytest.warns(UserWarning, match="embedding cache") as caught:
        vectors = embedder(model, tokenizer, tmp_path).embed(words)
    named = vectors_file.name if "vectors" in damage else words_file.name
    assert any(named in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert counter["rows"] == len(words)
    torch.testing.assert_close(vectors, expected, atol=1e-6, rtol=1e-5)
    counter["rows"] = 0
    embedder(model, tokenizer, tmp_path).embed(words)  # rebuilt: a clean hit now
    assert counter["rows"] == 0


def test_segments_are_atomic_and_merged(tokenizer, tmp_path, rng, monkeypatch):
    monkeypatch.setattr(embedding_cache, "MAX_SEGMENTS", 3)
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    words = random_words(80, rng)
    e = embedder(model, tokenizer, tmp_path)
    for part in range(5):
        e.embed(words[part * 16 : (part + 1) * 16])
    files = segment_files(tmp_path)
    assert len([p for p in files if p.suffix == ".json"]) <= 3
    assert not list((tmp_path / "embeddings").glob("*/.*tmp")), "no temporary files are left behind"
    counter = count_forwards(model)
    vectors = embedder(model, tokenizer, tmp_path).embed(words)
    assert counter["rows"] == 0
    torch.testing.assert_close(vectors, embedder(model, tokenizer, None).embed(words), atol=1e-6, rtol=1e-5)


def test_a_segment_whose_commit_fails_is_never_read(tmp_path, rng, monkeypatch):
    """The JSON that commits a segment is written whole or not at all: one cut short would be
    taken for a corrupt segment by another process, which removes it and warns."""
    from diffmask_fast import _io

    dimension = 4
    words = random_words(10, rng)
    vectors = np.random.default_rng(rng.randrange(2**31)).standard_normal((10, dimension)).astype(np.float32)
    cache = embedding_cache.EmbeddingCache(tmp_path, "key", dimension)
    replace = _io.os.replace

    def full_disk_at_the_commit(source, target, *args, **kwargs):
        if Path(target).name.startswith("seg-") and str(target).endswith(".json"):
            raise OSError(28, "No space left on device")
        return replace(source, target, *args, **kwargs)

    monkeypatch.setattr(_io.os, "replace", full_disk_at_the_commit)
    with pytest.raises(OSError, match="No space left"):
        cache.add(words, vectors)
    monkeypatch.undo()
    assert not list(tmp_path.rglob("seg-*.json")) and not list(tmp_path.rglob("*tmp*"))
    found, _ = embedding_cache.EmbeddingCache(tmp_path, "key", dimension).lookup(words)
    assert len(found) == 0, "nothing of the failed segment is read"


def test_a_cache_opened_for_another_dimension_skips_whole_segments_and_keeps_them(tmp_path, rng):
    """Whole segments of 3-dimensional vectors, read by a cache opened for 4, were taken for
    damaged ones and deleted; a segment whose recorded dimension its vectors do not have is."""
    words = random_words(10, rng)
    vectors = np.random.default_rng(rng.randrange(2**31)).standard_normal((10, 3)).astype(np.float32)
    embedding_cache.EmbeddingCache(tmp_path, "key", 3).add(words, vectors)
    files = sorted(segment_files(tmp_path))
    with pytest.warns(DiffmaskWarning, match="holds vectors of 3 dimensions, not the 4 this cache was opened for; "
                                             "skipping it"):
        found, _ = embedding_cache.EmbeddingCache(tmp_path, "key", 4).lookup(words)
    assert len(found) == 0 and sorted(segment_files(tmp_path)) == files
    found, _ = embedding_cache.EmbeddingCache(tmp_path, "key", 3).lookup(words)
    assert len(found) == len(words)
    meta = next(path for path in files if path.suffix == ".json")
    meta.write_text(meta.read_text(encoding="utf-8").replace('"dimension": 3', '"dimension": 4'), encoding="utf-8")
    with pytest.warns(DiffmaskWarning, match=r"holds float32 \(10, 3\), expected float32 \(10, 4\); discarded"):
        embedding_cache.EmbeddingCache(tmp_path, "key", 4).lookup(words)
    assert not list(segment_files(tmp_path))


def test_a_merge_by_another_process_is_followed_without_a_warning(tmp_path, rng, recwarn, monkeypatch):
    dimension = 4
    words = random_words(40, rng)
    vectors = np.random.default_rng(rng.randrange(2**31)).standard_normal((40, dimension)).astype(np.float32)
    writer = embedding_cache.EmbeddingCache(tmp_path, "key", dimension)
    for part in range(4):
        writer.add(words[part * 10 : (part + 1) * 10], vectors[part * 10 : (part + 1) * 10])
    reader = embedding_cache.EmbeddingCache(tmp_path, "key", dimension)
    monkeypatch.setattr(embedding_cache, "MAX_SEGMENTS", 2)
    look = reader.refresh

    def merged_right_after_the_look():  # the reader knows four segments, the writer deletes three
        look()
        if len(writer._segments) == 4:
            writer._merge()
            assert len(writer._segments) == 2

    monkeypatch.setattr(reader, "refresh", merged_right_after_the_look)
    positions, found = reader.lookup(words)
    assert sorted(positions.tolist()) == list(range(40)), "every word is found in the merged segment"
    np.testing.assert_array_equal(found, vectors[positions])
    assert not [w for w in recwarn if "embedding cache" in str(w.message)]


def test_a_corrupt_segment_that_cannot_be_deleted_is_not_read_again(tmp_path, rng, monkeypatch):
    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 3)
    cache.add(["enzyme", "kinase"], np.ones((2, 3), dtype=np.float32))
    vectors_file = next(cache.directory.glob("seg-*.npy"))
    vectors_file.write_bytes(vectors_file.read_bytes()[:-4])
    monkeypatch.setattr(embedding_cache._Segment, "remove", lambda self: PermissionError(13, "Permission denied"))
    reader = embedding_cache.EmbeddingCache(tmp_path, "key", 3)  # a read-only cache
    with pytest.warns(UserWarning, match="(does not match its checksum|cannot read).*; cannot delete it "
                                         r"\(Permission denied\), so skipping it .* delete .*seg-.*\.json and"):
        positions, _ = reader.lookup(["enzyme", "kinase"])
    assert positions.size == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reader.lookup(["enzyme"])[0].size == 0  # no second warning, no endless retry


@pytest.mark.parametrize("denied", ["words", "vectors"])
def test_a_segment_this_process_may_not_read_is_skipped_not_deleted(tmp_path, monkeypatch, denied):
    """In a cache shared between users, a segment another user wrote may be unreadable here: its
    words are embedded again, and the segment stays for those who can read it."""
    from pathlib import Path

    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 3)
    cache.add(["enzyme", "kinase"], np.ones((2, 3), dtype=np.float32))
    files = sorted(cache.directory.glob("seg-*"))
    if denied == "words":
        read_text = Path.read_text

        def refuse_segments(path, *args, **kwargs):
            if path.name.startswith("seg-"):
                raise PermissionError(13, "Permission denied", str(path))
            return read_text(path, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", refuse_segments)
    else:
        def refuse(path):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(embedding_cache, "_file_sha256", refuse)
    reader = embedding_cache.EmbeddingCache(tmp_path, "key", 3)
    with pytest.warns(UserWarning, match="Permission denied.*skipping it and embedding its words again"):
        positions, _ = reader.lookup(["enzyme", "kinase"])
    assert positions.size == 0
    assert sorted(cache.directory.glob("seg-*")) == files, "an unreadable segment was deleted"


def test_no_cache_writes_nothing_and_default_dir_follows_the_environment(tokenizer, tmp_path, monkeypatch, rng):
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    monkeypatch.setenv("DIFFMASK_CACHE", str(tmp_path / "env"))
    assert embedding_cache.default_cache_dir() == tmp_path / "env"
    embedder(model, tokenizer, None).embed(["enzyme"])
    assert not (tmp_path / "env").exists()
    embedder(model, tokenizer, True).embed(["enzyme"])
    assert len(list((tmp_path / "env" / "embeddings").iterdir())) == 1


def test_unwritable_cache_only_warns(tokenizer, tmp_path, rng):
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="could not write"):
        vectors = embedder(model, tokenizer, blocker).embed(["enzyme", "kinase"])
    assert vectors.shape == (2, 24)


def test_an_unreadable_cache_folder_only_warns(tokenizer, tmp_path, rng, monkeypatch):
    """A folder this user may not list (another user's cache) is named in a warning, and the
    words are embedded without it. (Root reads any folder, so the refusal is simulated.)"""
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    words = random_words(20, rng)
    expected = embedder(model, tokenizer, None).embed(words)
    embedder(model, tokenizer, tmp_path).embed(words)  # the cache holds the words

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self.directory))

    monkeypatch.setattr(embedding_cache.EmbeddingCache, "refresh", denied)
    with pytest.warns(UserWarning, match=r"could not read the embedding cache .*Permission denied"):
        vectors = embedder(model, tokenizer, tmp_path).embed(words)
    torch.testing.assert_close(vectors, expected)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_is_close_to_float32(tokenizer, dtype, rng):
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    words = random_words(30, rng)
    full = embedder(model, tokenizer, None).embed(words)
    reduced = embedder(model, tokenizer, None, dtype=dtype).embed(words)
    assert reduced.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(full, reduced, dim=1)
    assert (cosine > 0.99).all(), cosine.min()
    with pytest.raises(ValueError, match="unknown dtype"):
        embedder(model, tokenizer, None, dtype="int8")
    inputs = embedder(model, tokenizer, None, pooling="input_embeddings", dtype=dtype).embed(words)
    np.testing.assert_array_equal(inputs.numpy(), embedder(model, tokenizer, None, pooling="input_embeddings").embed(words).numpy())


def test_leftovers_of_a_killed_writer_are_swept_once_stale(tmp_path, rng):
    """A writer killed mid-segment leaves a temporary file or a vectors file with no JSON: the next
    run that adds segments deletes them once stale, and keeps young ones (a live writer's)."""
    import os
    import time

    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 3)
    cache.add(["enzyme"], np.ones((1, 3), dtype=np.float32))
    directory = cache.directory
    kept_segment = {p.name for p in directory.iterdir()}
    old = time.time() - embedding_cache.STALE_SECONDS - 60
    stale = [directory / ".seg-1-aa.npy.x1.tmp", directory / "seg-00000000000000000001-deadbeef.npy",
             directory / ".key.json.x3.tmp"]
    young = [directory / ".seg-2-bb.json.x2.tmp", directory / "seg-00000000000000000002-cafecafe.npy"]
    for path in stale + young:
        path.write_bytes(b"partial")
    for path in stale:
        os.utime(path, (old, old))
    writer = embedding_cache.EmbeddingCache(tmp_path, "key", 3)
    writer.add(["kinase"], np.full((1, 3), 2.0, dtype=np.float32))
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in young)
    assert kept_segment <= {p.name for p in directory.iterdir()}, "complete segments are never swept"
    positions, found = writer.lookup(["enzyme", "kinase"])
    assert sorted(positions.tolist()) == [0, 1]


def test_a_merge_keeps_each_word_once(tmp_path, monkeypatch):
    """Two processes that both embedded a word wrote it in two segments: merged, it is one row."""
    monkeypatch.setattr(embedding_cache, "MAX_SEGMENTS", 1)  # every add past the first merges all segments
    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 2)
    cache.add(["enzyme", "kinase"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    embedding_cache.EmbeddingCache(tmp_path, "key", 2).add(["kinase", "cell"], np.array([[0, 1], [1, 1]], np.float32))
    cache.add(["enzyme", "protein"], np.array([[1, 0], [2, 2]], dtype=np.float32))
    rows = sum(len(segment.words) for segment in cache._segments.values())
    assert len(cache._segments) == 1 and rows == len(cache) == 4
    positions, vectors = cache.lookup(["cell", "enzyme", "kinase", "protein"])
    np.testing.assert_array_equal(vectors[np.argsort(positions)], [[1, 1], [1, 0], [0, 1], [2, 2]])


@pytest.mark.parametrize("damage", ["one_letter", "two_swapped"])
def test_damaged_words_of_a_segment_are_caught_by_their_checksum(tmp_path, rng, damage):
    """The JSON names the word of each row: a changed letter, or two words swapped, parse as
    well as before and would serve one word another's vector."""
    words = random_words(20, rng)
    vectors = np.random.default_rng(rng.randrange(2**31)).standard_normal((20, 3)).astype(np.float32)
    embedding_cache.EmbeddingCache(tmp_path, "key", 3).add(words, vectors)
    words_file = next((tmp_path / "embeddings" / "key").glob("seg-*.json"))
    meta = json.loads(words_file.read_text(encoding="utf-8"))
    first, second = rng.sample(range(20), 2)
    if damage == "one_letter":
        meta["words"][first] = meta["words"][first][:-1] + ("a" if meta["words"][first][-1] != "a" else "b")
    else:
        meta["words"][first], meta["words"][second] = meta["words"][second], meta["words"][first]
    words_file.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.warns(UserWarning, match=f"{words_file.name}'s words do not match their checksum"):
        positions, found = embedding_cache.EmbeddingCache(tmp_path, "key", 3).lookup(words + meta["words"])
    assert len(positions) == 0 and not words_file.exists()


def test_segments_without_a_words_checksum_are_still_read(tmp_path, rng, recwarn):
    """Segments written before the words had a checksum stay valid."""
    words = random_words(10, rng)
    vectors = np.random.default_rng(rng.randrange(2**31)).standard_normal((10, 3)).astype(np.float32)
    embedding_cache.EmbeddingCache(tmp_path, "key", 3).add(words, vectors)
    words_file = next((tmp_path / "embeddings" / "key").glob("seg-*.json"))
    meta = json.loads(words_file.read_text(encoding="utf-8"))
    del meta["words_sha256"]
    words_file.write_text(json.dumps(meta), encoding="utf-8")
    positions, found = embedding_cache.EmbeddingCache(tmp_path, "key", 3).lookup(words)
    np.testing.assert_array_equal(found, vectors[positions])
    assert sorted(positions.tolist()) == list(range(10))
    assert not [w for w in recwarn if "embedding cache" in str(w.message)]


def test_a_merge_copies_the_vectors_a_block_at_a_time(tmp_path, rng, monkeypatch):
    """Merging built the merged segment in memory (copies, concatenation, the serialized file:
    a process's memory grew by about 4x the segment), so merging 10^6-word segments took tens of
    GB. Now the
    merged segment is streamed to disk from the mapped segments, a few rows at a time, and reads
    back as the vectors added (copies of a word kept once, block boundaries anywhere)."""
    import tracemalloc

    dimension, per_segment = 256, 2000
    monkeypatch.setattr(embedding_cache, "MAX_SEGMENTS", 4)
    monkeypatch.setattr(embedding_cache, "MERGE_BLOCK_ROWS", rng.randrange(50, 300))
    generator = np.random.default_rng(rng.randrange(2**31))
    words = random_words(5 * per_segment, rng)
    vectors = generator.standard_normal((len(words), dimension)).astype(np.float32)
    cache = embedding_cache.EmbeddingCache(tmp_path, "key", dimension)
    for part in range(4):
        rows = slice(part * per_segment, (part + 1) * per_segment)
        cache.add(words[rows], vectors[rows])
    cache.add(words[: per_segment // 2], vectors[: per_segment // 2])  # copies: kept once in the merge
    tracemalloc.start()
    try:
        cache.add(words[4 * per_segment :], vectors[4 * per_segment :])  # the sixth segment: a merge
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cache._segments) < 6, "merged"
    merged_bytes = max(len(segment.words) for segment in cache._segments.values()) * dimension * 4
    assert peak < merged_bytes / 3, f"merging {merged_bytes:,} bytes of vectors took {peak:,} bytes at most"
    positions, found = embedding_cache.EmbeddingCache(tmp_path, "key", dimension).lookup(words)
    assert sorted(positions.tolist()) == list(range(len(words)))
    np.testing.assert_array_equal(found, vectors[positions])
    reread = embedding_cache.EmbeddingCache(tmp_path, "key", dimension)
    reread.refresh()
    assert len(reread) == sum(len(segment.words) for segment in reread._segments.values()) == len(words)


def _add_random_words(directory: str, seed: int) -> None:
    rng = random.Random(seed)
    cache = embedding_cache.EmbeddingCache(directory, "key", 4)
    for _ in range(60):
        words = list(dict.fromkeys(f"w{rng.randrange(600)}" for _ in range(8)))
        found = set(cache.lookup(words)[0].tolist())
        new = [word for i, word in enumerate(words) if i not in found]
        if new:
            cache.add(new, np.full((len(new), 4), float(int(new[0][1:])), dtype=np.float32))


def test_processes_adding_at_once_keep_the_cache_the_size_of_its_words(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    seed = random.randrange(2**31)
    processes = [context.Process(target=_add_random_words, args=(str(tmp_path), seed + i)) for i in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0
    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 4)
    cache.refresh()
    rows = sum(len(segment.words) for segment in cache._segments.values())
    # Words embedded by two processes at once stay doubled until a merge reaches them, never more.
    assert rows <= 2 * len(cache), f"{rows} rows for {len(cache)} words (seed {seed})"
    assert len(cache._segments) <= embedding_cache.MAX_SEGMENTS + 3


def test_a_model_configured_otherwise_with_the_same_weights_reads_no_stale_vectors(minilm_tokenizer, tmp_path):
    """The activation or the layer-norm epsilon changes the vectors, not the weights."""
    from diffmask_fast.embedding import WordEmbedder

    words = ["enzyme", "kinase", "receptor"]
    gelu, relu = tiny_bert(minilm_tokenizer, 0), tiny_bert(minilm_tokenizer, 0, hidden_act="relu")
    cached = WordEmbedder(gelu, minilm_tokenizer, pooling="mean", cache_dir=tmp_path, progress=False)
    cached.embed(words)
    other = WordEmbedder(relu, minilm_tokenizer, pooling="mean", cache_dir=tmp_path, progress=False)
    assert other.cache_key()[0] != cached.cache_key()[0]
    expected = WordEmbedder(relu, minilm_tokenizer, pooling="mean", cache_dir=None, progress=False).embed(words)
    torch.testing.assert_close(other.embed(words), expected)


def test_a_sentence_model_pooling_cls_and_mean_tokens_together_gets_mean(tmp_path):
    import json

    from diffmask_fast.embedding import recommended_pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}))
    assert recommended_pooling(tmp_path) == "mean", "mean is among its poolings: cls alone is not how it was trained"


def test_a_cache_every_user_may_write_is_not_used(tokenizer, tmp_path, rng):
    """A cache under a world-writable folder (/tmp as its root) could hold anyone's vectors."""
    model = tiny_bert(tokenizer, rng.randrange(2**31))
    words = random_words(10, rng)
    expected = embedder(model, tokenizer, None).embed(words)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.warns(UserWarning, match=r"could not read the embedding cache .*shared is writable by every user "
                                         r"\(mode 1777;.*`chmod o-w` it, or give a cache folder of your own"):
        vectors = embedder(model, tokenizer, shared).embed(words)
    torch.testing.assert_close(vectors, expected)
    assert list(shared.iterdir()) == [], "nothing is written there"


@pytest.mark.parametrize("writable", [False, True])
def test_another_users_cache_is_read_only_where_this_user_may_write_it(tmp_path, monkeypatch, writable):
    """A cache folder another user owns and alone may write could hold vectors of their choosing;
    one shared with this user (group-writable) is a team's cache, whose folders inside are made by
    any of the team."""
    import os

    cache = embedding_cache.EmbeddingCache(tmp_path / "theirs", "key", 2)
    cache.add(["enzyme"], np.ones((1, 2), dtype=np.float32))
    owner = os.getuid()
    if owner == 0:  # root's folders are trusted: give them to another user
        owner = 4242
        for folder in (tmp_path / "theirs", cache.directory.parent, cache.directory):
            os.chown(folder, owner, owner)
    monkeypatch.setattr(embedding_cache.os, "getuid", lambda: owner + 1)
    checked = []

    def access(path, mode, **options):
        checked.append(Path(path).name)
        return writable

    monkeypatch.setattr(embedding_cache.os, "access", access)
    reader = embedding_cache.EmbeddingCache(tmp_path / "theirs", "key", 2)
    if writable:
        assert reader.lookup(["enzyme"])[0].tolist() == [0]
        assert set(checked) == {"theirs"}, "only the cache's own folder is asked of"
    else:
        with pytest.raises(embedding_cache.UntrustedCache, match=rf"theirs belongs to another user \(uid {owner}\)"):
            reader.lookup(["enzyme"])


def test_cache_folders_are_made_writable_by_none_but_the_owner_or_a_sharing_group(tmp_path):
    """Made with a umask of 0, the cache's folders were writable by every user, and so refused by
    the cache that made them; in a group's shared folder (g+ws) they are the group's too."""
    import os
    import stat

    previous = os.umask(0)
    try:
        cache = embedding_cache.EmbeddingCache(tmp_path / "mine", "key", 2)
        cache.add(["enzyme"], np.ones((1, 2), dtype=np.float32))
        team = tmp_path / "team"
        team.mkdir()
        team.chmod(0o2775)
        os.umask(0o022)
        shared = embedding_cache.EmbeddingCache(team, "key", 2)
        shared.add(["enzyme"], np.ones((1, 2), dtype=np.float32))
    finally:
        os.umask(previous)
    for folder in (tmp_path / "mine", cache.directory.parent, cache.directory):
        assert not folder.stat().st_mode & stat.S_IWOTH, folder
    assert embedding_cache.EmbeddingCache(tmp_path / "mine", "key", 2).lookup(["enzyme"])[0].tolist() == [0]
    for folder in (shared.directory.parent, shared.directory):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o2775, f"{folder}: {stat.S_IMODE(folder.stat().st_mode):o}"


def test_links_planted_in_the_key_folder_are_never_written_through(tmp_path, monkeypatch):
    """Where key.json or the merge lock is a link, writing it would create the file it points to,
    wherever another user chose."""
    monkeypatch.setattr(embedding_cache, "MAX_SEGMENTS", 2)
    cache = embedding_cache.EmbeddingCache(tmp_path / "cache", "key", 2)
    cache.directory.mkdir(parents=True)
    (cache.directory / "key.json").symlink_to(tmp_path / "planted.json")
    (cache.directory / ".merge.lock").symlink_to(tmp_path / "planted.lock")
    for number in range(4):  # the third add merges
        cache.add([f"word{number}"], np.full((1, 2), number, dtype=np.float32))
    assert not (tmp_path / "planted.json").exists() and not (tmp_path / "planted.lock").exists()
    assert len(cache._segments) <= 2 and len(cache) == 4


def test_a_segment_of_another_format_is_skipped_not_deleted(tmp_path, tokenizer, rng):
    """Another version of the library writes another format: its segments are its own."""
    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 2)
    cache.add(["enzyme"], np.ones((1, 2), dtype=np.float32))
    (segment,) = cache.directory.glob("seg-*.json")
    meta = json.loads(segment.read_text())
    segment.write_text(json.dumps({**meta, "format": "diffmask_fast.embedding_cache/2"}))
    with pytest.warns(UserWarning, match=r"of format 'diffmask_fast.embedding_cache/2', not "
                                         r"diffmask_fast.embedding_cache/1 \(another version's\); skipping it"):
        positions, _ = embedding_cache.EmbeddingCache(tmp_path, "key", 2).lookup(["enzyme"])
    assert positions.size == 0 and segment.exists()
    key, fields = embedder(tiny_bert(tokenizer, rng.randrange(2**31)), tokenizer, tmp_path).cache_key()
    assert fields["cache_format"] == embedding_cache.CACHE_FORMAT, "another format gets a folder of its own"


def test_a_committed_segment_is_never_swept_however_old(tmp_path):
    """Only vectors files whose JSON never came are a killed writer's leftovers."""
    import os
    import time

    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 3)
    cache.add(["enzyme"], np.ones((1, 3), dtype=np.float32))
    old = time.time() - embedding_cache.STALE_SECONDS - 60
    for path in cache.directory.glob("seg-*"):
        os.utime(path, (old, old))
    embedding_cache.EmbeddingCache(tmp_path, "key", 3).add(["kinase"], np.full((1, 3), 2.0, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        positions, vectors = embedding_cache.EmbeddingCache(tmp_path, "key", 3).lookup(["enzyme", "kinase"])
    np.testing.assert_array_equal(vectors[np.argsort(positions)], [[1, 1, 1], [2, 2, 2]])


def test_a_folder_made_in_a_folder_every_user_may_write_is_not_made_group_writable(tmp_path):
    """/tmp is group-writable too (mode 1777): that is no group sharing it."""
    import os
    import stat

    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o777)
    previous = os.umask(0o022)
    try:
        embedding_cache._make_folder(public / "cache" / "embeddings")
    finally:
        os.umask(previous)
    for folder in (public / "cache", public / "cache" / "embeddings"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, f"{folder}: {stat.S_IMODE(folder.stat().st_mode):o}"


def _edit_segment(tmp_path, edit, words=("enzyme", "kinase"), vectors=None):
    """A cache of one segment whose JSON is edited by ``edit(meta, vectors_path)``."""
    vectors = np.arange(2 * 3, dtype=np.float32).reshape(2, 3) if vectors is None else vectors
    embedding_cache.EmbeddingCache(tmp_path, "key", 3).add(list(words), vectors)
    words_file = next((tmp_path / "embeddings" / "key").glob("seg-*.json"))
    meta = json.loads(words_file.read_text(encoding="utf-8"))
    edit(meta, words_file.with_suffix(".npy"))
    words_file.write_text(json.dumps(meta), encoding="utf-8")
    return words_file


def test_segments_whose_fields_disagree_with_their_vectors_are_discarded(tmp_path):
    def other_dimension(meta, vectors_path):
        meta["dimension"] = 4

    def words_not_strings(meta, vectors_path):  # a segment of the format without a words checksum
        del meta["words_sha256"]
        meta["words"] = [["enzyme"], "kinase"]

    def half_precision_vectors(meta, vectors_path):  # the checksum matches: only the dtype is wrong
        np.save(vectors_path, np.ones((2, 3), dtype=np.float16))
        meta["sha256"] = embedding_cache._file_sha256(vectors_path)

    for number, edit in enumerate((other_dimension, words_not_strings, half_precision_vectors)):
        words_file = _edit_segment(tmp_path / str(number), edit)
        cache = embedding_cache.EmbeddingCache(tmp_path / str(number), "key", 3)
        with pytest.warns(UserWarning, match=f"embedding cache: .*{words_file.name[:-5]}"):
            positions, vectors = cache.lookup(["enzyme", "kinase"])
        assert len(positions) == 0 and "kinase" not in cache and not words_file.exists(), edit.__name__


def test_a_word_in_two_segments_reads_from_the_first_by_name_always(tmp_path):
    """Two processes that both embedded a word wrote it twice: every reader takes the same copy."""
    embedding_cache.EmbeddingCache(tmp_path, "key", 2).add(["enzyme"], np.array([[1, 0]], dtype=np.float32))
    embedding_cache.EmbeddingCache(tmp_path, "key", 2).add(["enzyme", "cell"], np.array([[0, 1], [1, 1]], np.float32))
    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 2)
    assert cache.lookup(["enzyme"])[1].tolist() == [[1, 0]]
    cache._reindex()
    assert cache.lookup(["enzyme"])[1].tolist() == [[1, 0]]


def test_segments_another_process_merged_meanwhile_are_not_merged_again(tmp_path, monkeypatch):
    """After the lock, the count is taken again: another process may have merged, and then added
    segments, so that no merge is due."""
    monkeypatch.setattr(embedding_cache, "MAX_SEGMENTS", 8)
    writer = embedding_cache.EmbeddingCache(tmp_path, "key", 2)
    for number in range(8):
        writer.add([f"word{number}"], np.full((1, 2), number, dtype=np.float32))
    cache = embedding_cache.EmbeddingCache(tmp_path, "key", 2)
    looks = []
    own_refresh = cache.refresh

    def refresh():
        looks.append(1)
        if len(looks) == 2:  # the look taken once the lock is held: another process merged, then added
            other = embedding_cache.EmbeddingCache(tmp_path, "key", 2)
            other.refresh()
            other._merge()
            for number in (9, 10):
                other.add([f"word{number}"], np.full((1, 2), number, dtype=np.float32))
        own_refresh()

    monkeypatch.setattr(cache, "refresh", refresh)
    cache.add(["word8"], np.full((1, 2), 8, dtype=np.float32))
    assert len(looks) == 2 and len(cache._segments) == 8 // 2 + 1 + 2
    assert len(list(cache.directory.glob("seg-*.json"))) == 7
