"""Pretraining windows: long documents are cut between words, and nothing is lost."""

from __future__ import annotations

import copy
import json
import os
import random
import warnings

import numpy as np
import pytest

import tokenizers_offline
from diffmask_fast import DiffmaskWarning
from diffmask_fast.corpus import CorpusError
from diffmask_fast.counting import count_words
from diffmask_fast.pretrain_data import (CorpusDocuments, SequenceDataset, TokenWindows, held_out, read_documents,
                                         reading_key, split_documents, special_wrapping, text_key,
                                         tokenize_documents, word_windows)
from diffmask_fast.tokenization import WordGrouper
from diffmask_fast.vocabulary import WordTypes, tokenizer_word_types

TOKENIZERS = ("bert_wordpiece", "roberta_byte_bpe", "sentencepiece_unigram", "word_level_whitespace")


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer(request):
    return getattr(tokenizers_offline, request.param)()


def units(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each word of ``ids`` as the masking strategies group them, and of each token
    that belongs to no word: the pieces a window may not split."""
    spans = [(group[0], group[-1] + 1) for group in WordGrouper.for_tokenizer(tokenizer)(ids)]
    covered = {position for start, end in spans for position in range(start, end)}
    spans += [(position, position + 1) for position in range(len(ids)) if position not in covered]
    return sorted(spans)


def expected_windows(tokenizer, ids: list[int], room: int) -> list[tuple[int, int]]:
    """Greedy windows of at most ``room`` tokens that end where a piece ends, cut inside a piece
    only when it alone is longer than a window."""
    starts = {start for start, _ in units(tokenizer, ids)}
    windows, start = [], 0
    while start < len(ids):
        end = min(start + room, len(ids))
        if end < len(ids):
            end = max((p for p in range(start + 1, end + 1) if p in starts), default=end)
        windows.append((start, end))
        start = end
    return windows


def test_windows_end_between_words_and_keep_every_token(tokenizer, seed):
    rng = random.Random(seed)
    lines = tokenizers_offline.sample_lines(60, seed=seed)
    documents = [" ".join(rng.sample(lines, rng.randint(1, 12))) for _ in range(6)]
    documents.append("x")
    before, after = special_wrapping(tokenizer)
    for max_length in (4, 5, rng.randint(6, 64)):
        room = max_length - len(before) - len(after)
        windows = tokenize_documents(tokenizer, documents, max_length, progress=False, batch_size=rng.randint(1, 4))
        position = 0
        for document in documents:
            ids = tokenizer(document, add_special_tokens=False)["input_ids"]
            for start, end in expected_windows(tokenizer, ids, room):
                window = windows[position]
                position += 1
                assert window == before + ids[start:end] + after, (
                    f"seed={seed}, max_length={max_length}: window {position - 1} of {document[:40]!r}")
                assert len(window) <= max_length
        assert position == len(windows), f"seed={seed}: {len(windows) - position} windows more than expected"


def test_a_word_longer_than_a_window_is_cut(bert_wordpiece):
    document = "pneumonoultramicroscopicsilicovolcanoconiosis is long"
    ids = bert_wordpiece(document, add_special_tokens=False)["input_ids"]
    first_word = units(bert_wordpiece, ids)[0]
    assert first_word[1] > 3, "the test needs a word of more than 3 pieces"
    windows = tokenize_documents(bert_wordpiece, [document], 5, progress=False)
    inner = [w[1:-1] for w in windows]
    assert sum(inner, []) == ids
    assert inner[0] == ids[:3], "a word longer than a window fills whole windows"


def test_the_special_tokens_of_each_family(bert_wordpiece, roberta_byte_bpe):
    assert special_wrapping(bert_wordpiece) == ([bert_wordpiece.cls_token_id], [bert_wordpiece.sep_token_id])
    assert special_wrapping(roberta_byte_bpe) == ([roberta_byte_bpe.bos_token_id], [roberta_byte_bpe.eos_token_id])
    assert special_wrapping(tokenizers_offline.word_level_whitespace()) == ([], [])


def test_documents_without_tokens_give_no_window(bert_wordpiece):
    assert list(tokenize_documents(bert_wordpiece, ["\x07", "a b"], 8, progress=False)) == [
        bert_wordpiece("a b")["input_ids"]]


def test_word_windows_cut_at_the_last_break_within_reach():
    breaks = [True, False, False, True, False, True, False, False, False, False, True]
    assert word_windows(breaks, 4) == [(0, 3), (3, 5), (5, 9), (9, 11)]
    assert word_windows([], 4) == []
    with pytest.raises(ValueError, match="at least one token"):
        word_windows(breaks, 0)


def test_word_windows_without_a_break_within_reach_cut_at_the_window():
    """No break at or before a window's end: the window is cut at ``room`` tokens, never longer
    (the last break of the sequence used to be taken, 6 tokens for room 4)."""
    assert word_windows([0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 4) == [(0, 4), (4, 6), (6, 10)]
    assert word_windows([0] * 9, 4) == [(0, 4), (4, 8), (8, 9)]


def test_windows_are_kept_compact_and_read_as_lists(bert_wordpiece, shared_data_dir):
    """A few bytes a token (lists of Python ints took about 40), read back as the same lists."""
    documents = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:300]
    windows = tokenize_documents(bert_wordpiece, documents, 64, progress=False)
    assert isinstance(windows, TokenWindows) and windows.ids.dtype == np.int32
    assert windows.ids.nbytes + windows.offsets.nbytes <= 6 * len(windows.ids)
    as_lists = list(windows)
    assert all(type(window) is list and all(type(i) is int for i in window) for window in as_lists)
    assert windows[-1] == as_lists[-1] and windows[1:3] == as_lists[1:3]
    with pytest.raises(IndexError):
        windows[len(windows)]
    dataset = SequenceDataset(windows)
    assert dataset.examples is windows and dataset[0] == {"input_ids": as_lists[0]}
    again = tokenize_documents(bert_wordpiece, documents, 64, progress=False, batch_size=7)
    assert again.fingerprint() == windows.fingerprint()
    assert tokenize_documents(bert_wordpiece, documents, 65, progress=False).fingerprint() != windows.fingerprint()


def test_saved_windows_load_memory_mapped_as_they_were(bert_wordpiece, shared_data_dir, tmp_path):
    """The processes of a machine share the windows one of them tokenized: saved, and loaded
    read-only from a memory map (every process of the machine then reads one copy)."""
    documents = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:200]
    windows = tokenize_documents(bert_wordpiece, documents, 48, progress=False)
    windows.save(tmp_path / "shared" / "training")
    assert sorted(path.name for path in (tmp_path / "shared").iterdir()) == ["training.ids.npy",
                                                                           "training.offsets.npy"]
    loaded = TokenWindows.load(tmp_path / "shared" / "training")
    assert isinstance(loaded.ids, np.memmap) and isinstance(loaded.offsets, np.memmap)
    assert not loaded.ids.flags.writeable
    assert loaded.fingerprint() == windows.fingerprint() and list(loaded) == list(windows)
    empty = TokenWindows(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
    empty.save(tmp_path / "empty")
    assert len(TokenWindows.load(tmp_path / "empty")) == 0
    with pytest.raises(FileNotFoundError):
        TokenWindows.load(tmp_path / "missing")


def test_a_save_cut_short_leaves_no_new_ids_beside_old_offsets(tmp_path, monkeypatch):
    """Each file was replaced atomically, but not the pair: new ids beside old offsets of the same
    total length loaded as other windows, with no error."""
    import diffmask_fast.pretrain_data as pretrain_data

    stem = tmp_path / "train"
    TokenWindows(np.array([101, 5, 6, 102, 101, 7, 102]), np.array([0, 4, 7])).save(stem)
    saves = []

    def cut_short_at_the_offsets(file, values, **options):
        saves.append(len(values))
        if len(saves) == 2:
            raise KeyboardInterrupt("interrupted while writing the offsets")
        return np.lib.format.write_array(file, values, **{k: v for k, v in options.items() if k != "allow_pickle"})

    monkeypatch.setattr(pretrain_data.np, "save", cut_short_at_the_offsets)
    with pytest.raises(KeyboardInterrupt):
        TokenWindows(np.array([101, 8, 102, 101, 9, 10, 102]), np.array([0, 3, 7])).save(stem)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=f"the windows at {stem} have ids but no offsets .*cut short; make them again"):
        TokenWindows.load(stem)
    # A build into the same files, cut short between its two files, leaves no mixed pair either.
    TokenWindows(np.array([101, 5, 6, 102, 101, 7, 102]), np.array([0, 4, 7])).save(stem)
    builder = TokenWindows.Builder(stem)
    for window in ([101, 8, 102], [101, 9, 10, 102]):
        builder.add(window)
    finish = pretrain_data._GrowingNpy.finish

    def finish_the_ids_only(growing):
        if growing.path.endswith("offsets.npy"):
            raise KeyboardInterrupt("interrupted before the offsets were put in place")
        finish(growing)

    monkeypatch.setattr(pretrain_data._GrowingNpy, "finish", finish_the_ids_only)
    with pytest.raises(KeyboardInterrupt):
        builder.build()
    with pytest.raises(ValueError, match="have ids but no offsets"):
        TokenWindows.load(stem)


def test_windows_written_as_they_are_made_equal_those_kept_in_memory(bert_wordpiece, shared_data_dir, tmp_path):
    """``into`` writes each chunk of windows out as it is made and maps the result: the same
    windows as in memory, in ``save``'s two files and nothing else (the chunks' temporary files
    are gone)."""
    documents = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:150]
    documents.insert(40, "")  # a document without windows in the middle of a chunk
    in_memory = tokenize_documents(bert_wordpiece, documents, 40, progress=False)
    on_disk = tokenize_documents(bert_wordpiece, documents, 40, progress=False, batch_size=13,
                                 into=tmp_path / "windows" / "train")
    assert sorted(path.name for path in (tmp_path / "windows").iterdir()) == ["train.ids.npy", "train.offsets.npy"]
    assert isinstance(on_disk.ids, np.memmap) and on_disk.ids.dtype == np.int32 and not on_disk.ids.flags.writeable
    assert on_disk.fingerprint() == in_memory.fingerprint() and list(on_disk) == list(in_memory)
    assert np.array_equal(on_disk.offsets, in_memory.offsets)
    none = tokenize_documents(bert_wordpiece, ["", " "], 40, progress=False, into=tmp_path / "none")
    assert len(none) == 0 and len(none.ids) == 0 and none.offsets.tolist() == [0]

    def failing_reader():  # as reading a corpus can fail, after some chunks were written
        yield from documents
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="went away"):
        tokenize_documents(bert_wordpiece, failing_reader(), 40, progress=False, batch_size=13,
                           into=tmp_path / "failed" / "train")
    assert list((tmp_path / "failed").iterdir()) == []
    umask = os.umask(0o022)
    os.umask(umask)
    for part in ("ids", "offsets"):  # as open() leaves a new file, not private to the owner
        assert (tmp_path / "windows" / f"train.{part}.npy").stat().st_mode & 0o777 == 0o666 & ~umask


def test_windows_whose_widening_fails_leave_no_file(tmp_path, monkeypatch):
    """Ids that need int64 after int32 ones were written widen the file written so far: when that
    fails (a full disk), neither file stays."""
    import errno

    builder = TokenWindows.Builder(tmp_path / "train")
    builder.add([1, 2, 3])
    builder.flush()
    builder.add([2**40])

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "frombuffer", disk_full)
    with pytest.raises(OSError, match="No space left"):
        builder.flush()
    monkeypatch.undo()
    builder.discard()
    assert list(tmp_path.iterdir()) == []


def test_windows_built_in_files_widen_every_chunk_when_one_needs_int64(tmp_path, seed):
    """Ids are kept as int32 unless one does not fit: then the whole array is int64, also when
    the chunks were written out one by one with different types."""
    rng = random.Random(seed)
    windows = [[rng.randrange(0, 50_000) for _ in range(rng.randrange(1, 9))] for _ in range(40)]
    windows[rng.randrange(20, 40)][0] = 2**31 + rng.randrange(1000)
    built = {}
    for where in (None, tmp_path / "wide"):
        builder = TokenWindows.Builder(where)
        for number, window in enumerate(windows):
            builder.add(window)
            if number % 7 == 6:
                builder.flush()
        built[where] = builder.build()
    in_memory, on_disk = built.values()
    assert on_disk.ids.dtype == in_memory.ids.dtype == np.int64
    assert list(on_disk) == list(in_memory) == windows
    for part in ("ids", "offsets"):  # plain .npy files, read as numpy reads any
        assert np.array_equal(np.load(tmp_path / f"wide.{part}.npy"), getattr(in_memory, part))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["wide.ids.npy", "wide.offsets.npy"]
    with pytest.raises(RuntimeError, match="builds them once"):
        builder.add([1, 2])
    with pytest.raises(RuntimeError, match="builds them once"):
        builder.build()


def test_mapped_windows_pickle_as_their_files_and_others_as_their_values(bert_wordpiece, tmp_path):
    """Spawned DataLoader workers receive the dataset pickled: mapped windows travel as the name
    of their files (each worker maps them: one copy in memory however many workers there are),
    windows in memory as their values."""
    import pickle

    windows = tokenize_documents(bert_wordpiece, ["the enzyme binds the receptor"] * 2000, 16, progress=False)
    windows.save(tmp_path / "train")
    mapped = TokenWindows.load(tmp_path / "train")
    sent = pickle.dumps(SequenceDataset(mapped))
    assert len(sent) < 1000 < windows.ids.nbytes
    received = pickle.loads(sent).examples
    assert isinstance(received.ids, np.memmap) and received.ids.filename == mapped.ids.filename
    assert received.fingerprint() == windows.fingerprint()
    copied = pickle.loads(pickle.dumps(windows))
    assert not isinstance(copied.ids, np.memmap) and copied.fingerprint() == windows.fingerprint()
    shallow, deep = copy.copy(mapped), copy.deepcopy(mapped)
    assert shallow.ids is mapped.ids and pickle.loads(pickle.dumps(shallow)).ids.filename == mapped.ids.filename
    assert not isinstance(deep.ids, np.memmap) and deep.fingerprint() == windows.fingerprint()
    # Files written again, or gone, hold other windows or none: refused, never read as these.
    TokenWindows(np.array([9, 9], dtype=np.int32), np.array([0, 2])).save(tmp_path / "train")
    with pytest.raises(ValueError, match="written again since these windows were mapped"):
        pickle.loads(sent)
    for part in ("ids", "offsets"):
        (tmp_path / f"train.{part}.npy").unlink()
    with pytest.raises(FileNotFoundError, match="are gone"):
        pickle.loads(sent)
    assert list(deep) == list(windows)


class WorkerReport(SequenceDataset):
    """Tells, with each example, whether the worker reading it maps the windows' file."""

    def __getitem__(self, index: int) -> dict:
        ids = self.examples.ids
        return {**super().__getitem__(index), "mapped_from": getattr(ids, "filename", None)}


def test_spawned_dataloader_workers_map_the_windows(bert_wordpiece, tmp_path):
    import torch

    documents = [f"the enzyme {n} binds receptor {n % 7}" for n in range(300)]
    windows = tokenize_documents(bert_wordpiece, documents, 12, progress=False, into=tmp_path / "train")
    loader = torch.utils.data.DataLoader(WorkerReport(windows), batch_size=None, num_workers=2,
                                         multiprocessing_context="spawn")
    examples = list(loader)
    assert [example["input_ids"] for example in examples] == list(windows)
    assert {example["mapped_from"] for example in examples} == {windows.ids.filename}


def test_word_types_gathered_while_tokenizing_are_those_read_again(tokenizer, shared_data_dir, seed):
    """The words to score come from the tokens the windows are cut from: the same word types as
    reading the documents through the tokenizer again, for every tokenizer family, however the
    documents are cut into windows and chunks."""
    rng = random.Random(seed)
    lines = (shared_data_dir / "chemprot" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    documents = rng.sample(lines, 120) + ["", "Ünïcödé wörds, CAPITALS and 3.5 mM"]
    gathered = WordTypes(tokenizer)
    tokenize_documents(tokenizer, documents, rng.choice([8, 16, 512]), progress=False,
                       batch_size=rng.randint(1, 50), word_types=gathered)
    assert gathered.types == tokenizer_word_types(tokenizer, documents) and len(gathered.types) > 100


def test_texts_the_tokenizer_reads_alike_stay_on_one_side(bert_wordpiece, roberta_byte_bpe, seed):
    """An uncased WordPiece tokenizer reads case, Unicode form and spacing around punctuation
    alike: such variants of a text tokenize to the same windows, and were split like different
    texts ("Gagoś" in NFC and NFD, "[ diethyl" and "[diethyl")."""
    import unicodedata

    key = reading_key(bert_wordpiece)
    base = ["Gago\u015b and Arczewska measured the film.", "the [ diethyl ] ester binds", "Kinase  activity rose"]
    variants = [[text, unicodedata.normalize("NFD", text), text.upper(), text.replace("[ ", "[").replace(" ]", "]"),
                 text.replace("  ", " ")] for text in base]
    assert all(len({key(v) for v in group}) == 1 for group in variants)
    assert key("the kinase binds") != key("the kinases bind")
    byte_level = reading_key(roberta_byte_bpe)  # cased: case tells texts apart, spacing does not
    assert byte_level("the [ diethyl") == byte_level("the [diethyl") and byte_level("A") != byte_level("a")
    rng = random.Random(seed)
    others = [f"other document number {i}" for i in range(60)]
    documents = others + [v for group in variants for v in group]
    rng.shuffle(documents)
    for draw in range(20):
        train, validation = split_documents(documents, 0.3, 1000, seed + draw, key=key)
        held = set(validation)
        for group in variants:
            assert len({v in held for v in group}) == 1, f"seed={seed + draw}: {group} split"
    shouted = "GAGO\u015a and arczewska measured the film ."  # a copy as the uncased tokenizer reads it
    assert key(shouted) in {key(document) for document in base} and shouted not in base


def test_distinct_documents_are_held_out_as_a_seeded_shuffle_picks_them(seed):
    """Without repeated texts, the held-out documents are the first of a seeded shuffle."""
    rng = random.Random(seed)
    documents = [f"document {i}" for i in range(rng.randint(2, 300))]
    fraction, cap = rng.uniform(0.01, 0.9), rng.randint(1, 50)
    train, validation = split_documents(documents, fraction, cap, seed)
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n = min(max(1, round(fraction * len(documents))), cap, len(documents) - 1)
    assert validation == [documents[i] for i in sorted(order[:n])], f"seed={seed}"
    assert train == [d for d in documents if d not in set(validation)]


def test_copies_of_a_text_are_held_out_together_or_not_at_all(seed):
    rng = random.Random(seed)
    texts = [f"text {i}" for i in range(rng.randint(2, 40))]
    documents = [rng.choice(texts) for _ in range(rng.randint(len(texts), 400))]
    documents += texts[:2]  # at least two distinct texts
    rng.shuffle(documents)
    fraction, cap = rng.uniform(0.01, 0.5), rng.randint(1, 100)
    largest = min(cap, len(documents) - 1)
    wanted = min(max(1, round(fraction * len(documents))), largest)
    rarest = min(documents.count(t) for t in set(documents))
    if rarest > largest:  # no text fits even the most the validation set may hold
        with pytest.raises(ValueError, match=f"at least {rarest} times.*exceeds the {largest} validation documents"):
            split_documents(documents, fraction, cap, seed)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, validation = split_documents(documents, fraction, cap, seed)
        assert split_documents(documents, fraction, cap, seed) == (train, validation)
    assert not set(train) & set(validation), f"seed={seed}"
    assert sorted(train + validation) == sorted(documents) and train and validation
    if rarest <= wanted:  # the size asked for, never more: a common text stays in training
        assert len(validation) <= wanted and not caught, f"seed={seed}"
    else:  # no text fits the size asked for: the copies of one of the rarest, said
        assert len(set(validation)) == 1 and len(validation) == rarest, f"seed={seed}"
        assert any(f"holds {rarest} of {len(documents)} documents, not the {wanted} asked" in str(w.message)
                   for w in caught)
    with pytest.raises(ValueError, match="one text repeated"):
        split_documents(["the same"] * 5, 0.2, 10, seed)


def test_corpus_documents_are_read_again_at_each_pass_and_a_changed_corpus_is_refused(tmp_path, seed):
    """The documents of a corpus's files, stripped, the empty ones left out, as ``read_documents``
    lists them; ``without`` leaves positions out. Every pass reads the files again, so files
    that change between two passes would give a split and windows of different documents."""
    rng = random.Random(seed)
    lines = [rng.choice(["", "  ", f" doc {n} ", f"doc {n}\tend"]) for n in range(rng.randint(5, 60))] + ["last"]
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    cut = rng.randint(0, len(lines))
    first.write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    second.write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")
    expected = [line.strip() for line in lines if line.strip()]
    with pytest.warns(DiffmaskWarning, match="named more than once"):
        corpus = CorpusDocuments([first, second, first])  # a file named twice is read once
    assert list(corpus) == list(corpus) == expected == read_documents([first, second])
    left_out = set(rng.sample(range(len(expected)), rng.randint(0, len(expected))))
    rest = corpus.without(left_out)
    assert list(rest) == [document for position, document in enumerate(expected) if position not in left_out]
    assert len(rest) == len(expected) - len(left_out) and len(corpus) == len(expected)
    in_second = sum(1 for line in lines[cut:] if line.strip())
    for past_the_end in (10**6, in_second):  # positions past the last document leave none out
        assert len(CorpusDocuments(second).without([past_the_end])) == in_second
    size = second.stat().st_size
    second.write_text("an added document\n" + second.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(CorpusError, match=f"the corpus file '{second}' changed while the run read it \\({size:,} bytes "
                                          f"then, {size + 18:,} now\\)"):
        list(rest)
    # Counted again whole for the anchors, the files as they are now would give the words of
    # documents never trained on: refused too, also where only the time of change tells.
    third = tmp_path / "c.txt"
    third.write_text("kinase binds\nthe receptor\n", encoding="utf-8")
    corpus = CorpusDocuments(third)
    assert list(corpus) == ["kinase binds", "the receptor"]
    rest = corpus.without([0], ["kinase binds"])  # counted as the whole file less the document left out
    assert dict(rest.word_counts(progress=False).counts) == {"the": 1, "receptor": 1}
    os.utime(third, ns=(third.stat().st_atime_ns, third.stat().st_mtime_ns + 10**9))
    with pytest.raises(CorpusError, match=f"the corpus file '{third}' changed while the run read it \\(rewritten\\)"):
        rest.word_counts(progress=False)
    third.unlink()
    with pytest.raises(CorpusError, match=f"the corpus file '{third}' cannot be read any more"):
        list(corpus)


def test_the_word_counts_of_corpus_documents_are_those_of_their_text(tmp_path, seed):
    """The documents that stay are counted as the files' counts less those of the documents left
    out (when they are given): the counts of the documents' text, as counting them as strings."""
    rng = random.Random(seed)
    words = ["Enzyme", "receptor", "ΣΊΣΥΦΟΣ", "the", "binds", "Kinase,", "(x)"]
    lines = [rng.choice(["", "  "]) if rng.random() < 0.1 else " ".join(rng.choice(words) for _ in range(5))
             for _ in range(rng.randint(10, 200))] + ["last enzyme"]
    (tmp_path / "a.txt").write_text("\n".join(lines[:len(lines) // 2]) + "\n", encoding="utf-8")
    records = [json.dumps({"text": line}) for line in lines[len(lines) // 2:]]
    (tmp_path / "b.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    corpus = CorpusDocuments([tmp_path / "a.txt", tmp_path / "b.jsonl"])  # plain lines, and JSON lines
    documents = list(corpus)
    left_out = set(rng.sample(range(len(documents)), rng.randint(1, len(documents) - 1)))
    rest = [document for position, document in enumerate(documents) if position not in left_out]
    expected = count_words(rest, progress=False)
    counted = corpus.without(left_out, [documents[position] for position in sorted(left_out)]).word_counts(False)
    assert counted == expected and counted.documents == len(rest)
    assert corpus.without(left_out).word_counts(False) == expected  # read as strings where they are not given
    some = sorted(left_out)[:1]  # left out twice, given twice: counted as strings, not subtracted twice
    twice = corpus.without(left_out, [documents[p] for p in sorted(left_out)]).without(some, [documents[some[0]]])
    assert twice.word_counts(False) == expected
    with pytest.raises(ValueError, match="1 documents were given for the 2 positions left out"):
        corpus.without({0, 1}, documents[:1])


def test_a_split_by_digests_of_the_texts_is_the_split_by_the_texts(seed):
    """Runs begun before copies were told by the tokenizer split by the text: ``text_key``'s
    digests (16 bytes a document) give that split exactly, without holding the texts."""
    rng = random.Random(seed)
    texts = [f"text {i} " + "x" * rng.randrange(50) for i in range(rng.randint(2, 60))]
    documents = [rng.choice(texts) for _ in range(rng.randint(len(texts), 500))] + texts[:2]
    rng.shuffle(documents)
    fraction, cap = rng.uniform(0.01, 0.5), rng.randint(20, 200)
    outcomes = []
    for split in (lambda: split_documents(documents, fraction, cap, seed),
                  lambda: held_out([text_key(document) for document in documents], fraction, cap, seed)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcomes.append((split(), [str(warning.message) for warning in caught]))
            except ValueError as error:  # a few texts, each more common than the validation set is large
                outcomes.append(str(error))
    if isinstance(outcomes[0], str):
        assert outcomes[1] == outcomes[0], f"seed={seed}"
    else:
        ((train, validation), said), (held, said_too) = outcomes
        assert validation == [documents[position] for position in sorted(held)], f"seed={seed}"
        assert train == [document for position, document in enumerate(documents) if position not in held]
        assert said == said_too
    assert len({text_key(text) for text in texts}) == len(texts)


def test_keys_in_an_array_split_as_keys_in_a_list(seed):
    """The 16-byte keys of a corpus are grouped in a numpy array (16 bytes a document): the same
    split as Python keys give, the rarest text's fallback and its warning included."""
    rng = random.Random(seed)
    for draw in range(30):
        texts = [f"text {i}" for i in range(rng.randint(2, 30))]
        weights = [rng.random() ** 3 for _ in texts]
        documents = rng.choices(texts, weights, k=rng.randint(len(texts), 300)) + texts[:2]
        rng.shuffle(documents)
        keys = [text_key(document) for document in documents]
        fraction, cap = rng.uniform(0.01, 0.5), rng.randint(1, 80)
        outcomes = []
        for given in (keys, np.frombuffer(b"".join(keys), dtype="V16")):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    outcomes.append((held_out(given, fraction, cap, seed + draw), [str(w.message) for w in caught]))
                except ValueError as error:
                    outcomes.append(str(error))
        assert outcomes[0] == outcomes[1], f"seed={seed}, draw {draw}"
    # Other arrays are keys one by one, as in a list (a NaN equals no other); more than one axis is refused.
    floats = np.array([1.0, np.nan, 1.0, np.nan, 2.0, 3.0])
    assert held_out(floats, 0.34, 10, seed) == held_out(floats.tolist(), 0.34, 10, seed)
    with pytest.raises(ValueError, match=r"one-dimensional array; got shape \(4, 16\)"):
        held_out(np.zeros((4, 16), dtype=np.uint8), 0.5, 10, seed)


def test_a_corpus_of_a_few_repeated_texts_holds_out_what_it_must_and_says_so():
    documents = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    with pytest.warns(DiffmaskWarning, match="holds 10 of 30 documents, not the 2 asked for"):
        assert [len(part) for part in split_documents(documents, 0.05, 5000, 0)] == [20, 10]
    with pytest.raises(ValueError, match="exceeds the 1 validation documents allowed; give validation files"):
        split_documents(documents, 0.05, 1, 0)
    with pytest.warns(DiffmaskWarning, match="holds 2 of 4 documents"):  # as many copies as may be held out
        assert split_documents(["a", "a", "b", "b"], 0.25, 2, 0)[1] in (["a", "a"], ["b", "b"])
    with pytest.warns(DiffmaskWarning, match="holds 2 of 5 documents"):  # the rarest text, not the commonest
        assert split_documents(["a", "a", "b", "b", "b"], 0.2, 10, 0) == (["b", "b", "b"], ["a", "a"])
    for fraction in (0.9, 0.99):  # at least one document is left to train on
        train, validation = split_documents(["doc a", "doc b"], fraction, 10, 0)
        assert len(train) == len(validation) == 1


def test_a_boilerplate_text_repeated_often_stays_in_training():
    documents = ["Copyright notice."] * 60 + [f"document number {i}" for i in range(40)]
    train, validation = split_documents(documents, 0.05, 5000, seed=0)
    assert len(validation) == 5 and "Copyright notice." not in validation
    assert train.count("Copyright notice.") == 60


def test_a_file_named_twice_is_read_once(tmp_path):
    from diffmask_fast.pretrain_data import read_documents

    (tmp_path / "a.txt").write_text("first document\n\nsecond document\n")
    (tmp_path / "b.txt").write_text("third document\n")
    once = read_documents([tmp_path / "a.txt", tmp_path / "b.txt"])
    assert once == ["first document", "second document", "third document"]
    with pytest.warns(DiffmaskWarning, match="read once"):
        assert read_documents([tmp_path / "a.txt", str(tmp_path / "a.txt"), tmp_path / "*.txt", tmp_path]) == once


def test_one_path_alone_is_read_as_one_source(tmp_path, monkeypatch):
    """A string path was read as a list of one-letter paths (and "/" walked the whole disk)."""
    from diffmask_fast.pretrain_data import read_documents

    (tmp_path / "corpus.txt").write_text("first document\n\nsecond document\n")
    monkeypatch.chdir(tmp_path)
    expected = ["first document", "second document"]
    assert read_documents("corpus.txt") == read_documents(tmp_path / "corpus.txt") == expected
    assert read_documents(str(tmp_path / "corpus.txt")) == expected


def test_the_documents_fingerprint_tells_other_texts_and_other_cuts_apart():
    from diffmask_fast.pretrain_data import documents_fingerprint

    same_lengths = documents_fingerprint(["the enzyme"]), documents_fingerprint(["the kinase"])
    assert same_lengths[0]["documents"] == same_lengths[1]["documents"] == 1
    assert same_lengths[0]["sha256"] != same_lengths[1]["sha256"], "other text of the same length"
    assert documents_fingerprint(["ab", "c"])["sha256"] != documents_fingerprint(["a", "bc"])["sha256"]
    assert documents_fingerprint(["a", "bc"]) == documents_fingerprint(["a", "bc"])


def test_a_validation_set_of_no_documents_is_refused_as_such():
    """max_validation=0 was reported as every text appearing "at least 1 times"."""
    from diffmask_fast.pretrain_data import split_documents

    for bad in (0, -3, 0.5, True, float("nan"), "2"):
        with pytest.raises(ValueError, match="max_validation must be at least 1"):
            split_documents(["a", "b", "c"], 0.5, bad, 0)
    for cap in (np.int64(1), 1.0, float("inf")):
        assert len(split_documents(["a", "b", "c"], 0.3, cap, 0)[1]) == 1


def test_copies_of_a_text_never_straddle_the_split_whatever_the_seed():
    """The random test of this rule passes on a lucky seed even when one copy is held out alone."""
    from diffmask_fast.pretrain_data import split_documents

    documents = ["boilerplate"] * 3 + [f"document {i}" for i in range(20)]
    held_out = 0
    for seed in range(40):
        train, validation = split_documents(documents, 0.2, 100, seed)
        assert not set(train) & set(validation), f"seed={seed}"
        assert sorted(train + validation) == sorted(documents)
        held_out += "boilerplate" in validation
    assert held_out > 0, "the premise: some seeds hold the repeated text out"


def test_examples_are_padded_on_the_side_the_tokenizer_pads():
    from diffmask_fast.pretrain_data import pad_examples

    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, -100]}, {"input_ids": [8], "labels": [8]}]
    left = pad_examples(examples, 0, "left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[-100, 6, -100], [-100, -100, 8]]
    right = pad_examples(examples, 0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, -100], [8, -100, -100]]


def test_pre_masked_validation_examples_are_padded_not_masked_again(bert_wordpiece):
    from diffmask_fast.pretrain_data import TrainingCollator

    ids = bert_wordpiece("the protein binds")["input_ids"]
    labels = [-100] * len(ids)
    labels[2] = ids[2]
    masked = []
    collate = TrainingCollator(bert_wordpiece, masking=lambda examples: masked.append(examples) or {"masked": True})
    batch = collate([{"input_ids": ids, "labels": labels}])
    assert batch["labels"].tolist() == [labels] and not masked, "the validation masks were drawn once, up front"
    assert collate([{"input_ids": ids}]) == {"masked": True} and len(masked) == 1, "training examples are masked"


def test_every_per_token_field_of_pre_masked_examples_is_padded():
    """Loss weights, segments and the special-tokens mask were dropped: a pre-masked MSLM batch
    lost its weights, a pair of segments its token types."""
    from diffmask_fast.pretrain_data import pad_examples

    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, -100], "loss_weights": [1.0, 2.5, 1.0],
                 "token_type_ids": [0, 1, 1], "special_tokens_mask": [1, 0, 0]},
                {"input_ids": [8], "labels": [8], "loss_weights": [2.0], "token_type_ids": [1],
                 "special_tokens_mask": [0]}]
    right = pad_examples(examples, 0)
    assert right["loss_weights"].tolist() == [[1.0, 2.5, 1.0], [2.0, 0.0, 0.0]]
    assert right["loss_weights"].dtype.is_floating_point
    assert right["token_type_ids"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert right["special_tokens_mask"].tolist() == [[1, 0, 0], [0, 1, 1]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_examples(examples, 0, "left")
    assert left["loss_weights"].tolist() == [[1.0, 2.5, 1.0], [0.0, 0.0, 2.0]]
    assert left["special_tokens_mask"].tolist() == [[1, 0, 0], [1, 1, 0]]


@pytest.mark.parametrize("field", ["labels", "loss_weights", "token_type_ids", "special_tokens_mask",
                                   "attention_mask"])
def test_a_field_some_examples_lack_is_refused_by_name(field):
    from diffmask_fast.pretrain_data import pad_examples

    values = {"labels": [-100, 6], "loss_weights": [1.0, 2.0], "token_type_ids": [0, 0],
              "special_tokens_mask": [1, 0], "attention_mask": [1, 1]}
    with pytest.raises(ValueError, match=f"'{field}'"):
        pad_examples([{"input_ids": [5, 6], field: values[field]}, {"input_ids": [7, 8]}], 0)
    with pytest.raises(ValueError, match=f"'{field}'"):
        pad_examples([{"input_ids": [7, 8]}, {"input_ids": [5, 6], field: values[field]}], 0)


def test_a_field_that_cannot_be_padded_or_does_not_fit_is_refused():
    from diffmask_fast.pretrain_data import pad_examples

    with pytest.raises(ValueError, match="'position_ids'"):
        pad_examples([{"input_ids": [5, 6], "position_ids": [0, 1]}], 0)
    with pytest.raises(ValueError, match="'labels' has 3 items but its input_ids has 2"):
        pad_examples([{"input_ids": [5, 6], "labels": [-100, 6, 7]}], 0)


def test_a_batch_is_pre_masked_only_if_every_example_is(bert_wordpiece):
    """Judged from the first example alone, a batch that was partly pre-masked was masked again
    (its labels lost) or failed on the examples without labels."""
    from diffmask_fast.pretrain_data import TrainingCollator

    collate = TrainingCollator(bert_wordpiece, masking=lambda examples: pytest.fail("masked a pre-masked example"))
    labelled, plain = {"input_ids": [2, 7, 3], "labels": [-100, 7, -100]}, {"input_ids": [2, 8, 3]}
    for examples in ([plain, labelled], [labelled, plain]):
        with pytest.raises(ValueError, match="'labels'"):
            collate(examples)


def test_a_tokenizer_encoding_is_an_example_not_its_input_ids(bert_wordpiece):
    """A BatchEncoding is a Mapping but no dict: it was wrapped whole as an example's input_ids."""
    from diffmask_fast.pretrain_data import SequenceDataset

    encoding = bert_wordpiece("the protein binds")
    dataset = SequenceDataset([encoding, [2, 7, 3]])
    assert type(dataset[0]) is dict and dataset[0] == {name: encoding[name] for name in encoding}
    assert "attention_mask" in dataset[0] and dataset[1] == {"input_ids": [2, 7, 3]}


def test_a_tokenizer_encoding_of_many_texts_is_read_as_columns(bert_wordpiece):
    """tokenizer(texts) holds columns; iterating it gave its keys, each taken as a sequence."""
    from diffmask_fast.pretrain_data import SequenceDataset

    texts = ["the protein binds", "a kinase"]
    encoding = bert_wordpiece(texts)
    dataset = SequenceDataset(encoding)
    assert len(dataset) == 2
    for row, text in enumerate(texts):
        assert dataset[row] == {name: bert_wordpiece(text)[name] for name in encoding}
    with pytest.raises(ValueError, match="needs an 'input_ids' column; it has 'ids'"):
        SequenceDataset({"ids": [[1, 2]]})
    with pytest.raises(ValueError, match="differ in length"):
        SequenceDataset({"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1]]})
    with pytest.raises(TypeError, match="got str items; tokenize the texts first"):
        SequenceDataset(texts)
    with pytest.raises(ValueError, match="is one example .*; give a list of examples, or tokenize a list of texts"):
        SequenceDataset(bert_wordpiece(texts[0]))


def test_word_grouping_refuses_ids_outside_the_vocabulary(bert_wordpiece):
    """-100 (the label of unmasked tokens) was read from the tables' end and joined the word before it."""
    grouper = WordGrouper.for_tokenizer(bert_wordpiece)
    ids = bert_wordpiece("the kinase binds", add_special_tokens=False)["input_ids"]
    assert len(grouper(ids)) == 3
    for bad in (-100, -1, len(bert_wordpiece) + 5):
        with pytest.raises(ValueError, match=f"token ids must be in \\[0, \\d+\\), the vocabulary's; got {bad}"):
            grouper(ids[:1] + [bad] + ids[1:])
        with pytest.raises(ValueError, match=f"got {bad}"):
            grouper.breaks(ids[:1] + [bad] + ids[1:])
    assert grouper([]) == [] and grouper.breaks([]).shape == (0,)


@pytest.mark.parametrize("name", ["bert_wordpiece", "sentencepiece_unigram", "roberta_byte_bpe"])
def test_the_reading_key_takes_a_lone_surrogate_as_tokenizing_does(name):
    """JSON lines may hold "\\ud800": tokenizing reads it as U+FFFD, the split key failed in the
    tokenizer's normalizer (UnicodeEncodeError) before a run could start."""
    from diffmask_fast.pretrain_data import reading_key

    tokenizer = getattr(tokenizers_offline, name)()
    key = reading_key(tokenizer)
    assert key("broken \ud800 text") == key("broken \ufffd text") != key("mended text")
    assert tokenize_documents(tokenizer, ["broken \ud800 text"], 16, progress=False)[0]


def test_tokenize_documents_refuses_one_text_and_a_length_that_is_no_whole_number():
    """One string was read as a document a character; a max_length of 8.0 failed as a slice index
    on the first word longer than a window."""
    tokenizer = tokenizers_offline.roberta_byte_bpe()
    with pytest.raises(TypeError, match="documents must be an iterable of texts, got one str"):
        tokenize_documents(tokenizer, "The receptor binds its ligand", 16, progress=False)
    with pytest.raises(TypeError, match="max_length must be a whole number, got 8.0"):
        tokenize_documents(tokenizer, ["x" * 200], 8.0, progress=False)


@pytest.mark.parametrize("progress", [False, True])
def test_tokenizing_a_corpus_reads_its_files_once(bert_wordpiece, tmp_path, monkeypatch, progress):
    """The progress bar's total asked a corpus not read yet for its length: a whole extra pass
    over its files, with or without a bar."""
    import diffmask_fast.pretrain_data as pretrain_data

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n\nkinase inhibitors block it\n", encoding="utf-8")
    passes = []
    read = pretrain_data.iter_documents
    monkeypatch.setattr(pretrain_data, "iter_documents", lambda *args: passes.append(args) or read(*args))
    documents = CorpusDocuments([corpus])
    windows = tokenize_documents(bert_wordpiece, documents, 16, progress=progress)
    assert len(passes) == 1 and len(windows) == 2
    tokenize_documents(bert_wordpiece, documents, 16, progress=progress)  # counted now: its length is known
    assert len(passes) == 2


@pytest.mark.parametrize("name", TOKENIZERS + ("minilm_tokenizer",))
def test_a_long_document_tokenized_in_pieces_gives_the_windows_of_the_whole(request, name, shared_data_dir,
                                                                           monkeypatch, seed):
    """A long document is tokenized in pieces cut before a space (memory then holds a piece's
    tokenization, not the document's): the windows are those of the whole document, for every
    tokenizer family, with runs of spaces, tabs and other whitespace at the cuts."""
    import diffmask_fast.pretrain_data as pretrain_data

    tokenizer = request.getfixturevalue(name)
    rng = random.Random(seed)
    lines = (shared_data_dir / "chemprot" / "abstracts.txt").read_text(encoding="utf-8").splitlines()[:6]
    glue = [" ", "  ", "\t", " \t ", "\u00a0", "\u3000 ", "   "]
    text = "".join(word + rng.choice(glue) if rng.random() < 0.2 else word + " "
                   for word in " ".join(lines).split(" ")).strip()
    documents = ["short one", text, "", "x" * 15 + " end", text[: rng.randrange(50, 400)]]
    whole = tokenize_documents(tokenizer, documents, 40, progress=False)
    # Longer than any stretch without a place to cut (a space after a word), which is cut inside.
    cuts = [0] + [i for i in range(1, len(text)) if text[i] == " " and not text[i - 1].isspace()] + [len(text)]
    size = rng.randrange(1, 150) + max(b - a for a, b in zip(cuts, cuts[1:]))
    tokenized_texts = []
    tokenize = pretrain_data.tokenize_texts
    monkeypatch.setattr(pretrain_data, "CHARACTERS_PER_BATCH", size)
    monkeypatch.setattr(pretrain_data, "tokenize_texts",
                        lambda tok, texts, **options: tokenized_texts.append(list(texts))
                        or tokenize(tok, texts, **options))
    types = WordTypes(tokenizer)
    pieces = tokenize_documents(tokenizer, documents, 40, progress=False, word_types=types)
    assert list(pieces) == list(whole), f"seed={seed} size={size}"
    batches = [texts for texts in tokenized_texts if not set(texts) & set(pretrain_data._CUT_PROBES)]  # not probes
    assert sum(map(len, batches)) > len(text) // size, "the long document went in pieces"
    assert all(sum(map(len, texts)) <= size for texts in batches if len(texts) > 1), "batches hold `size`"
    assert types.types == tokenizer_word_types(tokenizer, documents)


def test_pieces_of_a_long_text_are_cut_before_a_space_that_follows_a_word(seed):
    from diffmask_fast.pretrain_data import _pieces

    rng = random.Random(seed)
    text = "".join(rng.choice(["ab", "c", " ", "  ", "\t", "\u00a0", "x" * 30]) for _ in range(400))
    size = rng.randrange(2, 60)
    pieces = list(_pieces(text, size))
    assert "".join(piece for piece, _ in pieces) == text and [last for _, last in pieces] == [False] * (
        len(pieces) - 1) + [True]
    for (piece, _), (after, _) in zip(pieces, pieces[1:]):
        cut_before_a_space = after[0] == " " and not piece[-1].isspace()
        assert len(piece) <= size or (cut_before_a_space and len(piece) < 4 * size) or len(piece) == size, piece
        assert cut_before_a_space or len(piece) == size, (piece, after)
        # No space after a word within the piece's first `size` characters where it runs longer.
        assert len(piece) <= size or not any(piece[i] == " " and not piece[i - 1].isspace() for i in range(1, size))
    assert list(_pieces("a bcdefghij klm", 10)) == [("a", False), (" bcdefghij", False), (" klm", True)]
    assert list(_pieces("x" * 10 + " y", 4)) == [("x" * 10, False), (" y", True)]  # the first space after
    assert list(_pieces("x" * 20, 4)) == [("xxxx", False)] * 4 + [("xxxx", True)]  # none within 4 x 4: cut inside
    assert list(_pieces("", 4)) == [("", True)]


def test_a_tokenizer_that_puts_its_marker_before_every_text_gets_pieces_without_the_space(sentencepiece_unigram):
    """Llama 2's normalizer puts "▁" before every text: a piece that kept the space before its
    first word read as "▁▁word", a token more at every cut."""
    import copy

    from tokenizers import normalizers

    from diffmask_fast import pretrain_data

    tokenizer = copy.deepcopy(sentencepiece_unigram)
    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                                                   normalizers.Replace(" ", "\u2581")])
    tokenizer.backend_tokenizer.pre_tokenizer = None
    assert pretrain_data.piece_start(tokenizer) == "no space"
    assert pretrain_data.piece_start(sentencepiece_unigram) == "space"
    document = "the receptor binds its ligand and the enzyme is inhibited by the drug  twice"
    whole = list(tokenize_documents(tokenizer, [document], 64, progress=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretrain_data, "CHARACTERS_PER_BATCH", 12)
        assert list(tokenize_documents(tokenizer, [document], 64, progress=False)) == whole
        # With no space to cut before, a piece is cut inside a word, and none of its text is lost.
        spaceless = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        batches = list(pretrain_data.batches_of_pieces([spaceless, document], 64, 12, "no space"))
        pieces = [piece for batch in batches for piece, _ in batch]
        assert "".join(pieces[:6]) == spaceless and len(pieces[0]) == 12 and pieces[5:7] == ["YZ", "the receptor"]
        assert " ".join(pieces[6:]) == document, "a cut after a word drops only the space cut before"
        # A tokenizer that reads cut text otherwise either way reads documents whole.
        patch.setattr(pretrain_data, "piece_start", lambda tokenizer: None)
        texts = []
        tokenize = pretrain_data.tokenize_texts
        patch.setattr(pretrain_data, "tokenize_texts", lambda tok, batch, **options: texts.append(list(batch))
                      or tokenize(tok, batch, **options))
        assert list(tokenize_documents(tokenizer, [document], 64, progress=False)) == whole
        assert texts == [[document]]


def test_windows_cut_from_ids_given_piece_by_piece_are_those_of_the_whole(bert_wordpiece, seed):
    """``word_windows`` of a document's whole ids, met as ids that come in pieces of any size."""
    from diffmask_fast.pretrain_data import _WindowCutter

    rng = np.random.default_rng(seed)
    grouper = WordGrouper.for_tokenizer(bert_wordpiece)
    vocabulary = len(bert_wordpiece)
    for _ in range(50):
        ids = rng.integers(0, vocabulary, rng.integers(0, 400)).tolist()
        room = int(rng.integers(1, 60))
        expected = [ids[begin:end] for begin, end in word_windows(grouper.breaks(ids), room) if end > begin]
        cuts = sorted(rng.choice(len(ids) + 1, size=min(len(ids) + 1, int(rng.integers(0, 8))), replace=False))
        pieces = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]
        cutter = _WindowCutter(grouper, room)
        got = [window for i, piece in enumerate(pieces) for window in cutter.windows(piece, i == len(pieces) - 1)]
        assert got == expected, f"seed={seed} room={room} cuts={cuts}"


def test_the_split_of_a_seed_stays_what_earlier_versions_drew():
    """A resumed run checks its documents against the split it began with: the draws of a seed
    are pinned (here as drawn when the texts were shuffled as a list)."""
    keys = [f"text {i % 97}" for i in range(300)]
    assert sorted(held_out(keys, 0.1, 50, 1234)) == [6, 18, 26, 27, 51, 55, 70, 80, 96, 103, 115, 123, 124, 148, 152,
                                                     167, 177, 193, 200, 212, 220, 221, 245, 249, 264, 274, 290, 297]
