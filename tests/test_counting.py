"""Corpus-scale counting: exact equality with reference.count_words on real and adversarial
input, every input type, threads and block boundaries, bad input, the binary counts format,
and Dask. Random inputs are fresh each run; a failing test prints the seed that replays it."""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import mmap
import os
import re
import random
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from diffmask_fast import DiffmaskWarning, _wordtable, counting, reference
from diffmask_fast.anchors import mine_anchors
from diffmask_fast.cli import main
from diffmask_fast.corpus import _FOLDERS_WARNED_OF_JSON_LINES, UTF8_BOM, CorpusError, iter_documents
from diffmask_fast.counting import CountTable, WordCounts, count_words
from diffmask_fast.dask_counting import count_partition, merge_partials, plan_partitions, range_start
from diffmask_fast.general import GeneralFrequencies

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = ["acl_arc/corpus.txt", "chemprot/abstracts.txt", "chemprot/corpus.txt", "scicite/corpus.txt"]
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not present")

#: Byte pieces random texts are made of: whitespace of every kind (complete and truncated),
#: letters with case rules (final sigma, dotted I), punctuation, invalid and truncated UTF-8.
PIECES = [
    b" ", b" ", b"\n", b"\r\n", b"\r", b"\t", b"\x0b", b"\x0c", b"\x1c", b"\x1f", b"\xc2\x85", b"\xc2\xa0",
    b"\xe1\x9a\x80", b"\xe2\x80\x80", b"\xe2\x80\x8a", b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\xe2\x80\xaf",
    b"\xe2\x81\x9f", b"\xe3\x80\x80", b"\xe2\x80", b"\xe3\x80", b"\xc2", b"\xe1\x9a", b"\xe2\x80\x8b",
    b"a", b"b", b"Z", b"enzyme", b"ENZYME", b"Enzyme,", b"(IscS", b"[12,22],", b"e.g.", b"-", b"...",
    "ΣΊΣΥΦΟΣ".encode(), "Όσος".encode(), "İ".encode(), "ß".encode(), "ﬁ".encode(), "é".encode(),
    "“quoted”".encode(), "😀".encode(), "\ufffd".encode(), b"\xff", b"\x80", b"\xbf", b"\xed\xa0\x80",
    b"\xf0\x9f\x98", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x7f", b"\x01",
]


@pytest.fixture
def rng(seed):
    """Random inputs from the shared replayable seed (conftest.py)."""
    return random.Random(seed)


def random_bytes(rng: random.Random, pieces: int) -> bytes:
    out = []
    for _ in range(pieces):
        if rng.random() < 0.85:
            out.append(rng.choice(PIECES))
        else:
            out.append(bytes([rng.randrange(1, 256)]))  # NUL marks a binary file
    return b"".join(out)


def expected_for_file(path: Path) -> tuple[dict, int]:
    """The specification: reference.count_words over the documents corpus.iter_documents reads."""
    documents = list(iter_documents(path))
    return dict(reference.count_words(documents)), len(documents)


def assert_same(counts: WordCounts, expected: dict, documents: int, context: str = "") -> None:
    assert dict(counts.counts) == expected, context
    assert counts.documents == documents, context
    assert counts.total == sum(expected.values()), context
    assert len(counts) == len(expected), context


# ----------------------------------------------------------------------------------------------
# The byte-level rules the kernel relies on
# ----------------------------------------------------------------------------------------------


def test_whitespace_is_what_str_split_splits_on():
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert "".join(spaces) == _wordtable.WHITESPACE
    assert ("x" + "x".join(spaces) + "x").split() == ["x"] * (len(spaces) + 1)
    for space in spaces:
        encoded = space.encode("utf-8")
        assert _wordtable.BYTE_CLASS[encoded[0]] == (1 if len(encoded) == 1 else 2)


def test_ascii_strip_is_normalize_word_on_ascii():
    for byte in range(128):
        character = chr(byte)
        stripped = unicodedata.category(character)[0] in "PS" or character.isspace()
        assert bool(_wordtable.ASCII_STRIP[byte]) == stripped
        assert stripped == (reference.normalize_word(f"a{character}") == "a")


def test_ascii_normalization_reads_the_strip_table_of_this_run(tmp_path, monkeypatch):
    """Numba caches compiled kernels on disk with the globals they read frozen in: the strip table
    is an argument, so a kernel compiled before a change to it still strips what it says now."""
    path = tmp_path / "tags.txt"
    path.write_text("#tag x# #tag\n")
    assert dict(count_words(path, progress=False).counts) == {"tag": 2, "x": 1}
    keep_hash = _wordtable.ASCII_STRIP.copy()
    keep_hash[ord("#")] = False
    monkeypatch.setattr(_wordtable, "ASCII_STRIP", keep_hash)
    assert dict(count_words(path, progress=False).counts) == {"#tag": 2, "x#": 1}


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Blocks are cut into chunks of any size, so that small inputs are cut too."""
    monkeypatch.setattr(counting, "MIN_CHUNK_BYTES", 1)


@pytest.mark.parametrize("lowercase", [True, False])
def test_random_bytes_match_the_reference(tmp_path, rng, tiny_chunks, lowercase):
    """For random bytes b: counts of a file holding b equal reference.count_words of its lines
    and of b.decode("utf-8", "replace"); tiny blocks and chunks, and several threads, cut words
    anywhere. Non-ASCII words keep their case too when lowercase=False."""
    for trial in range(120):
        data = random_bytes(rng, rng.randrange(0, 120))
        path = tmp_path / f"random{trial}.txt"
        path.write_bytes(data)
        documents = list(iter_documents(path))
        expected = dict(reference.count_words(documents, lowercase=lowercase))
        assert expected == dict(reference.count_words([data.decode("utf-8", "replace")], lowercase=lowercase))
        block = rng.choice([1, 2, 3, 5, 8, 64, 1 << 20])
        threads = rng.choice([1, 2, 3])
        context = f"data={data!r} block_bytes={block} threads={threads}"
        if not expected:
            with pytest.raises(CorpusError, match="empty|no words"):
                count_words(path, progress=False, block_bytes=block, threads=threads, lowercase=lowercase)
            continue
        counts = count_words(path, progress=False, block_bytes=block, threads=threads, lowercase=lowercase)
        assert_same(counts, expected, len(documents), context)


def test_text_across_the_kernels_64_byte_blocks_matches_the_reference(tmp_path, rng):
    """The kernel reads 64 bytes at a time: words, multi-byte whitespace and "\r\n" pairs
    straddling a block's edge, and words longer than a block, land at every offset."""
    long_words = [b"x" * n for n in (7, 8, 9, 15, 16, 17, 63, 64, 65, 130)]
    for trial in range(80):
        size, pieces = rng.randrange(1, 1500), []
        while sum(map(len, pieces)) < size:
            pieces.append(rng.choice(PIECES + long_words) if rng.random() < 0.95 else bytes([rng.randrange(1, 256)]))
        data = b"".join(pieces)
        path = tmp_path / f"blocks{trial}.txt"
        path.write_bytes(data)
        documents = list(iter_documents(path))
        expected = dict(reference.count_words(documents))
        if expected:
            assert_same(count_words(path, progress=False, threads=1), expected, len(documents), f"data={data!r}")


def test_the_kernel_counts_every_word_and_line_end_of_a_span(rng):
    """count_span over random text from a random word boundary, with a table small enough to fill
    and grow: the byte strings between whitespace and the line ends (a "\r\n" straddling the
    kernel's 64-byte blocks counts once) are those of the text; ``prev`` carries a "\r"."""
    for trial in range(300):
        data = random_bytes(rng, rng.randrange(1, 200)) + b"\r" * rng.randint(0, 1)
        buf = np.frombuffer(data, np.uint8)
        start = 0 if rng.random() < 0.3 else max(0, int(_wordtable.find_cut(buf, 0, len(buf), False)))
        prev = int(buf[start - 1]) if start else rng.choice([-1, 13])
        slots, arena, meta = _wordtable.new_table(capacity=rng.choice([1, 4, 1 << 10]), arena_bytes=16)
        slots, arena = _wordtable.count_span(buf, start, len(buf), prev, slots, arena, meta)
        span = data[start:]
        words = Counter(span.decode("utf-8", "replace").split())
        lf, cr = span.count(b"\n"), span.count(b"\r")
        crlf = span.count(b"\r\n") + (prev == 13 and span.startswith(b"\n"))
        context = f"data={data!r} start={start} prev={prev}"
        assert (meta[_wordtable.META_LF], meta[_wordtable.META_CR], meta[_wordtable.META_CRLF]) == (lf, cr, crlf), context
        assert meta[_wordtable.META_WORDS] == sum(words.values()), context
        blob, starts, lengths, counts = _wordtable.table_strings(slots, arena, meta)
        found: Counter = Counter()
        for begin, length, count in zip(starts, lengths, counts):  # distinct bytes may decode alike
            found[bytes(blob[begin:begin + length]).decode("utf-8", "replace")] += int(count)
        assert found == words, context


@pytest.mark.parametrize("lowercase", [True, False])
def test_random_strings_match_the_reference(rng, tiny_chunks, lowercase):
    """Case rules of every kind (final sigma, dotted I, Kelvin sign) hold, or are left alone
    with lowercase=False, in ASCII and non-ASCII words alike."""
    alphabet = list(" \n\r\t\x85\xa0\u2028\u3000\u200b") + ["a", "Σ", "ς", "İ", "ß", "ﬁ", "K", "\u212a", ".", "-",
                                                          "“", "”", "😀", "\ufffd", "\x00", "\ud800", "\udfff", "é",
                                                          "\u0301", "\u212b", "\u0308"]  # composed by NFC
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(3000)]
    expected = dict(reference.count_words(texts, lowercase=lowercase))
    for threads in (1, 2):
        assert_same(count_words(texts, progress=False, threads=threads, lowercase=lowercase), expected, len(texts))


ADVERSARIAL_LINES = [
    "", "   ", "Straße ÉCOLE naïve", "ΣΊΣΥΦΟΣ Όσος ΣΑΣ", "İstanbul İİ i̇", "(IscS [12,22], IscU/Isu1 [6,11,16]).",
    "−20C e.g. Fe-S", "tab\tseparated\u00a0nbsp\u2003em-space\u3000ideographic\u1680ogham\u205fmath",
    "line\u2028separator\u2029paragraph\x85nel\x1cfile\x1dgroup\x1erecord\x1funit\x0bvt\x0cff",
    "中文 字符", "emoji 🧪 test 👩‍🔬", "zero\u200bwidth\ufeffbom", "a" * 5000, "word " * 1000,
]


def test_adversarial_text_in_files_and_strings(tmp_path, tiny_chunks):
    long_token = "x" * (1 << 20)
    lines = ADVERSARIAL_LINES + [long_token, "A" + long_token + "É", ""]
    text = "\n".join(lines)
    # Windows line ends, lone CRs, invalid and truncated UTF-8 around the same text.
    data = (text.replace("\n", "\r\n", 3).encode("utf-8") + b"\rcaf\xe9 na\xefve \xe2\x80 trunc\xf0\x9f"
            + b"\r\n\r\n\n\r\rend\xc3")
    path = tmp_path / "adversarial.txt"
    path.write_bytes(data)
    expected, documents = expected_for_file(path)
    assert expected == dict(reference.count_words([data.decode("utf-8", "replace")]))
    for block in (4096, 1 << 22):
        for threads in (1, 2):
            assert_same(count_words(path, progress=False, block_bytes=block, threads=threads), expected, documents)
    assert_same(count_words(lines, progress=False), dict(reference.count_words(lines)), len(lines))
    counts = count_words(path, progress=False)
    assert counts["σίσυφος"] == 1 and counts["i̇stanbul"] == 1 and counts[long_token] == 1
    assert counts["caf\ufffd"] == 1 and counts["na\ufffdve"] == 1  # U+FFFD marks broken text: kept at word ends


def test_line_ends_count_documents_like_the_reader(tmp_path):
    """\n, \r\n and a lone \r end a line (also when a block boundary splits \r\n); other
    Unicode line separators do not; a last line without a line end counts."""
    cases = [(b"a", 1), (b"a\n", 1), (b"\nw", 2), (b"a\r\nb", 2), (b"a\rb\r", 2), (b"a\r\r\nb\n\n", 4),
             (b"\r\n\r\nw", 3), (b"x\xc2\x85y\xe2\x80\xa8z\x0cw\x1cv", 1), (b"w\n\r", 2)]
    path = tmp_path / "lines.txt"
    for data, documents in cases:
        path.write_bytes(data)
        assert len(list(iter_documents(path))) == documents, data
        for block in (1, 2, 1 << 20):
            for threads in (1, 2):
                counts = count_words(path, progress=False, block_bytes=block, threads=threads)
                assert counts.documents == documents, (data, block, threads)
    path.write_bytes(b"alpha beta\r\n" * 10_000)  # larger than a file read at once: read in blocks
    for block in (11, 4096):  # 11: every "\r\n" split between two blocks at some point
        assert count_words(path, progress=False, block_bytes=block, threads=1).documents == 10_000, block


# ----------------------------------------------------------------------------------------------
# Real text, input types, threads
# ----------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("corpus", CORPORA)
def test_real_corpora_match_the_reference(corpus):
    path = DATA / corpus
    expected, documents = expected_for_file(path)
    single = count_words(path, progress=False, threads=1)
    assert_same(single, expected, documents)
    assert count_words(path, progress=False, threads=2, block_bytes=1 << 16) == single


@needs_data
def test_every_input_type_gives_the_same_counts(tmp_path):
    lines = (DATA / "scicite" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:3000]
    expected = dict(reference.count_words(lines))
    text = "\n".join(lines) + "\n"
    (tmp_path / "plain.txt").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "packed.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write(text)
    split = len(lines) // 3
    shards = tmp_path / "shards"
    (shards / "deep").mkdir(parents=True)
    (shards / "a.txt").write_text("\n".join(lines[:split]) + "\n", encoding="utf-8")
    with gzip.open(shards / "deep" / "b.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines[split:]) + "\n")
    (shards / "ignored.csv").write_text("not,read\n")
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "abstract": line}) + "\n" for i, line in enumerate(lines)), encoding="utf-8")
    with gzip.open(tmp_path / "records.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("".join(json.dumps({"text": line}) + "\n\n" for line in lines))
    (tmp_path / "to_json.json").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines), encoding="utf-8")

    sources = {
        "plain": (tmp_path / "plain.txt", {}),
        "gzip": (tmp_path / "packed.txt.gz", {}),
        "directory": (shards, {}),
        "glob": (str(shards / "**" / "*.txt*"), {}),
        "paths": ([shards / "a.txt", shards / "deep" / "b.txt.gz"], {}),
        "jsonl with a text field": (jsonl, {"text_field": "abstract"}),
        "jsonl.gz, default field, blank lines": (tmp_path / "records.jsonl.gz", {}),
        "json lines named .json (datasets' to_json)": (tmp_path / "to_json.json", {}),
        "strings": (lines, {}),
        "generator": (None, {}),
        "dataset": (FakeDataset(lines), {}),
    }
    for name, (source, options) in sources.items():
        for threads in (1, 2):
            if name == "generator":
                source = (line for line in lines)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                counts = count_words(source, progress=False, threads=threads, **options)
            skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
            if name == "directory":
                assert len(skipped) == 1 and "(ignored.csv)" in skipped[0], skipped
            else:
                assert not skipped, (name, skipped)
            assert dict(counts.counts) == expected, name
            assert counts.documents == len(lines), name
    mixed = count_words([shards / "a.txt", "One more line."], progress=False)
    assert dict(mixed.counts) == dict(reference.count_words(lines[:split] + ["One more line."]))
    assert mixed.documents == split + 1


class FakeDataset:
    """What count_words uses of a HuggingFace ``datasets.Dataset``: ``column_names`` and
    ``iter(batch_size=...)`` yielding dicts of columns."""

    def __init__(self, texts, column="text"):
        self.texts = list(texts)
        self.column = column
        self.column_names = [column, "label"]

    def __len__(self):
        return len(self.texts)

    def iter(self, batch_size):
        for start in range(0, len(self.texts), batch_size):
            batch = self.texts[start: start + batch_size]
            yield {self.column: batch, "label": [0] * len(batch)}


def test_a_datasets_batch_is_joined_a_few_mib_at_a_time(monkeypatch):
    """A batch of 1,000 rows was joined and encoded whole: for rows of books, two more copies of
    gigabytes. The counts are those of the texts, whatever the pieces."""
    rng = random.Random()
    words = ["enzyme", "Receptor", "ΣΊΣΥΦΟΣ", "the", "x\u0301y", "binds."]
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 40))) for _ in range(rng.randint(1200, 2500))]
    joined = []
    submit = counting._Counter._submit

    def recording(self, tables, buf, start, end, prev):
        joined.append(end - start)
        return submit(self, tables, buf, start, end, prev)

    monkeypatch.setattr(counting, "STRING_BATCH_CHARS", 500)
    monkeypatch.setattr(counting._Counter, "_submit", recording)
    counts = count_words(FakeDataset(texts), progress=False)
    assert dict(counts.counts) == dict(reference.count_words(texts)) and counts.documents == len(texts)
    longest = max(len(text.encode()) for text in texts)
    assert len(joined) > len(texts) // 1000 + 1 and max(joined) < 500 * 2 + 2 * longest


def test_real_datasets_dataset_if_installed():
    datasets = pytest.importorskip("datasets")
    texts = ["Enzyme binds the receptor.", "", "ΣΊΣΥΦΟΣ receptor"]
    dataset = datasets.Dataset.from_dict({"body": texts, "label": [1, 2, 3]})
    counts = count_words(dataset, progress=False, text_field="body")
    assert dict(counts.counts) == dict(reference.count_words(texts)) and counts.documents == 3


def test_the_bar_of_a_dataset_knows_its_length(monkeypatch):
    datasets = pytest.importorskip("datasets")
    bars = []

    class Bar(counting.tqdm):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            bars.append(self)

    monkeypatch.setattr(counting, "tqdm", Bar)
    rows = random.randint(1, 30)
    count_words(datasets.Dataset.from_dict({"text": ["the enzyme"] * rows}), progress=True)
    assert bars[-1].total == bars[-1].n == rows
    streamed = datasets.Dataset.from_dict({"text": ["the enzyme"] * rows}).to_iterable_dataset()
    count_words(streamed, progress=True)
    assert bars[-1].total is None and bars[-1].n == rows
    count_words(["the enzyme"] * rows, progress=True)  # a list of texts: its length too
    assert bars[-1].total == bars[-1].n == rows


def test_the_bar_of_other_sized_texts_asks_their_length_only_to_be_shown(monkeypatch):
    """A sized source of texts that is no list (pretrain's documents, read from their files at
    each pass) gives the bar its end; its length is not asked when no bar is shown (counting
    them may cost a pass over the files)."""
    bars = []

    class Bar(counting.tqdm):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            bars.append(self)

    class Documents:
        def __init__(self, texts):
            self.texts, self.asked = texts, 0

        def __iter__(self):
            return iter(self.texts)

        def __len__(self):
            self.asked += 1
            return len(self.texts)

    monkeypatch.setattr(counting, "tqdm", Bar)
    rows = random.randint(1, 30)
    documents = Documents(["the enzyme"] * rows)
    assert count_words(documents, progress=False).documents == rows and documents.asked == 0
    count_words(documents, progress=True)
    assert bars[-1].total == bars[-1].n == rows


def test_a_pandas_data_frame_is_read_by_its_text_column(rng):
    pandas = pytest.importorskip("pandas")
    from diffmask_fast.corpus import iter_documents

    texts = [" ".join(rng.choice(["Enzyme", "binds", "ΣΊΣΥΦΟΣ", "the"]) for _ in range(rng.randrange(6)))
             for _ in range(2500)]  # more rows than one batch
    frame = pandas.DataFrame({"body": texts, "label": range(len(texts))})
    counts = count_words(frame, progress=False, text_field="body")
    assert dict(counts.counts) == dict(reference.count_words(texts)) and counts.documents == len(texts)
    assert list(iter_documents(frame, "body")) == texts
    assert list(iter_documents(frame["body"])) == texts  # a column alone is an iterable of strings
    with pytest.raises(CorpusError, match="no column 'text' .*columns: body, label"):
        count_words(frame, progress=False)
    # A column "name" is an attribute of the frame as a Series' name is of a Series: still a frame,
    # not an iterable of its two column labels.
    named = pandas.DataFrame({"name": [f"doc{i}" for i in range(len(texts))], "text": texts})
    counts = count_words(named, progress=False)
    assert dict(counts.counts) == dict(reference.count_words(texts)) and counts.documents == len(texts)
    assert list(iter_documents(named)) == texts


def test_dataset_errors():
    with pytest.raises(CorpusError, match="mapping was given.*train"):
        count_words({"train": FakeDataset(["a"]), "test": FakeDataset(["b"])}, progress=False)
    for raw in (b"enzyme binds", bytearray(b"enzyme")):  # iterated, bytes are numbers
        with pytest.raises(CorpusError, match=f"the corpus is {type(raw).__name__}; decode it to a string"):
            count_words(raw, progress=False)
    with pytest.raises(CorpusError, match="no column 'text'"):
        count_words(FakeDataset(["a"], column="body"), progress=False)
    with pytest.raises(CorpusError, match="row 1.*NoneType"):
        count_words(FakeDataset(["a", None]), progress=False)


def test_a_list_of_file_names_is_refused_not_counted_as_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("train.txt", "extra.txt"):
        (tmp_path / name).write_text("the enzyme binds\n")
    names = glob.glob("*.txt")  # strings, as glob gives them
    for source in (names, tuple(names), [str(tmp_path / "train.txt")]):
        with pytest.raises(CorpusError, match="strings that name files.*pathlib.Path"):
            count_words(source, progress=False)
        with pytest.raises(CorpusError, match="strings that name files"):
            list(iter_documents(source))
    assert count_words([Path(name) for name in names], progress=False).total == 6
    # Documents that happen to include a file name among other text are documents.
    assert count_words(["train.txt", "the enzyme binds"], progress=False).total == 4
    assert list(iter_documents(["train.txt", "a document"])) == ["train.txt", "a document"]


def test_threads_and_blocks_cut_words_anywhere(tmp_path, rng, tiny_chunks):
    """Blocks of a few bytes split words, multi-byte whitespace and \\r\\n pairs between blocks."""
    data = b"".join(random_bytes(rng, 50) + b"\n" for _ in range(40))
    path = tmp_path / "text.txt"
    path.write_bytes(data)
    expected, documents = expected_for_file(path)
    results = [count_words(path, progress=False, threads=threads, block_bytes=block)
               for threads in (1, 2, 4) for block in (1, 3, 16, 1 << 20)]
    assert all(result == results[0] for result in results)
    assert_same(results[0], expected, documents)


def test_ranges_cut_anywhere_add_up(tmp_path, rng):
    """Byte ranges counted apart (as Dask tasks are) add up to the whole file, wherever cut."""
    data = b"".join(random_bytes(rng, 30) + rng.choice([b"\n", b"\r\n", b"\r", b""]) for _ in range(60))
    path = tmp_path / "ranges.txt"
    path.write_bytes(data)
    whole = count_words(path, progress=False, threads=1)
    for partition_bytes in (1, 2, 3, 7, 50, len(data)):
        parts = plan_partitions([path], None, partition_bytes)
        merged = merge_partials(*[count_partition(part) for part in parts])
        assert merged.table == whole.table and merged.documents == whole.documents, partition_bytes
        assert merged.bytes == len(data)


def test_ranges_cut_at_a_files_end_or_across_a_reading_window_add_up(tmp_path):
    """A last line without a line end, a range left empty at the end, and a space of three bytes
    across the end of the window that finds where a range starts."""
    from diffmask_fast.dask_counting import _WINDOW

    path = tmp_path / "edges.txt"
    for data in (b"abc def", b"word ", b"a\nb", b"x\n", b"a b\nc d", b"\n\nz"):
        path.write_bytes(data)
        whole = count_words(path, progress=False, threads=1)
        for partition_bytes in range(1, len(data) + 1):
            merged = merge_partials(*[count_partition(part) for part in plan_partitions([path], None, partition_bytes)])
            assert (merged.table, merged.documents) == (whole.table, whole.documents), (data, partition_bytes)
    space = "\u3000".encode()
    for before in (1, 2):  # bytes of the space inside the first window
        data = b"x" * (_WINDOW - before) + space + b"y" * 100 + b" tail\n"
        path.write_bytes(data)
        assert range_start(path, 3, len(data), False) == data.index(space) + len(space)
    assert len(plan_partitions([path], None, len(data) - 1)) == 2, "a remainder is a range of its own"


def test_the_shared_argument_checks_at_their_edges():
    from diffmask_fast._checks import (check_lowercase, first_blank_or_padded, first_unnormalized,
                                       refuse_one_string, whole_number)

    check_lowercase(np.True_)  # numpy's booleans are booleans
    with pytest.raises(TypeError, match="not one string"):
        refuse_one_string(b"abc", "texts", "a list of texts")  # bytes too would be read one by one
    assert first_unnormalized(["kinase", "receptor,"], True) == ("receptor,", "receptor")
    assert first_unnormalized(["cafe\u0301s"], True) == ("cafe\u0301s", "caf\u00e9s")
    assert first_unnormalized(["kinase", "caf\u00e9s"], True) is None
    assert first_blank_or_padded(["protein\n", "kinase"]) == "protein\n"
    assert first_blank_or_padded(["kinase", " protein", "cell"]) == " protein"
    assert first_blank_or_padded(["ligand\u00a0with", "cell"]) is None
    assert whole_number(5, "x", most=5) == 5
    with pytest.raises(ValueError, match="at most 5"):
        whole_number(6, "x", most=5)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_a_directory_says_which_files_it_skipped(tmp_path, recwarn):
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "corpus.txt").write_text("enzyme binds\n")
    (folder / ".hidden.txt.swp").write_text("x")
    assert count_words(folder, progress=False).total == 2
    assert not recwarn.list, "hidden files pass silently"
    (folder / "train.jsonl").write_text('{"text": "kinase"}\n')
    with pytest.warns(UserWarning, match=r"skipped 1 other file\(s\) \(train.jsonl\); JSON lines .*--text-field"):
        assert count_words(folder, progress=False).total == 2
    with pytest.warns(UserWarning, match=r"skipped 1 other file\(s\) \(corpus.txt\)$"):  # with a text field
        assert count_words(folder, progress=False, text_field="text").total == 1
    # Saved anchors (one JSON document) beside the corpus: skipped by a directory scan in either mode,
    # with no hint about JSON lines, although a .json file named directly is read as JSON lines.
    (folder / "anchors.json").write_text('{\n  "anchors": []\n}\n')
    with pytest.warns(UserWarning, match=r"skipped 2 other file\(s\) \(anchors.json, corpus.txt\)$"):
        assert count_words(folder, progress=False, text_field="text").total == 1
    (folder / "train.jsonl").unlink()
    with pytest.warns(UserWarning, match=r"skipped 1 other file\(s\) \(anchors.json\)$"):
        assert count_words(folder, progress=False).total == 2
    with pytest.raises(CorpusError, match="anchors.json' line 1: not valid JSON .*one JSON document"):
        count_words(folder / "anchors.json", progress=False)
    only_json_lines = tmp_path / "json-lines"
    only_json_lines.mkdir()
    (only_json_lines / "train.jsonl").write_text('{"text": "kinase"}\n')
    with pytest.raises(CorpusError, match=r"holds no text files \(looked for .*\); JSON lines are read from a "
                                          r"directory with a text field \(--text-field\)"):
        count_words(only_json_lines, progress=False)
    assert count_words(only_json_lines, progress=False, text_field="text").total == 1
    only_json = tmp_path / "json"  # as datasets' to_json names its JSON lines
    only_json.mkdir()
    (only_json / "train.json").write_text('{"text": "kinase binds"}\n')
    for field in (None, "text"):
        with pytest.raises(CorpusError, match=r"holds no .* \.json files are not read from a directory .*: "
                                              r"name them by a glob \(folder/\*\.json\) or rename them \.jsonl"):
            count_words(only_json, progress=False, text_field=field)
    assert count_words(str(only_json / "*.json"), progress=False, text_field="text").total == 2


def test_files_compressed_by_other_tools_than_gzip_are_named_as_such(tmp_path):
    import bz2
    import lzma
    import zipfile

    text = b"kinase inhibitors bind the receptor\n" * 50
    (tmp_path / "a.txt.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "a.txt.xz").write_bytes(lzma.compress(text))
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("a.txt", text)
    for name, tool in (("a.txt.bz2", "bzip2"), ("a.txt.xz", "xz"), ("a.zip", "zip")):
        with pytest.raises(CorpusError, match=f"is compressed with {tool}, which is not read"):
            count_words(tmp_path / name, progress=False)
    (tmp_path / "empty.bz2").write_bytes(bz2.compress(b""))  # no block: the stream's end follows the header
    with pytest.raises(CorpusError, match="is compressed with bzip2"):
        count_words(tmp_path / "empty.bz2", progress=False)
    (tmp_path / "plain.txt").write_bytes(b"BZh\nBZhx words\n")  # text that opens like bzip2's mark
    assert count_words(tmp_path / "plain.txt", progress=False, lowercase=False).counts["BZh"] == 1
    (tmp_path / "plain.txt").write_bytes(b"BZh9 is a bzip2 header\n")  # and with a block size after it
    assert count_words(tmp_path / "plain.txt", progress=False, lowercase=False).counts["BZh9"] == 1


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        count_words(tmp_path / "missing.txt", progress=False)
    for nothing, shown in ((None, r"None \(NoneType\)"), (5, r"5 \(int\)")):  # not "object is not iterable"
        with pytest.raises(CorpusError, match=f"the corpus is {shown}; pass the path of a file"):
            count_words(nothing, progress=False)
        with pytest.raises(CorpusError, match=f"the corpus is {shown}"):
            list(iter_documents(nothing))

    class ByIndex:  # iterable by __getitem__ alone, as a map-style torch Dataset
        def __getitem__(self, index):
            return ["the kinase binds", "the receptor"][index]

    assert list(iter_documents(ByIndex())) == ["the kinase binds", "the receptor"]
    assert count_words(ByIndex(), progress=False).counts["the"] == 2
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="no text files"):
        count_words(tmp_path / "empty_dir", progress=False)
    (tmp_path / "binary.txt").write_bytes(b"\x7fELF\x02\x01" + b"\x00" * 64 + b"text")
    with pytest.raises(CorpusError, match="binary"):
        count_words(tmp_path / "binary.txt", progress=False)
    with gzip.open(tmp_path / "binary.txt.gz", "wb") as handle:
        handle.write(b"\x7fELF\x02\x01\x00\x00")
    with pytest.raises(CorpusError, match="binary"):
        count_words(tmp_path / "binary.txt.gz", progress=False)
    (tmp_path / "broken.txt.gz").write_bytes(gzip.compress(b"some text\n" * 100)[:-30])
    with pytest.raises(CorpusError, match="cannot be read"):
        count_words(tmp_path / "broken.txt.gz", progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="empty"):
        count_words(tmp_path / "empty.txt", progress=False)
    with pytest.raises(CorpusError, match="empty"):
        count_words([], progress=False)
    (tmp_path / "blank.txt").write_text("\n  \n\t\r\n\u3000\n")
    with pytest.raises(CorpusError, match="no words"):
        count_words(tmp_path / "blank.txt", progress=False)
    with pytest.raises(CorpusError, match="strings"):
        count_words(["text", b"bytes"], progress=False)
    with pytest.raises(ValueError, match="threads"):
        count_words(["text"], progress=False, threads=0)


def test_threads_beyond_the_work_cost_no_tables(tmp_path, monkeypatch):
    """Each counting thread's table took memory up front: --threads 100000 on a tiny file was
    killed for memory. Tables are made when a chunk is counted, and reused."""
    made = []
    new_table = _wordtable.new_table
    monkeypatch.setattr(_wordtable, "new_table", lambda *size: made.append(size) or new_table(*size))
    texts = ["kinase binds the receptor"] * 50
    (tmp_path / "small.txt").write_text("\n".join(texts) + "\n")
    assert count_words(texts, progress=False, threads=5000) == count_words(texts, progress=False, threads=1)
    assert count_words(tmp_path / "small.txt", progress=False, threads=5000)["kinase"] == 50
    assert len(made) <= 12, f"{len(made)} tables made for one small input per call"


def test_invalid_utf8_is_replaced_not_an_error(tmp_path):
    """Documented behaviour: invalid bytes decode to U+FFFD, as the reader of iter_documents does."""
    (tmp_path / "latin1.txt").write_bytes("café naïve señor\n".encode("latin-1"))
    counts = count_words(tmp_path / "latin1.txt", progress=False)
    assert dict(counts.counts) == {"caf\ufffd": 1, "na\ufffdve": 1, "se\ufffdor": 1}


@pytest.mark.parametrize("content, message", [
    (b'{"text": "fine"}\n{"text": "unterminated\n', r"bad\.jsonl?' line 2: not valid JSON"),
    (b'{"text": "fine"}\n\n{"body": "x"}\n', r"line 3: no field 'text' \(fields: 'body'\)"),
    (b'{"text": 12}\n', r"line 1: field 'text' holds int, not a string"),
    (b'["text"]\n', r"line 1: expected a JSON object, got list"),
    (b'[\n  {"text": "one"},\n  {"text": "two"}\n]\n', r"line 1: not valid JSON .*one JSON document.*one JSON object per line"),
    (b'[{"text": "one"}, {"text": "two"}]\n', r"line 1: expected a JSON object, got list; .*one JSON document"),
    (b'{\n  "text": "one"\n}\n', r"line 1: not valid JSON .*one JSON document"),
    (b'{"data": [\n  {"text": "one"}\n]}\n', r"line 1: not valid JSON .*one JSON document"),
    (b'{"text": "a broken record\n', r"line 1: not valid JSON \([^;]*$"),  # a broken record: no hint
])
@pytest.mark.parametrize("name", ["bad.jsonl", "bad.json"])
def test_bad_json_lines_name_the_file_and_line(tmp_path, content, message, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        count_words(path, progress=False)
    with pytest.raises(CorpusError, match=message):
        list(iter_documents(path))


def test_a_plain_text_file_read_with_a_text_field_says_why_it_was_read_as_json(tmp_path):
    """With a text field every file is read as JSON lines: a .txt corpus beside .jsonl ones was
    "not valid JSON" with no word of why."""
    (tmp_path / "train.txt").write_text("the enzyme binds the receptor\n", encoding="utf-8")
    said = (r"train.txt' line 1: not valid JSON \(Expecting value\); with a text field \(text_field / --text-field\) "
            r"every file is read as JSON lines, this plain-text one too")
    with pytest.raises(CorpusError, match=said):
        count_words(tmp_path / "train.txt", text_field="abstract", progress=False)
    with pytest.raises(CorpusError, match=said):
        list(iter_documents(tmp_path / "train.txt", "abstract"))


@pytest.mark.parametrize("name", ["text.txt", "records.jsonl"])
def test_every_distributed_range_checks_its_file_for_binary_data_and_existence(tmp_path, name):
    path = tmp_path / name
    record = b'{"text": "word"}\n' if name.endswith(".jsonl") else b"word "
    data = bytearray(record * 400)
    data[len(record) * 50] = 0  # a NUL in the file's head, inside the second of many ranges
    path.write_bytes(bytes(data))
    parts = plan_partitions([path], None, 100)
    assert len(parts) > 10 and parts[1].start < len(record) * 50
    for part in parts[1:]:  # each range alone, as a worker counts it
        with pytest.raises(CorpusError, match="looks like a binary file"):
            count_partition(part)
    path.unlink()  # gone after planning: the local path's error, not a bare FileNotFoundError
    with pytest.raises(CorpusError, match="does not exist"):
        count_partition(parts[3])


def test_distributed_ranges_name_files_by_absolute_paths(tmp_path, monkeypatch):
    """A worker may run in another directory: a relative path would name another file there."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("enzyme binds\n" * 50)
    monkeypatch.chdir(tmp_path)
    parts = plan_partitions([Path("c/a.txt")], None, 100)
    assert len(parts) > 1 and {part.path for part in parts} == {str(tmp_path / "c" / "a.txt")}
    monkeypatch.chdir(tmp_path / "c")
    assert sum(count_partition(part).documents for part in parts) == 50


def test_a_file_that_changed_after_planning_is_refused_not_counted_forever(tmp_path):
    """A range planned past the end of a file that has since shrunk searched for its start forever."""
    path = tmp_path / "growing.txt"
    path.write_bytes(b"alpha " * 6000 + b"x" * 20000)
    parts = plan_partitions([path], None, 10000)
    path.write_bytes(b"alpha " * 6000 + b"x" * (parts[-1].start - 36000 + 5))
    with pytest.raises(CorpusError, match="changed while it was being counted"):
        count_partition(parts[-1])
    path.write_bytes(b"x" * 28)
    assert range_start(path, 20, 1000, False) == 1000, "a search past the end of a short file ends"


def test_a_json_record_spanning_many_blocks(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": "word " * 20_000}) + "\n" + json.dumps({"text": "end"}) + "\n")
    counts = count_words(path, progress=False, block_bytes=64)
    assert counts["word"] == 20_000 and counts["end"] == 1 and counts.documents == 2


def test_bad_json_line_is_named_by_its_line_in_a_distributed_range(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"text": "a b"}\n' * 100 + b"not json\n" + b'{"text": "c"}\n' * 10)
    parts = plan_partitions([path], None, 300)
    assert len(parts) > 3
    with pytest.raises(CorpusError, match="line 101: not valid JSON"):
        for part in parts:
            count_partition(part)


# ----------------------------------------------------------------------------------------------
# WordCounts and the binary format
# ----------------------------------------------------------------------------------------------


@needs_data
def test_binary_counts_round_trip_lazily(tmp_path):
    counts = count_words(DATA / "chemprot" / "abstracts.txt", progress=False)
    counts.save(tmp_path / "counts.bin")
    assert (tmp_path / "counts.bin").read_bytes()[:8] == b"DMWCOUNT"
    loaded = WordCounts.load(tmp_path / "counts.bin")
    base = loaded.table.blob.base
    assert isinstance(getattr(base, "obj", base), mmap.mmap)  # mapped, not read
    assert loaded.total == counts.total and len(loaded) == len(counts) and loaded.documents == counts.documents
    assert loaded["receptor"] == counts["receptor"] > 0 and "receptor" in loaded
    assert loaded["no-such-word-here"] == 0 and "no-such-word-here" not in loaded and 12 not in loaded
    assert loaded.most_common(10) == counts.most_common(10)
    assert loaded._dict is None  # nothing above built a dict of every word
    assert loaded == counts and dict(loaded.counts) == dict(counts.counts)
    assert WordCounts.load(tmp_path / "counts.bin", verify=True) == counts
    general = GeneralFrequencies.default()
    assert mine_anchors(loaded, general) == mine_anchors(counts, general) == mine_anchors(tmp_path / "counts.bin", general)
    counts.save(tmp_path / "counts.json")
    assert json.loads((tmp_path / "counts.json").read_text())["counts"]["receptor"] == counts["receptor"]
    assert WordCounts.load(tmp_path / "counts.json") == counts
    counts.save(tmp_path / "counts.JSON")  # the suffix in any case chooses JSON
    assert json.loads((tmp_path / "counts.JSON").read_text())["counts"]["receptor"] == counts["receptor"]


def test_json_counts_saved_by_an_editor_with_a_byte_order_mark_load(tmp_path):
    counts = WordCounts.from_mapping({"enzyme": 3, "kinase": 2}, documents=2)
    counts.save(tmp_path / "counts.json")
    edited = tmp_path / "edited.json"
    edited.write_bytes(codecs.BOM_UTF8 + (tmp_path / "counts.json").read_bytes())
    assert WordCounts.load(edited) == counts


def test_damaged_word_bytes_read_without_verify_name_the_file(tmp_path):
    """They failed with a bare UnicodeDecodeError at the first read of the words."""
    path = tmp_path / "counts.dmwc"
    WordCounts.from_mapping({"alpha": 5, "beta": 3, "gamma": 1}, documents=2).save(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a byte of "gamma": no UTF-8 any more
    path.write_bytes(bytes(data))
    counts = WordCounts.load(path)
    message = re.escape(f"{str(path)!r} is corrupt: word 2 is not UTF-8 (WordCounts.load(path, verify=True)")
    for read in (lambda: dict(counts.counts), lambda: counts.most_common(3), lambda: list(counts)):
        with pytest.raises(ValueError, match=message):
            read()
    assert counts.most_common(1) == [("alpha", 5)]  # the words before it still read


def test_binary_counts_corruption_is_detected(tmp_path):
    counts = WordCounts.from_mapping({"enzyme": 3, "é": 2, "\ud800x": 1, "z" * 40: 7}, documents=4)
    path = tmp_path / "counts.dmwc"
    counts.save(path)
    assert WordCounts.load(path) == counts and WordCounts.load(path)["\ud800x"] == 1
    data = path.read_bytes()
    for cut in (0, 5, 30, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated|not a word-counts file"):
            WordCounts.load(path)
    flipped = bytearray(data)
    flipped[-3] ^= 0x20
    path.write_bytes(bytes(flipped))
    WordCounts.load(path)  # a flipped word byte is only found by verify
    with pytest.raises(ValueError, match="checksum"):
        WordCounts.load(path, verify=True)
    with pytest.raises(ValueError, match="checksum"):  # mining reads every count: it verifies a path it loads
        mine_anchors(path, k=1, min_count=1)
    header_start = data.index(b'"documents": 4')
    for edit in (b'"documents": 5', b'"documents":14'):  # a digit changed, or one written over a space
        edited = data[:header_start] + edit + data[header_start + len(edit):]
        path.write_bytes(edited)
        for verify in (False, True):  # the header is read whole either way: its checksum always checked
            with pytest.raises(ValueError, match="header's checksum does not match"):
                WordCounts.load(path, verify=verify)
    own_checksum = re.search(rb', "header_crc32": \d+}', data).group()
    path.write_bytes(data.replace(own_checksum, b"}".ljust(len(own_checksum))))
    assert WordCounts.load(path, verify=True) == counts  # as files of earlier versions were written
    path.write_bytes(data[:8] + b"\x07" + data[9:])
    with pytest.raises(ValueError, match="version 7"):
        WordCounts.load(path)
    path.write_bytes(b"PK\x03\x04 something else")
    with pytest.raises(ValueError, match="not a word-counts file"):
        WordCounts.load(path)
    with pytest.raises(FileNotFoundError):
        WordCounts.load(tmp_path / "missing.bin")
    empty = WordCounts()
    empty.save(tmp_path / "empty.bin")
    assert WordCounts.load(tmp_path / "empty.bin", verify=True) == empty and len(empty) == 0


@pytest.mark.parametrize("words", [[b"zyme", b"enzyme"], [b"enzyme", b"enzyme"], [b"ab", b"a"]])
def test_verify_refuses_binary_counts_whose_words_are_out_of_order(tmp_path, words):
    """A table written out of order (by another writer) carries a valid checksum: words are
    looked up by bisection, so "enzyme" was counted and yet not found."""
    from diffmask_fast.counting import CountTable

    table = CountTable.__new__(CountTable)
    table.blob = np.frombuffer(b"".join(words), np.uint8).copy()
    table.offsets = np.cumsum([0] + [len(word) for word in words]).astype(np.int64)
    table.counts, table.source = np.array([2, 3], dtype=np.int64), None
    path = tmp_path / "counts.bin"
    WordCounts(table, 2, True, total=5).save(path)
    with pytest.raises(ValueError, match="is corrupt: word 1 does not sort after word 0"):
        WordCounts.load(path, verify=True)


def test_word_counts_api(rng):
    words = [f"w{rng.randrange(50)}" for _ in range(2000)]
    reference_counts = Counter(words)
    counts = WordCounts.from_mapping(reference_counts, documents=7)
    ranked = sorted(reference_counts.items(), key=lambda item: (-item[1], item[0]))
    assert counts.most_common() == ranked
    assert all(counts.most_common(k) == ranked[:k] for k in (0, 1, 5, 49, 50, 80))
    assert counts.at_least(40) == sorted((w, c) for w, c in reference_counts.items() if c >= 40)
    merged = counts.merge(WordCounts.from_mapping({"w1": 1, "new": 2}, documents=1))
    assert merged["w1"] == reference_counts["w1"] + 1 and merged["new"] == 2 and merged.documents == 8
    with pytest.raises(ValueError, match="lowercasing"):
        counts.merge(WordCounts(lowercase=False))
    with pytest.raises(TypeError):
        counts.counts["w1"] = 3  # a read-only view
    table = CountTable.from_mapping({"b": 1, "a": 2, "zero": 0})
    assert table.words() == ["a", "b"] and table.find("zero") == -1
    with pytest.raises(ValueError, match="non-negative"):
        CountTable.from_mapping({"a": -1})


def test_word_counts_options_are_checked_by_name():
    counts = WordCounts.from_mapping({"kinase": 3, "enzyme": 1}, documents=1)
    assert counts.most_common(np.int64(1)) == [("kinase", 3)] and counts.at_least(np.int64(2)) == [("kinase", 3)]
    for call, name in ((counts.most_common, "n"), (counts.at_least, "min_count")):
        for bad, error, said in ((1.0, TypeError, "a whole number, got 1.0"), ("1", TypeError, "a whole number"),
                                 (True, TypeError, "a whole number"), (-1, ValueError, "at least 0, got -1")):
            with pytest.raises(error, match=f"{name} must be {said}"):
                call(bad)


def test_a_text_field_is_used_as_given_and_must_be_a_name(tmp_path):
    """text_field="" named the "text" field ("" or "text"), while "" was taken as a given field
    elsewhere; a number failed line by line."""
    path = tmp_path / "docs.jsonl"
    path.write_text('{"": "from the empty-named field", "text": "from the text field"}\n', encoding="utf-8")
    assert set(count_words([path], text_field="", progress=False).counts) == {"from", "the", "empty-named", "field"}
    assert set(count_words([path], progress=False).counts) == {"from", "the", "text", "field"}
    with pytest.raises(TypeError, match="text_field must be the name of a field .*, got int 5"):
        count_words([path], text_field=5, progress=False)


def test_a_data_frame_may_hold_columns_of_one_name_beside_its_text():
    pandas = pytest.importorskip("pandas")
    frame = pandas.concat([pandas.DataFrame({"text": ["the enzyme binds", "a kinase"], "label": [0, 1]}),
                           pandas.DataFrame({"label": ["x", "y"]})], axis=1)
    assert dict(count_words(frame, progress=False).counts) == dict(reference.count_words(["the enzyme binds",
                                                                                           "a kinase"]))
    with pytest.raises(CorpusError, match="the data frame has 2 columns named 'label'; the text must be one column"):
        count_words(frame, text_field="label", progress=False)


def test_a_corpus_path_in_a_folder_that_may_not_be_searched_is_named_so(tmp_path, monkeypatch):
    """The path was said to be "read as a path: give texts as a list of strings", advice meant for
    text passed where a path goes."""
    locked = tmp_path / "locked" / "c.txt"
    real_is_dir = Path.is_dir

    def is_dir(path):
        if path == locked:
            raise PermissionError(13, "Permission denied")
        return real_is_dir(path)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    with pytest.raises(CorpusError, match=rf"^cannot read corpus path '{re.escape(str(locked))}': Permission denied$"):
        count_words(str(locked), progress=False)


def test_uncased_counting_and_anchors_are_deterministic():
    texts = ["Enzyme enzyme ENZYME Receptor receptor", "Kinase, kinase. KINASE!"] * 20
    assert dict(count_words(texts, lowercase=False, progress=False).counts) == dict(reference.count_words(texts, lowercase=False))
    general = GeneralFrequencies.default()
    anchors = [mine_anchors(count_words(texts, progress=False, threads=t), general, k=3) for t in (1, 2)]
    assert anchors[0] == anchors[1]


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def anchor_table(output: str) -> str:
    """The anchors table of `diffmask mine` output: from its header line to the next blank line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("rank"))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


@needs_data
def test_mine_command_saves_binary_counts_and_mines_from_them(tmp_path, capsys):
    corpus = DATA / "acl_arc" / "corpus.txt"
    assert main(["mine", str(corpus), "-k", "5", "--threads", "2", "--counts-output", str(tmp_path / "c.counts"),
                 "-o", str(tmp_path / "a.json")]) == 0
    first = capsys.readouterr()
    assert "counting words" in first.err  # the progress bar
    assert (tmp_path / "c.counts").read_bytes()[:8] == b"DMWCOUNT"
    assert WordCounts.load(tmp_path / "c.counts") == count_words(corpus, progress=False)
    assert main(["mine", "--counts", str(tmp_path / "c.counts"), "-k", "5", "--no-progress"]) == 0
    second = capsys.readouterr()
    assert anchor_table(second.out) == anchor_table(first.out) and "lexical" in anchor_table(first.out)
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"body": line}) + "\n" for line in corpus.read_text().splitlines()))
    assert main(["mine", str(records), "--text-field", "body", "-k", "5", "--no-progress"]) == 0
    assert anchor_table(capsys.readouterr().out) == anchor_table(first.out)
    assert main(["mine", "--no-progress"]) == 1
    assert "give a corpus" in capsys.readouterr().err
    assert main(["mine", str(records), "--no-progress"]) == 1
    assert "no field 'text'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Dask
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=50)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@needs_data
def test_dask_counts_equal_single_process_counts(dask_client, tmp_path):
    for corpus in CORPORA:
        single = count_words(DATA / corpus, progress=False)
        distributed = count_words(DATA / corpus, progress=False, scheduler=dask_client, partition_bytes=200_000)
        assert distributed == single, corpus
    # A multi-file gzip corpus (one task per file), with plain files cut into ranges beside it.
    lines = (DATA / "scicite" / "corpus.txt").read_bytes().splitlines(keepends=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(6):
        with gzip.open(shards / f"part{k}.txt.gz", "wb") as handle:
            handle.writelines(lines[k::7])
    (shards / "plain.txt").write_bytes(b"".join(lines[6::7]).replace(b"\n", b"\r\n"))
    single = count_words(shards, progress=False)
    assert count_words(shards, progress=False, scheduler=dask_client, partition_bytes=50_000) == single
    assert single == count_words(DATA / "scicite" / "corpus.txt", progress=False)
    jsonl = DATA / "scicite" / "train.jsonl"
    assert (count_words(jsonl, progress=False, scheduler=dask_client, partition_bytes=100_000)
            == count_words(jsonl, progress=False))
    with pytest.raises(CorpusError, match="reads files"):
        count_words(["some text"], progress=False, scheduler=dask_client)
    with pytest.raises(CorpusError, match="does not exist"):
        count_words(tmp_path / "missing.txt", progress=False, scheduler=dask_client)


def test_dask_progress_follows_the_counting_and_the_merges(dask_client, tmp_path, capsys):
    from diffmask_fast.dask_counting import count_words_distributed

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the enzyme binds the receptor\n" * 2000)
    size = corpus.stat().st_size
    counts = count_words_distributed(corpus, dask_client, progress=True, partition_bytes=size // 9, split_every=2)
    assert counts == count_words(corpus, progress=False)
    bars = capsys.readouterr().err
    assert "counting words (dask): 100%" in bars and "60.0k/60.0k" in bars, bars[-400:]
    # The partial tables merged pairwise, level by level, the last merge included.
    tables, merges = len(plan_partitions([corpus], None, size // 9)), 0
    assert tables >= 9
    while tables > 1:
        tables = (tables + 1) // 2
        merges += tables
    merged = re.findall(r"merging counts \(dask\).*?(\d+)/(\d+)", bars)
    assert merged and merged[-1] == (str(merges), str(merges)), bars[-400:]
    single = tmp_path / "single.txt"
    single.write_text("one partition\n")
    count_words_distributed(single, dask_client, progress=True)
    assert "merging counts" not in capsys.readouterr().err  # nothing to merge: no bar


def test_mine_counts_on_the_scheduler_it_is_given(dask_client, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("enzyme binds the receptor\n" * 50 + "kinase inhibitors block it\n" * 30)
    counts = tmp_path / "counts.bin"
    transitions = dask_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
    assert main(["mine", str(corpus), "--scheduler", dask_client.scheduler.address, "--min-count", "1", "-k", "2",
                 "--counts-output", str(counts), "--no-progress"]) == 0
    assert dask_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter) > transitions
    assert WordCounts.load(counts) == count_words(corpus, progress=False)


def test_a_failed_dask_count_leaves_no_task_on_the_cluster(dask_client, tmp_path):
    """A task's error was raised with the other tasks still counting and merging on the user's
    cluster, held there for as long as the traceback kept the counting's frame (a notebook keeps
    the last one): they are cancelled."""
    import time

    from diffmask_fast.dask_counting import count_words_distributed

    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(8):
        (shards / f"part{k}.txt").write_text("the enzyme binds the receptor\n" * 500)
    whole = gzip.compress(b"kinase inhibitors\n" * 20000)
    (shards / "broken.txt.gz").write_bytes(whole[: len(whole) // 2])  # cut short: fails on its worker

    def tasks() -> set[str]:  # those of this test: other tests share the cluster
        return dask_client.run_on_scheduler(lambda dask_scheduler: {str(key) for key in dask_scheduler.tasks}) - before

    before: set[str] = set()
    before = tasks()
    with pytest.raises(CorpusError, match="broken.txt.gz") as failed:
        count_words_distributed(shards, dask_client, progress=False, partition_bytes=4000, split_every=2)
    deadline = time.monotonic() + 10
    while tasks() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tasks() and failed.traceback, "the traceback is still held"


def test_dask_counting_of_no_text_is_the_local_error(dask_client, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    for source in ([], tmp_path / "empty.txt"):
        with pytest.raises(CorpusError, match="empty") as local:
            count_words(source, progress=False)
        with pytest.raises(CorpusError, match="empty") as distributed:
            count_words(source, progress=False, scheduler=dask_client)
        assert str(distributed.value) == str(local.value)


def test_dask_counting_refuses_zero_threads_or_partition_bytes(dask_client, tmp_path):
    from diffmask_fast.dask_counting import count_words_distributed

    corpus = tmp_path / "a.txt"
    corpus.write_text("kinase binds\n")
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        count_words_distributed(corpus, dask_client, progress=False, threads=0)
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):  # before any file is looked for
        count_words_distributed(tmp_path / "missing.txt", dask_client, progress=False, threads=0)
    with pytest.raises(ValueError, match="split_every must be at least 2, got 1"):  # a merge of one would never end
        count_words_distributed(corpus, dask_client, progress=False, split_every=1)
    cased = tmp_path / "cased.txt"
    cased.write_text("Enzyme enzyme\n")
    assert count_words_distributed(str(cased), dask_client, progress=False, lowercase=False) == count_words(
        cased, progress=False, lowercase=False), "a path given as a string, its case kept"
    with pytest.raises(ValueError, match="partition_bytes must be at least 1, got 0"):
        count_words_distributed(corpus, dask_client, progress=False, partition_bytes=0)
    # A float failed inside the planning or the workers; True planned one task per byte.
    for option, value in (("partition_bytes", 100e3), ("partition_bytes", True), ("threads", 2.5), ("threads", "2"),
                          ("split_every", 2.0)):
        with pytest.raises(TypeError, match=f"{option} must be a whole number, got {re.escape(repr(value))}"):
            count_words_distributed(corpus, dask_client, progress=False, **{option: value})
    with pytest.raises(ValueError, match="block_bytes must be at most 1,073,741,824"):
        count_words_distributed(corpus, dask_client, progress=False, block_bytes=2**62)
    assert count_words_distributed(corpus, dask_client, progress=False, threads=np.int64(2)).total == 2


def test_dask_counting_refuses_texts_at_the_first_not_after_reading_them_all(dask_client):
    """An endless iterable of texts was read into a list before it was refused: forever."""
    from diffmask_fast.dask_counting import count_words_distributed

    read = []

    def endless():
        for _ in range(100_000):
            read.append(1)
            yield "the enzyme binds"
        raise AssertionError("every text was read before any was refused")

    with pytest.raises(CorpusError, match="distributed counting reads files: give paths"):
        count_words_distributed(endless(), dask_client, progress=False)
    assert len(read) == 1


def test_a_local_dask_scheduler_name_or_a_data_frame_is_refused_with_the_way_to_count(tmp_path, monkeypatch):
    """scheduler='synchronous' (dask.compute's habit) would be read as a host to connect to, and
    a DataFrame's iteration gives its column names, which were called "strings of text"."""
    pytest.importorskip("distributed")
    import distributed

    class NoConnection:
        def __init__(self, *args, **kwargs):
            raise AssertionError("tried to reach a scheduler")

    monkeypatch.setattr(distributed, "Client", NoConnection)
    corpus = tmp_path / "a.txt"
    corpus.write_text("kinase binds\n")
    for name in ("synchronous", "threads", "Processes", "single-threaded", " threads\n"):
        with pytest.raises(ValueError, match=f"the scheduler {re.escape(repr(name))} names one of dask.compute's "
                                             "local schedulers.*give no scheduler"):
            count_words(corpus, progress=False, scheduler=name)
    pandas = pytest.importorskip("pandas")
    for frame in (pandas.DataFrame({"text": ["kinase binds"]}), pandas.DataFrame({"name": ["a"], "text": ["kinase"]})):
        with pytest.raises(CorpusError, match="distributed counting reads files; count a dataset without a scheduler"):
            count_words(frame, progress=False, scheduler="tcp://nowhere:1")


# ----------------------------------------------------------------------------------------------
# Reading files: names, damaged files, saved counts
# ----------------------------------------------------------------------------------------------


def test_a_file_whose_name_looks_like_a_glob_is_read_as_named(tmp_path):
    named = tmp_path / "notes[2023].txt"
    named.write_text("alpha beta\nbeta\n", encoding="utf-8")
    (tmp_path / "notes2.txt").write_text("gamma\n", encoding="utf-8")  # what the pattern [2023] would match
    assert dict(count_words(named, progress=False).counts) == {"alpha": 1, "beta": 2}
    assert dict(count_words(str(named), progress=False).counts) == {"alpha": 1, "beta": 2}
    assert list(iter_documents([named])) == ["alpha beta", "beta"]
    assert dict(count_words(str(tmp_path / "notes[2]*.txt"), progress=False).counts) == {"gamma": 1}


@pytest.mark.parametrize("offset", [0, 4095, 4096, 6000, 8191])
def test_both_readers_refuse_a_nul_anywhere_in_the_checked_head(tmp_path, offset):
    data = bytearray(b"word " * 4000)
    data[offset] = 0
    for name in ("corpus.txt", "corpus.txt.gz"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(bytes(data)) if name.endswith(".gz") else bytes(data))
        with pytest.raises(CorpusError, match="binary"):
            count_words(path, progress=False)
        with pytest.raises(CorpusError, match="binary"):
            list(iter_documents(path))


def test_a_truncated_gzip_file_is_a_corpus_error_for_both_readers(tmp_path):
    for name in ("cut.txt.gz", "cut.jsonl.gz"):
        whole = gzip.compress("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(20000)).encode())
        path = tmp_path / name
        path.write_bytes(whole[: len(whole) // 2])
        with pytest.raises(CorpusError, match="cannot be read"):
            list(iter_documents(path))
        with pytest.raises(CorpusError):
            count_words(path, progress=False)


@pytest.mark.parametrize("payload, problem", [
    ({"counts": {"a": 1}, "lowercase": True}, "documents"),
    ({"counts": {"a": "x"}, "documents": 1, "lowercase": True}, "integer"),
    ({"counts": {"a": None}, "documents": 1, "lowercase": True}, "integer"),
    ({"counts": {"a": 1.5}, "documents": 1, "lowercase": True}, "integer"),
    ({"counts": ["a", 1], "documents": 1, "lowercase": True}, "object"),
    ({"counts": {"a": -2}, "documents": 1, "lowercase": True}, "non-negative"),
])
def test_a_malformed_json_counts_file_is_a_clear_error(tmp_path, payload, problem):
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"format": counting.COUNTS_FORMAT, **payload}))
    with pytest.raises(ValueError, match=f"not a valid word-counts file.*{problem}"):
        WordCounts.load(path)
    assert main(["mine", "--counts", str(path)]) == 1


@pytest.mark.parametrize("field, value, problem", [
    ("documents", "many", "'documents' must be a non-negative integer, got 'many'"),
    ("documents", -3, "'documents' must be a non-negative integer, got -3"),
    ("documents", True, "'documents' must be a non-negative integer, got True"),
    ("total", 2.5, "'total' must be a non-negative integer, got 2.5"),
    ("words", "2", "'words' must be a non-negative integer, got '2'"),
    ("lowercase", "false", "'lowercase' must be true or false, got 'false'"),
    ("lowercase", None, "lacks 'lowercase'"),
])
def test_a_damaged_binary_counts_header_names_the_file_and_field(tmp_path, field, value, problem):
    path = tmp_path / "counts.bin"
    WordCounts.from_mapping({"alpha": 3, "beta": 1}, documents=2).save(path)
    data = path.read_bytes()
    header_length = int.from_bytes(data[16:24], "little")
    header = json.loads(data[24: 24 + header_length])
    if value is None:
        del header[field]
    else:
        header[field] = value
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(data[:16] + len(encoded).to_bytes(8, "little") + encoded + data[24 + header_length:])
    with pytest.raises(ValueError, match=re.escape(f"{str(path)!r} is corrupt: its header") + ".*"
                       + re.escape(problem)):
        WordCounts.load(path)


def _overwrite_table_entry(path, part: str, row: int, value: int) -> None:
    """Write ``value`` over one int64 of a binary counts file's offsets or counts, as damage
    that leaves its header and length intact would."""
    data = bytearray(path.read_bytes())
    header_length = int.from_bytes(data[16:24], "little")
    words = json.loads(data[24: 24 + header_length])["words"]
    start = 24 + header_length + (0 if part == "offsets" else 8 * (words + 1)) + 8 * row
    data[start: start + 8] = value.to_bytes(8, "little", signed=True)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("part, row, value", [
    ("offsets", 1, 10 ** 12), ("offsets", 1, -5), ("offsets", 2, 2), ("offsets", 2, 14),
    ("counts", 0, -4), ("counts", 2, 0),
])
def test_damaged_binary_counts_offsets_or_counts_are_refused_at_load(tmp_path, part, row, value):
    """Loading maps the file without reading it, but a lookup reads through the offsets: an offset
    outside the word bytes would read outside the mapping, and a decreasing one returns garbage
    words; both are refused at load, with the row, without verify."""
    path = tmp_path / "counts.bin"
    WordCounts.from_mapping({"alpha": 3, "beta": 1, "gamma": 2}, documents=2).save(path)
    _overwrite_table_entry(path, part, row, value)
    with pytest.raises(ValueError, match=re.escape(f"{str(path)!r} is corrupt: word ")):
        WordCounts.load(path)


@pytest.mark.parametrize("counts, documents, problem", [
    ({"": 2}, 1, "counted words are non-empty and hold no whitespace"),
    ({"two words": 2}, 1, "counted words are non-empty and hold no whitespace (words of str.split()), got 'two words'"),
    ({"Enzyme": 2}, 1, "'Enzyme' is counted as 'enzyme'"),
    ({"receptor,": 2}, 1, "'receptor,' is counted as 'receptor'"),
    ({"enzyme": 2}, True, "documents must be a whole number, got True"),
    ({"enzyme": 2}, -1, "documents must be at least 0, got -1"),
])
def test_counts_that_counting_could_not_have_made_are_refused(tmp_path, counts, documents, problem):
    """Such words would never meet a looked-up word (lookups normalize first), and a JSON true
    would have been read as one document."""
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"format": counting.COUNTS_FORMAT, "counts": counts, "documents": documents,
                                "lowercase": True}))
    with pytest.raises(ValueError, match="not a valid word-counts file: .*" + re.escape(problem)):
        WordCounts.load(path)
    with pytest.raises(TypeError if documents is True else ValueError, match=re.escape(problem)):
        WordCounts.from_mapping(counts, documents)
    assert WordCounts.from_mapping({"Enzyme": 2, "Long-Term": 1}, lowercase=False)["Enzyme"] == 2


def test_merging_counts_beyond_what_a_table_holds_is_refused():
    half = WordCounts.from_mapping({"a": 2**62, "b": 1})
    with pytest.raises(ValueError, match="the merged counts would add up to more than"):
        half.merge(half)  # 2**63 + 2 occurrences: int64 counts would wrap to negative ones
    with pytest.raises(ValueError, match="the merged counts would add up to more than"):
        counting.merge_counts([half, WordCounts.from_mapping({"c": 2**62})])
    assert half.merge(WordCounts.from_mapping({"a": 2**62 - 2})).total == 2**63 - 1
    with pytest.raises(ValueError, match="the merged counts would add up to more than"):
        half.merge(WordCounts.from_mapping({"a": 2**62 - 1}))  # 2**63 exactly: one past int64
    with pytest.raises(ValueError, match="the counts add up to more than"):
        WordCounts.from_mapping({"a": 2**62, "b": 2**62})


def test_counts_differing_only_in_documents_or_counted_as_booleans():
    """The number of documents is part of the counts (TF-ICF and resuming read it); a boolean is
    no count, though Python takes True for 1."""
    assert WordCounts.from_mapping({"protein": 3}, documents=1) != WordCounts.from_mapping({"protein": 3}, documents=5)
    assert WordCounts.from_mapping({"protein": 3}, documents=5) == WordCounts.from_mapping({"protein": 3}, documents=5)
    for made in (lambda: WordCounts.from_mapping({"protein": True}, documents=1),
                 lambda: WordCounts({"protein": True}, documents=1)):
        with pytest.raises(ValueError, match="the count of 'protein' must be a non-negative integer, got True"):
            made()


def test_a_binary_counts_file_announcing_a_huge_header_is_a_clear_error(tmp_path):
    path = tmp_path / "counts.bin"
    WordCounts.from_mapping({"alpha": 3, "beta": 1}, documents=2).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = (2**62).to_bytes(8, "little")  # the header length
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="header length"):
        WordCounts.load(path)


def test_words_with_lone_surrogates_survive_a_json_save(tmp_path):
    records = tmp_path / "broken.jsonl"
    records.write_text('{"text": "half \\ud83d emoji \\ud83d"}\n', encoding="utf-8")  # a broken emoji, escaped
    counts = count_words(records, progress=False)
    assert counts["\ud83d"] == 2
    for name in ("counts.json", "counts.bin"):
        counts.save(tmp_path / name)
        assert WordCounts.load(tmp_path / name) == counts


def test_words_holding_a_surrogate_pair_are_refused_by_the_json_format(tmp_path):
    """JSON reads the two escaped surrogates back as the one character they encode: the word
    loaded as another, or failed to load."""
    counts = count_words(["enzyme \ud83d\ude00a", "\ud83d\ude00 x \ude00\ud83d"], progress=False)
    assert counts["\ud83d\ude00a"] == 1 and counts["\ude00\ud83d"] == 1
    with pytest.raises(ValueError, match=r"cannot write .*counts\.json.* as JSON: the text .*ud83d.*ude00.* holds a "
                                         r"high and a low surrogate side by side.*binary format keeps every word"):
        counts.save(tmp_path / "counts.json")
    assert not (tmp_path / "counts.json").exists()
    counts.save(tmp_path / "counts.bin")
    assert WordCounts.load(tmp_path / "counts.bin") == counts
    apart = count_words(["\ude00\ud83d x \ud83d"], progress=False)  # a low before a high reads back as two
    apart.save(tmp_path / "apart.json")
    assert WordCounts.load(tmp_path / "apart.json") == apart


@pytest.mark.parametrize("opening", ["\r\n" * 4, " " * 8, "\ufeff" + " " * 6, "\n" * 5000])
def test_a_json_counts_file_opening_with_whitespace_loads(tmp_path, opening):
    """Its format was told from its first 8 bytes, all whitespace here: refused as no counts file."""
    path = tmp_path / "counts.json"
    payload = {"format": "diffmask_fast.word_counts/1", "documents": 1, "lowercase": True, "counts": {"enzyme": 2}}
    path.write_text(opening + json.dumps(payload), encoding="utf-8")
    assert WordCounts.load(path)["enzyme"] == 2


def test_a_byte_order_mark_opening_a_file_is_not_text(tmp_path, dask_client):
    bom = b"\xef\xbb\xbf"
    text = "enzyme binds the receptor\nthe enzyme again\ufeffinside\n"
    files = {"plain.txt": bom + text.encode(), "packed.txt.gz": gzip.compress(bom + text.encode()),
             "records.jsonl": bom + "".join(json.dumps({"text": line}) + "\n" for line in text.splitlines()).encode(),
             "only-a-mark.txt": bom}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name in files:
        path = tmp_path / name
        documents = list(iter_documents(path))
        assert all(not d.startswith("\ufeff") for d in documents), name
        if name != "only-a-mark.txt":
            assert documents == text.splitlines(), name
            counts = count_words(path, progress=False)
            assert counts == WordCounts.from_mapping(reference.count_words(documents), len(documents)), name
            assert counts["enzyme"] == 2 and counts["again\ufeffinside"] == 1, name  # only the opening mark goes
            assert count_words(path, progress=False, scheduler=dask_client, partition_bytes=7) == counts, name
            for block_bytes in (1, 2, 3, 5):  # blocks shorter than the mark
                assert count_words(path, progress=False, block_bytes=block_bytes) == counts, (name, block_bytes)
    assert list(iter_documents(tmp_path / "only-a-mark.txt")) == []
    # A file holding only the mark is an empty document source, beside others, in any block size.
    (tmp_path / "only-a-mark.txt.gz").write_bytes(gzip.compress(bom))
    sources = [tmp_path / "only-a-mark.txt", tmp_path / "only-a-mark.txt.gz", tmp_path / "plain.txt"]
    expected = count_words(tmp_path / "plain.txt", progress=False)
    for block_bytes in (1, 3, 1 << 20):
        assert count_words(sources, progress=False, block_bytes=block_bytes) == expected, block_bytes
    assert count_words(sources, progress=False, scheduler=dask_client) == expected


# ----------------------------------------------------------------------------------------------
# What a corpus path names: pipes, links, hidden folders, folders matched by a glob, repeats
# ----------------------------------------------------------------------------------------------


def random_lines(rng: random.Random, count: int) -> list[str]:
    """``count`` random lines, at least one of them holding a word: a source of blank lines
    only is refused ("the corpus has no words"), which is not what the tests using it check."""
    words = ["enzyme", "kinase", "binds", "the", "receptor", "Cell", "ΣΊΣΥΦΟΣ", "e.g.", "(IscS"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 6))) for _ in range(count)]
    if count and not any(lines):
        lines[rng.randrange(count)] = rng.choice(words)
    return lines


def write_lines(path: Path, lines: list[str]) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return lines


def counted(source, **options) -> tuple[WordCounts, list[str]]:
    """count_words and iter_documents of ``source``, checked to agree; with the warnings given."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = count_words(source, progress=False, threads=2, **options)
        documents = list(iter_documents(source, **options))
    assert counts == WordCounts.from_mapping(reference.count_words(documents), len(documents))
    return counts, [str(w.message) for w in caught]


def refused_before_reading(call, fifo: Path) -> CorpusError:
    """The CorpusError ``call`` raises for ``fifo``, which must come before the pipe is opened:
    opening it would wait for a writer, so a pipe still waited on fails the test (released by
    opening it for writing, so that the test cannot hang)."""
    import threading

    outcome: dict = {}

    def target():
        try:
            call()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    for _ in range(5):  # each open for reading waits for one writer
        if not thread.is_alive():
            break
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        thread.join(1)
    assert "error" in outcome and not thread.is_alive(), "the pipe was opened before it was refused"
    assert isinstance(outcome["error"], CorpusError), repr(outcome["error"])
    return outcome["error"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_is_refused_before_it_is_read(tmp_path, rng, recwarn):
    fifo = tmp_path / "corpus.txt"  # as bash's <(cat corpus.txt) or /dev/stdin would give
    os.mkfifo(fifo)
    plain = tmp_path / "plain.txt"
    write_lines(plain, random_lines(rng, 5))
    calls = [lambda: count_words(fifo, progress=False), lambda: list(iter_documents(fifo)),
             lambda: count_words([plain, fifo], progress=False), lambda: list(iter_documents(str(fifo))),
             lambda: count_words(str(tmp_path / "corpus.t?t"), progress=False),
             lambda: count_words([plain, fifo], progress=False, scheduler="tcp://127.0.0.1:1")]
    for call in calls:
        error = refused_before_reading(call, fifo)
        assert f"{str(fifo)!r} is a pipe" in str(error) and "iterable of strings" in str(error)
    # In a directory a pipe is one more file that is not read, and is named.
    with pytest.warns(UserWarning, match=r"skipped 1 other file\(s\) \(corpus.txt\)"):
        assert count_words(tmp_path, progress=False) == count_words(plain, progress=False)


def test_a_directory_follows_links_and_leaves_hidden_folders_out(tmp_path, rng):
    corpus, outside = tmp_path / "corpus", tmp_path / "outside"
    read = write_lines(corpus / "a.txt", random_lines(rng, rng.randint(1, 20)))
    read += write_lines(corpus / "deep" / "b.txt.gz", random_lines(rng, rng.randint(1, 20)))
    read += write_lines(outside / "c.text", random_lines(rng, rng.randint(1, 20)))
    for hidden in (".ipynb_checkpoints/a-checkpoint.txt", ".git/logs/HEAD.txt", "deep/.cache/x.txt", ".notes.txt"):
        write_lines(corpus / hidden, ["hidden words"])
    (corpus / "shared").symlink_to(outside, target_is_directory=True)  # a linked folder is entered
    (corpus / "deep" / "up").symlink_to(corpus, target_is_directory=True)  # a cycle is walked once
    write_lines(tmp_path / "around.txt", ["words around the corpus"])
    (corpus / "deep" / "top").symlink_to(tmp_path, target_is_directory=True)  # above the corpus: not entered
    (corpus / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    counts, said = counted(corpus)
    assert counts == WordCounts.from_mapping(reference.count_words(read), len(read))
    assert "hidden" not in counts and "around" not in counts
    assert [m for m in said if "broken link" in m] == [m for m in said if "skipped" in m]
    assert len(said) == 2 and "skipped 1 broken link(s) to nothing (gone.txt)" in said[0], said
    # A file reached again through a link is read once, with a warning naming it.
    (corpus / "alias.txt").symlink_to(corpus / "a.txt")
    again, said = counted(corpus)
    assert again == counts
    assert any("named more than once" in m and "alias.txt' (the file '" in m for m in said), said


def test_a_link_in_a_folder_to_what_is_no_file_is_skipped_as_such_not_as_a_broken_link(tmp_path, rng):
    corpus = tmp_path / "corpus"
    read = write_lines(corpus / "a.txt", random_lines(rng, rng.randint(1, 10)))
    (corpus / "device.txt").symlink_to(os.devnull)
    counts, said = counted(corpus)
    assert counts.documents == len(read)
    assert len(said) == 2 and "skipped 1 other file(s) (device.txt)" in said[0] and "broken" not in said[0], said


def test_a_glob_reads_what_it_matches_and_names_a_broken_link_among_them(tmp_path, rng):
    folder = tmp_path / "g"
    read = write_lines(folder / "a.txt", random_lines(rng, rng.randint(1, 10)))
    (folder / "c.txt").symlink_to(tmp_path / "nowhere.txt")
    counts, said = counted(str(folder / "*.txt"))
    assert counts.documents == len(read)
    assert len(said) == 2 and "skipped 1 broken link(s) to nothing (c.txt)" in said[0], said
    (folder / "a.txt").unlink()
    with pytest.raises(CorpusError, match="no files match the pattern"):
        count_words(str(folder / "*.txt"), progress=False)


def test_a_recursive_glob_that_matches_a_folder_and_its_files_reads_each_once_and_quietly(tmp_path, rng):
    """``d/**`` matches the folder d and the files in it: each file is read once, and no file is
    said to be named twice (the user named it once)."""
    read = write_lines(tmp_path / "g" / "d" / "b.txt", random_lines(rng, rng.randint(1, 10)))
    read += write_lines(tmp_path / "g" / "d" / "e" / "f.txt", random_lines(rng, rng.randint(1, 10)))
    counts, said = counted(str(tmp_path / "g" / "d" / "**"))
    assert counts.documents == len(read) and said == []


def test_a_recursive_glob_follows_links_as_a_folder_is_read_never_back_up(tmp_path, rng):
    """glob's "**" followed "up -> .." (and a link back inside the corpus) until paths 40 links
    deep failed: it read the files around the corpus, every corpus file again at each depth ("named
    more than once"), and called the deepest link broken; "corpus/*" matched "up" and read the
    tree around the corpus too. Globs now go as a folder is read: links to other folders are
    followed, links to the folder the pattern starts in, or to one holding it, are not."""
    corpus = tmp_path / "corpus"
    top = write_lines(corpus / "a.txt", random_lines(rng, rng.randint(1, 10)))
    below = write_lines(corpus / "sub" / "b.txt", random_lines(rng, rng.randint(1, 10)))
    write_lines(tmp_path / "other" / "secret.txt", ["words from around the corpus"])
    below += write_lines(tmp_path / "shared" / "c.txt", random_lines(rng, rng.randint(1, 10)))
    (corpus / "up").symlink_to("..")
    (corpus / "sub" / "back").symlink_to("..")
    (corpus / "shared").symlink_to(tmp_path / "shared")  # a folder elsewhere: read, as in a folder
    only_b = below[: len(below) - len((tmp_path / "shared" / "c.txt").read_text().splitlines())]
    for pattern, lines in (("**/*.txt", top + below), ("**", top + below), ("*/**/*.txt", below), ("*", top + below),
                           ("*/", below), ("**/", top + below), ("s*/**/b.txt", only_b)):
        counts, said = counted(f"{corpus}/{pattern}")  # as typed: a Path drops the separator of "*/"
        assert counts == WordCounts.from_mapping(reference.count_words(lines), len(lines)), pattern
        assert said == [], (pattern, said)
    assert count_words(str(corpus / "**" / "*.txt"), progress=False) == count_words(corpus, progress=False)
    around = count_words(f"{corpus}/up/o*/*.txt", progress=False)  # a link the pattern names is taken
    assert dict(around.counts) == {"words": 1, "from": 1, "around": 1, "the": 1, "corpus": 1}


def test_a_folder_that_cannot_be_listed_is_refused_not_skipped(tmp_path, rng, monkeypatch):
    """os.walk passes over a folder it cannot list unless told; the corpus would lose it silently.
    (Simulated: a permission bit does not stop root, who may run this.)"""
    corpus = tmp_path / "corpus"
    write_lines(corpus / "a.txt", random_lines(rng, 3))
    write_lines(corpus / "locked" / "b.txt", random_lines(rng, 3))
    listing = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for source in (corpus, str(tmp_path / "corp*")):
        with pytest.raises(CorpusError, match=r"cannot read the folder '.*locked' \(Permission denied\)"):
            count_words(source)


def test_a_file_named_twice_is_read_once(tmp_path, rng):
    corpus = tmp_path / "corpus"
    first = write_lines(corpus / "a.txt", random_lines(rng, rng.randint(1, 20)))
    second = write_lines(corpus / "sub" / "b.txt", random_lines(rng, rng.randint(1, 20)))
    cases = [([corpus / "a.txt", corpus / "a.txt"], first), ([corpus, corpus / "sub"], first + second),
             ((corpus / "sub", corpus), second + first)]  # each file at its first place
    for source, expected in cases:
        counts, said = counted(source)
        assert counts == WordCounts.from_mapping(reference.count_words(expected), len(expected)), source
        assert any("named more than once" in m for m in said), said


def test_a_glob_that_matches_folders_reads_their_text_files(tmp_path, rng):
    years = tmp_path / "g"
    read = []
    for year in rng.sample(range(2000, 2030), 3):
        read += write_lines(years / str(year) / "news.txt", random_lines(rng, rng.randint(1, 10)))
        read += write_lines(years / str(year) / "more" / "notes.txt.gz", random_lines(rng, rng.randint(1, 10)))
    (years / "2099").mkdir()
    (years / "2099" / "table.csv").write_text("not,read\n")
    write_lines(years / "2099" / ".hidden" / "x.txt", ["hidden words"])
    counts, said = counted(str(years / "*"))
    with pytest.warns(UserWarning, match=r"skipped 1 other file\(s\) \(table.csv\)"):
        assert counts == count_words(years, progress=False)
    assert counts.documents == len(read) and "hidden" not in counts
    assert len(said) == 2 and r"skipped 1 other file(s) (table.csv)" in said[0], said
    assert "folder(s) matched by" in said[0]
    # With a text field the folders give their JSON lines, as a directory does.
    (years / "2099" / "records.jsonl").write_text(json.dumps({"body": "kinase binds"}) + "\n")
    with pytest.warns(UserWarning, match=r"reading the 1 file\(s\) ending in \.jsonl.* skipped 7 other file"):
        assert dict(count_words(str(years / "2*"), progress=False, text_field="body").counts) == {"kinase": 1, "binds": 1}
    with pytest.raises(CorpusError, match=r"no files match the pattern .*its folders hold no files ending in \.txt"):
        count_words(str(years / "2099*"), progress=False)


# ----------------------------------------------------------------------------------------------
# General-English frequency tables
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_a_general_table_names_the_line_that_is_not_utf8_whatever_its_line_ends(tmp_path, rng, line_end):
    lines = [b"word%d\t%d" % (i, rng.randint(1, 1000)) for i in range(rng.randint(1, 3000))]
    bad = rng.randrange(len(lines) + 1)
    lines.insert(bad, b"caf\xe9\t3")
    table = tmp_path / "general.tsv"
    table.write_bytes(line_end.join(lines) + line_end)
    with pytest.raises(ValueError, match=rf"general.tsv' line {bad + 1}: not UTF-8"):
        GeneralFrequencies.from_file(table)


def test_a_general_table_that_is_a_folder_or_all_zeros_is_a_clear_error(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"general frequency table file '.*tables' is a folder, not a file"):
        GeneralFrequencies.from_file(folder)
    zeros = tmp_path / "zeros.tsv"
    zeros.write_text("the\t0\nenzyme\t0\n")
    with pytest.raises(ValueError, match=r"general frequency table '.*zeros.tsv': every count is 0"):
        GeneralFrequencies.from_file(zeros)
    assert GeneralFrequencies.from_file(zeros, total=1e9).total == 1e9  # a total of its own is taken


def test_file_suffixes_are_read_whatever_their_case(tmp_path):
    (tmp_path / "UP.JSONL").write_text('{"text": "enzyme receptor"}\n{"text": "kinase"}\n')
    counts = count_words(tmp_path / "UP.JSONL", progress=False)
    assert dict(counts.counts) == {"enzyme": 1, "receptor": 1, "kinase": 1} and counts.documents == 2
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "A.TXT").write_text("enzyme binds\n")
    (folder / "B.Txt.GZ").write_bytes(gzip.compress(b"kinase binds\n"))
    counts = count_words(folder, progress=False)
    assert dict(counts.counts) == {"enzyme": 1, "binds": 2, "kinase": 1} and counts.documents == 2


def test_counts_beyond_int64_are_refused_by_name(tmp_path):
    path = tmp_path / "huge.json"
    header = '{"format": "diffmask_fast.word_counts/1", "documents": 1, "lowercase": true, "counts": '
    path.write_text(header + '{"enzyme": 99999999999999999999}}')
    with pytest.raises(ValueError, match="not a valid word-counts file: the count of 'enzyme' is 99999999999999999999"):
        WordCounts.load(path)
    path.write_text(header + '{"enzyme": 5000000000000000000, "kinase": 5000000000000000000}}')
    with pytest.raises(ValueError, match="the counts add up to more than the 9223372036854775807 word occurrences"):
        WordCounts.load(path)
    path.write_text(header + '{"enzyme": 4000000000000000000, "kinase": 5000000000000000000}}')
    assert WordCounts.load(path).total == 9 * 10**18


@pytest.mark.parametrize("data, broken", [(b"\xef", True), (b"\xef\xbb", True), (b"\xef\xbbx y", True),
                                          (b"a\n\xef\xbb\xbf", False), (b"\xef\xbb\xbf\xef\xbb", True)])
@pytest.mark.parametrize("compressed", [False, True])
def test_the_bytes_of_a_cut_byte_order_mark_are_invalid_text_for_both_readers(tmp_path, data, broken, compressed):
    """The reference reader (utf-8-sig) dropped the bytes of a cut mark at the end of a file,
    where the counter reads them as U+FFFD."""
    path = tmp_path / ("cut.txt.gz" if compressed else "cut.txt")
    path.write_bytes(gzip.compress(data) if compressed else data)
    documents = list(iter_documents(path))
    assert count_words(path, progress=False) == WordCounts.from_mapping(reference.count_words(documents),
                                                                        len(documents))
    assert documents and ("\ufffd" in "".join(documents)) == broken


def test_a_bar_of_documents_counts_the_documents_of_files_too(tmp_path, monkeypatch):
    """Texts mixed with paths: the bar counted documents and then the bytes of the files."""
    bars = []

    class Bar(counting.tqdm):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            bars.append(self)

    lines = random.randint(3, 40)
    (tmp_path / "a.txt").write_text("".join(f"the enzyme number {i}\n" for i in range(lines)))
    monkeypatch.setattr(counting, "tqdm", Bar)
    counts = count_words(["one document", "and another", tmp_path / "a.txt"], progress=True)
    assert counts.documents == lines + 2
    assert bars[-1].unit == " docs" and bars[-1].n == counts.documents


def test_gzip_under_another_name_and_a_folder_for_counts_are_named(tmp_path):
    (tmp_path / "packed.txt").write_bytes(gzip.compress(b"hello world\n"))
    with pytest.raises(CorpusError, match="is gzip-compressed but not named \\*.gz"):
        count_words(tmp_path / "packed.txt", progress=False)
    with pytest.raises(CorpusError, match="is gzip-compressed but not named \\*.gz"):
        list(iter_documents(tmp_path / "packed.txt"))
    with pytest.raises(ValueError, match="word counts file .* is a folder, not a file"):
        WordCounts.load(tmp_path)


def test_partition_bytes_without_a_scheduler_is_refused():
    with pytest.raises(ValueError, match="partition_bytes sizes the byte ranges Dask workers count"):
        count_words(["the enzyme"], progress=False, partition_bytes=1 << 20)


def test_a_file_met_again_among_paths_one_at_a_time_is_read_once(tmp_path):
    """Paths from a generator (Path.rglob) or among texts were expanded one by one, so a file
    reached twice (by a link) was counted twice."""
    (tmp_path / "a.txt").write_text("alpha beta\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    once = {"alpha": 1, "beta": 1}
    with pytest.warns(DiffmaskWarning, match="named more than once"):
        assert dict(count_words(tmp_path.rglob("*.txt"), progress=False).counts) == once
    with pytest.warns(DiffmaskWarning, match="named more than once"):
        assert list(iter_documents(tmp_path.rglob("*.txt"))) == ["alpha beta"]
    with pytest.warns(DiffmaskWarning, match="read once"):
        mixed = count_words(("gamma", tmp_path / "a.txt", tmp_path / "a.txt"), progress=False)
    assert dict(mixed.counts) == {**once, "gamma": 1} and mixed.documents == 2


def test_json_records_python_cannot_read_are_named_by_file_and_line(tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "x"}\n{"text": "x", "meta": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    long_number = tmp_path / "number.jsonl"
    long_number.write_text('{"text": "x", "id": ' + "1" * 5000 + "}\n")
    for path, line in ((deep, 2), (long_number, 1)):
        for read in (lambda: count_words(path, progress=False), lambda: list(iter_documents(path))):
            with pytest.raises(CorpusError, match=f"line {line}: JSON that cannot be read"):
                read()


def test_one_long_text_given_as_the_corpus_is_named(tmp_path):
    text = "The protein binds the receptor. " * 20
    with pytest.raises(CorpusError, match="a string is read as a path: give texts as a list of strings"):
        count_words(text, progress=False)


@pytest.mark.parametrize("block, error, message", [
    (1.5, TypeError, "block_bytes must be a whole number, got 1.5"),
    (True, TypeError, "block_bytes must be a whole number"),
    (float("nan"), TypeError, "block_bytes must be a whole number"),
    (2**62, ValueError, "block_bytes must be at most 1,073,741,824"),
    (0, ValueError, "block_bytes must be at least 1")])
def test_block_sizes_are_checked(tmp_path, block, error, message):
    path = tmp_path / "small.txt.gz"
    path.write_bytes(gzip.compress(b"alpha beta\n"))
    for source in (path, ["alpha beta"]):
        with pytest.raises(error, match=message):
            count_words(source, progress=False, block_bytes=block)


def test_a_byte_order_mark_inside_joined_files_is_no_part_of_a_word(tmp_path):
    """`cat a.txt b.txt` keeps b's byte-order mark at the start of a line: "\ufeffhello" never
    matched "hello". Normalizing strips invisible format characters from word ends."""
    bom = codecs.BOM_UTF8
    (tmp_path / "joined.txt").write_bytes(bom + b"hello world\n" + bom + b"hello again\n")
    (tmp_path / "joined.txt.gz").write_bytes(gzip.compress(bom + b"hello world\n") + gzip.compress(bom + b"hello again\n"))
    expected = {"hello": 2, "world": 1, "again": 1}
    for name in ("joined.txt", "joined.txt.gz"):
        assert dict(count_words(tmp_path / name, progress=False).counts) == expected, name
        assert reference.count_words(iter_documents(tmp_path / name)) == expected, name
    assert reference.normalize_word("word\u200b") == "word" and reference.normalize_word("\u00adsoft") == "soft"


def test_count_lines_counts_a_crlf_pair_split_before_the_span():
    """count_lines(buf, start, end, prev): prev is the byte before start, so a span that starts
    with "\\n" after a "\\r" holds one more "\\r\\n" pair. (Mutant: the first byte's pair with prev
    dropped. _count_until_full only calls count_lines on spans that start with a word, so the
    counting tests cannot reach that branch.)"""
    from diffmask_fast import _wordtable

    buf = np.frombuffer(b"\nab\r\n", np.uint8)
    assert _wordtable.count_lines(buf, 0, 5, 13) == (2, 1, 2)
    assert _wordtable.count_lines(buf, 0, 5, -1) == (2, 1, 1)


@pytest.mark.parametrize("lowercase", [None, 0, "no"])
def test_a_lowercase_that_is_not_a_bool_is_refused_before_counting(lowercase, tmp_path):
    """It was refused only when the counts were made, after the whole corpus was read."""
    def documents():
        pytest.fail("the corpus was read")
        yield "never"

    with pytest.raises(TypeError, match=f"lowercase must be True or False, got {lowercase!r}"):
        count_words(documents(), lowercase=lowercase, progress=False)
    path = tmp_path / "c.txt"
    path.write_text("a b\n")
    with pytest.raises(TypeError, match="lowercase must be True or False"):  # before connecting to the cluster
        count_words(path, lowercase=lowercase, progress=False, scheduler="tcp://127.0.0.1:1")


def test_an_empty_corpus_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys):
    """count_words("") and `mine ""` (an unset variable) counted every text file under the working folder."""
    (tmp_path / "notes.txt").write_text("private words\n")
    monkeypatch.chdir(tmp_path)
    for source in ("", " "):
        with pytest.raises(CorpusError, match="a corpus path is empty"):
            count_words(source, progress=False)
    for blank in ("", " "):
        with pytest.raises(SystemExit):
            main(["mine", blank])
        assert "a corpus path is empty" in capsys.readouterr().err


def test_a_file_system_that_maps_no_files_is_read_instead(tmp_path, monkeypatch, rng):
    """Counting and loading counts failed with a bare OSError on mounts that refuse mmap."""
    text = "".join(rng.choice(["kinase ", "binds\n", "the ", "receptor\r\n"]) for _ in range(40_000))
    corpus = tmp_path / "big.txt"
    corpus.write_text(text, encoding="utf-8")
    expected = reference.count_words(iter_documents(corpus))
    count_words(corpus, progress=False).save(tmp_path / "counts.bin")

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)
    assert dict(count_words(corpus, progress=False, block_bytes=4096).counts) == dict(expected)
    assert dict(WordCounts.load(tmp_path / "counts.bin").counts) == dict(expected)


@pytest.mark.parametrize("size", [100, 20_000, 200_000])
@pytest.mark.parametrize("compressed", [False, True])
def test_the_bar_ends_full_for_files_that_open_with_a_byte_order_mark(tmp_path, monkeypatch, size, compressed):
    """The bar's total is the bytes on disk; those of the mark, and for gzip those the seek past it
    read, were never counted: such a corpus ended at 81%, or at 0%."""
    bars = []

    class Bar(counting.tqdm):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            bars.append(self)

    data = UTF8_BOM + "".join(f"word{i % 997} " + ("\n" if i % 9 == 0 else "") for i in range(size)).encode()
    path = tmp_path / ("a.txt.gz" if compressed else "a.txt")
    path.write_bytes(gzip.compress(data) if compressed else data)
    monkeypatch.setattr(counting, "tqdm", Bar)
    counts = count_words(path, progress=True, block_bytes=1 << 14)
    assert counts.total == size and bars[-1].n == bars[-1].total == path.stat().st_size


def test_many_small_files_count_as_their_texts(tmp_path, rng):
    """Files smaller than the head read to check them are counted from that head, whatever threads."""
    texts = ["".join(rng.choice(["the ", "enzyme", "\n", "\r", " binds", "é"]) for _ in range(rng.randrange(0, 30)))
             for _ in range(300)]
    for i, text in enumerate(texts):
        (tmp_path / f"{i:04d}.txt").write_text(text, encoding="utf-8", newline="")
    expected = reference.count_words(iter_documents(tmp_path))
    for threads in (1, 3):
        counts = count_words(tmp_path, progress=False, threads=threads)
        assert dict(counts.counts) == dict(expected) and counts.documents == len(list(iter_documents(tmp_path)))


def test_counts_less_those_of_some_documents_are_the_counts_of_the_rest(rng):
    """A corpus counted whole, less the counts of some of its documents: exactly the counts of
    the others (words left at 0 dropped); counts of other text are refused."""
    words = ["enzyme", "Receptor", "ΣΊΣΥΦΟΣ", "the", "binds", "x" * 30, "kinase"]
    documents = [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 9))) for _ in range(rng.randrange(2, 80))]
    part = rng.sample(range(len(documents)), rng.randrange(1, len(documents)))
    taken = [documents[i] for i in part]
    rest = [document for i, document in enumerate(documents) if i not in set(part)]
    whole = count_words(documents, progress=False)
    less = whole.subtract(count_words(taken, progress=False))
    if rest:
        assert less == count_words(rest, progress=False)
    assert dict(less.counts) == dict(reference.count_words(rest)) and less.documents == len(rest)
    assert all(count > 0 for count in less.table.counts.tolist())
    with pytest.raises(ValueError, match="not part of these: 'unrelated' occurs 1 times there, 0 here"):
        whole.subtract(count_words(["unrelated"], progress=False))
    less = count_words(["enzyme binds", "kinase binds enzyme"], progress=False).subtract(
        count_words(["kinase binds"], progress=False))  # a word left at 0 for certain
    assert "kinase" not in less and len(less) == 2 and dict(less.counts) == {"enzyme": 2, "binds": 1}
    with pytest.raises(ValueError, match="different lowercasing"):
        whole.subtract(count_words(taken, lowercase=False, progress=False))


def test_a_file_read_as_text_that_holds_json_lines_is_warned_of(tmp_path):
    """train.jsonl copied as train.txt was counted as text without a word: its field names and
    quotes were words, "text_marked" and "label" among the top anchors."""
    path = tmp_path / "train.txt"
    path.write_text("".join(json.dumps({"text": f"the enzyme {i} binds", "label": "a"}) + "\n" for i in range(20)))
    for read in (lambda: count_words(path, progress=False), lambda: list(iter_documents(path))):
        _FOLDERS_WARNED_OF_JSON_LINES.clear()
        with pytest.warns(DiffmaskWarning, match=r"'.*train.txt' looks like JSON lines \(fields 'text', 'label'\) but "
                                                 r"is read as text.* name it \.jsonl, or give its text field"):
            read()
    assert count_words(path, progress=False, text_field="text")["enzyme"] == 20
    plain = tmp_path / "plain.txt"
    plain.write_text("{braces} open this line\nthe enzyme binds\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "record.txt").write_text("{}\nthe enzyme binds\n")  # an empty object holds no fields
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        count_words(plain, progress=False)
        count_words(tmp_path / "empty" / "record.txt", progress=False)
    (tmp_path / "blank").mkdir()
    spaced = tmp_path / "blank" / "train.txt"  # blank lines before the first record
    spaced.write_text("\n  \n" + json.dumps({"text": "the enzyme binds"}) + "\n")
    with pytest.warns(DiffmaskWarning, match=r"train.txt' looks like JSON lines \(fields 'text'\)"):
        count_words(spaced, progress=False)


def test_a_text_file_gives_its_lines_as_written_but_for_the_line_end(tmp_path):
    path = tmp_path / "spaced.txt"
    path.write_bytes(b"hello  \t\r\n  indented line\n\ttab \n")
    assert list(iter_documents(path)) == ["hello  \t", "  indented line", "\ttab "]


def test_a_list_of_paths_and_strings_reads_the_files_and_takes_the_strings_as_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("the enzyme binds\nkinase\n")
    for source in ([path, "some text"], ["some text", path]):
        expected = ["the enzyme binds", "kinase", "some text"] if source[0] == path else \
            ["some text", "the enzyme binds", "kinase"]
        assert list(iter_documents(source)) == expected
        assert count_words(source, progress=False) == count_words(expected, progress=False)


def test_emoji_with_a_variation_selector_are_counted_apart(tmp_path):
    """Every emoji written with U+FE0F was the one word U+FE0F (the symbol stripped, its selector left)."""
    text = "I \u2764\ufe0f NY \u2714\ufe0f done \u00a9\ufe0f 2024 \u263a\ufe0f \u2764\ufe0f (x)\u0301\n"
    (tmp_path / "emoji.txt").write_text(text * 3, encoding="utf-8")
    for corpus in ([text] * 3, tmp_path / "emoji.txt"):
        counts = count_words(corpus, progress=False)
        assert counts["\u2764\ufe0f"] == 6 and counts["\u2714\ufe0f"] == 3 and counts["x"] == 3
        assert "\ufe0f" not in counts
        assert dict(counts.counts) == dict(reference.count_words([text] * 3))


def test_nul_bytes_past_the_checked_head_are_warned_of(tmp_path):
    """Binary data after a file's first 8 KiB was counted as words without a word said."""
    from diffmask_fast.corpus import BINARY_CHECK_BYTES

    path = tmp_path / "late.txt"
    path.write_bytes(b"enzyme binds\n" * (BINARY_CHECK_BYTES // 10) + b"blob\x00data more\x00\x01 words\n")
    for corpus in (path, [path.read_text()]):
        with pytest.warns(DiffmaskWarning, match=r"2 distinct counted word\(s\) hold NUL bytes "
                                                 r"\(e\.g\. 'blob\\x00data'\).*first 8,192 bytes only"):
            counts = count_words(corpus, progress=False)
        assert counts["blob\x00data"] == 1 and counts["enzyme"] == BINARY_CHECK_BYTES // 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        count_words(["enzyme binds"] * 3, progress=False)


def test_word_counts_read_as_a_mapping_give_their_counts(tmp_path):
    """Counter(counts) counted each word once (it iterated the words alone), dict(counts) failed or
    paired letters, and code taking a mapping's items() could not read them."""
    from collections.abc import Mapping

    counts = count_words(["the the the enzyme of it", "of the"], progress=False)
    expected = {"the": 4, "of": 2, "enzyme": 1, "it": 1}
    assert isinstance(counts, Mapping)
    assert Counter(counts) == Counter(expected) and dict(counts) == expected
    assert dict(counts.items()) == expected and sorted(counts.keys()) == sorted(expected)
    assert sorted(counts.values()) == [1, 1, 2, 4]
    assert counts.get("of") == 2 and counts.get("kinase") is None and counts.get("kinase", 0) == 0
    assert counts["kinase"] == 0  # as a Counter's
    assert Counter(counts) + Counter(counts) == Counter({word: 2 * n for word, n in expected.items()})
    assert GeneralFrequencies(counts, counts.total).count("the") == 4
    assert WordCounts(counts, counts.documents) == counts
    cased = count_words(["Enzyme binds enzyme"], lowercase=False, progress=False)
    assert WordCounts(cased, 1, lowercase=False) == cased  # its table, not a dict of its words
    with pytest.raises(ValueError, match="counts made with lowercase=False cannot be taken as lowercase=True"):
        WordCounts(cased, 1)
    from diffmask_fast.collator import DifferenceMaskingCollator  # counts are no scores
    from tokenizers_offline import bert_wordpiece

    with pytest.raises(TypeError, match=r"scores must be word scores, got word counts \(WordCounts\)"):
        DifferenceMaskingCollator(bert_wordpiece(), counts)


def test_a_folder_of_json_lines_read_as_text_warns_once(tmp_path):
    """A folder of thousands of misnamed files printed a warning for each."""
    for i in range(30):
        (tmp_path / f"part{i:02}.txt").write_text(json.dumps({"text": "the enzyme binds"}) + "\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "more.txt").write_text(json.dumps({"text": "a kinase"}) + "\n")
    _FOLDERS_WARNED_OF_JSON_LINES.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert count_words(tmp_path, progress=False)["enzyme"] == 30
        list(iter_documents(tmp_path))
    messages = sorted(str(warning.message) for warning in caught)
    assert len(messages) == 2, messages
    assert "part00.txt' looks like JSON lines" in messages[1] and "other files of" in messages[1]
    assert "more.txt' looks like JSON lines" in messages[0]


def test_utf16_text_and_a_counts_file_are_named_not_called_binary(tmp_path):
    """Notepad's "Unicode" and PowerShell's > write UTF-16, and a counts file given as the corpus
    was "a binary file" too."""
    text = "the enzyme binds caf\u00e9\n"
    for name, data, encoding in (("bom.txt", text.encode("utf-16"), "UTF-16"),
                                 ("plain.txt", text.encode("utf-16-le"), "UTF-16"),
                                 ("big.txt", text.encode("utf-16-be"), "UTF-16"),
                                 ("wide.txt", text.encode("utf-32"), "UTF-32")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorpusError, match=f"'.*{name}' is {encoding} text: convert it to UTF-8"):
            count_words(tmp_path / name, progress=False)
    for name, data in (("zeros.bin", bytes(10_000)), ("numbers.bin", np.arange(3000, dtype=np.int32).tobytes()),
                       ("marked.bin", b"\xff\xfe" + bytes(range(256)) * 8)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorpusError, match=f"'.*{name}' looks like a binary file"):
            count_words(tmp_path / name, progress=False)
    count_words(["the enzyme binds"], progress=False).save(tmp_path / "c.counts")
    with pytest.raises(CorpusError, match=r"'.*c.counts' holds saved word counts, not text: give it as counts "
                                          r"\(--counts\)"):
        count_words(tmp_path / "c.counts", progress=False)


def test_verify_refuses_counts_whose_total_is_not_their_sum(tmp_path):
    """The header's total is N_T of TF-ICF and sets the default min_count: a writer that got it
    wrong (its checksums consistent) is caught by verify, which sums the counts."""
    from diffmask_fast.counting import CountTable

    path = tmp_path / "counts.bin"
    WordCounts(CountTable.from_mapping({"enzyme": 2, "the": 5}), 3, True, total=9).save(path)
    assert WordCounts.load(path).total == 9
    with pytest.raises(ValueError, match="its counts sum to 7, its header says 9"):
        WordCounts.load(path, verify=True)


def test_subtracting_more_of_a_word_than_the_counts_hold_is_refused():
    whole = WordCounts.from_mapping({"enzyme": 2, "the": 5}, documents=3)
    with pytest.raises(ValueError, match="'enzyme' occurs 3 times there, 2 here"):
        whole.subtract(WordCounts.from_mapping({"enzyme": 3}, documents=1))


@pytest.mark.parametrize("name", ["counts.bin", "counts.json"])
def test_a_save_that_fails_leaves_the_earlier_counts(tmp_path, monkeypatch, name):
    """Both formats are written to a temporary file that replaces the file only once complete."""
    from diffmask_fast import _io

    path = tmp_path / name
    WordCounts.from_mapping({"enzyme": 2}, documents=1).save(path)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        WordCounts.from_mapping({"kinase": 3, "protein": 4}, documents=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [name]


def test_a_table_is_sorted_by_its_words_bytes_past_every_prefix_key_and_copies_merged(seed):
    """Strings are ordered by their first 8 bytes (a radix-sorted key, zeros past a string's end),
    then by the rest where those agree, and each is kept once with its copies' counts summed ("The"
    and "the" both normalized to "the"): strings alike up to 7, 8, 9, 15, 16 or 17 bytes, zero
    bytes ("ab" and "ab\\0" share their keys), the empty string, copies longer than 16 bytes, runs
    alike in their first 8 bytes short and long (sorted by insertion and by merging), tables of
    one or two strings."""
    rng = random.Random(seed)
    words = _strings_alike_in_their_first_bytes(rng)
    counts = [rng.randint(1, 9) for _ in words]
    sorted_blob, offsets, sorted_counts = _sorted_byte_table(words, counts)
    got = _table_rows(sorted_blob, offsets, sorted_counts)
    expected: dict = {}
    for word, count in zip(words, counts):
        expected[word] = expected.get(word, 0) + count
    assert [word for word, _ in got] == sorted(expected), f"seed={seed}"
    assert got == sorted(expected.items()), f"seed={seed}: a count left its word"
    assert offsets[-1] == len(sorted_blob), f"seed={seed}"


def test_sorted_tables_merge_find_their_words_and_catch_a_row_out_of_order(seed):
    """Tables are merged, searched and checked for order by comparing words 8 bytes at a time:
    words that first differ in any of those bytes, in one with its top bit set (0x80, 0xff: no
    signed comparison), or past them, and words that are a prefix of others."""
    rng = random.Random(seed)
    first, second = _strings_alike_in_their_first_bytes(rng), _strings_alike_in_their_first_bytes(rng)
    tables = [_sorted_byte_table(words, [rng.randint(1, 9) for _ in words]) for words in (first, second)]
    merged = _wordtable.merge_sorted(*tables[0], *tables[1])
    expected: dict = {}
    for table in tables:
        for word, count in _table_rows(*table):
            expected[word] = expected.get(word, 0) + count
    assert _table_rows(*merged) == sorted(expected.items()), f"seed={seed}"
    blob, offsets, _ = merged
    assert _wordtable.first_unsorted_row(blob, offsets) == -1, f"seed={seed}"
    for row, word in enumerate(sorted(expected)):
        assert _wordtable.search_sorted(blob, offsets, np.frombuffer(word, np.uint8)) == row, f"seed={seed}: {word!r}"
    for word in {word + b"\x00" for word in expected} - set(expected):
        assert _wordtable.search_sorted(blob, offsets, np.frombuffer(word, np.uint8)) == -1, f"seed={seed}: {word!r}"
    if len(expected) > 1:
        row = rng.randrange(1, len(expected))
        words = sorted(expected)
        words[row - 1], words[row] = words[row], words[row - 1]
        swapped, swapped_offsets, _ = _sorted_byte_table(words, [1] * len(words), keep_order=True)
        assert _wordtable.first_unsorted_row(swapped, swapped_offsets) == row, f"seed={seed}"


def _strings_alike_in_their_first_bytes(rng: random.Random) -> list[bytes]:
    """Byte strings that share prefixes of 0 to 24 bytes with a few bytes after them, copies of
    some of them, shuffled: from 1 string to hundreds."""
    base = bytes(rng.choice(b"ab\x00\x7f\x80\xff") for _ in range(24))
    size = rng.choice([1, 2, 3, rng.randint(4, 40), rng.randint(40, 400)])
    words = [base[:rng.choice([0, 1, 7, 8, 9, 15, 16, 17, 24])]
             + bytes(rng.choice(b"a\x00\xff\x01\x80") for _ in range(rng.randint(0, 3))) for _ in range(size)]
    words += rng.sample(words, rng.randint(0, len(words)))  # more copies, long ones too
    rng.shuffle(words)
    return words


def _sorted_byte_table(words: list[bytes], counts: list[int], keep_order: bool = False):
    """(blob, offsets, counts) of ``words``: by ``sorted_table``, or as given with ``keep_order``."""
    lengths = np.array([len(word) for word in words], np.int64)
    blob = np.frombuffer(bytearray(b"".join(words)), np.uint8)
    if keep_order:
        return blob, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), np.array(counts, np.int64)
    return _wordtable.sorted_table(blob, np.cumsum(lengths) - lengths, lengths, np.array(counts, np.int64))


def _table_rows(blob, offsets, counts) -> list[tuple[bytes, int]]:
    return [(bytes(blob[a:b]), int(c)) for a, b, c in zip(offsets[:-1], offsets[1:], counts)]


def test_a_table_of_normalized_words_merges_those_that_normalize_alike(seed):
    """Normalized words are sorted and copies merged ("The" and "the" both become "the"); a
    prefix ("a" before "ab") stays as it is, and an empty table is empty."""
    rng = random.Random(seed)
    words = [rng.choice(["a", "ab", "abc", "b", "ba", "the", "\u00e9t\u00e9"]) for _ in range(rng.randint(0, 60))]
    counts = [rng.randint(1, 9) for _ in words]
    got = [(word.decode("utf-8"), count)
           for word, count in _table_rows(*_sorted_byte_table([word.encode("utf-8") for word in words], counts))]
    expected: dict = {}
    for word, count in zip(words, counts):
        expected[word] = expected.get(word, 0) + count
    assert got == sorted(expected.items(), key=lambda item: item[0].encode("utf-8")), f"seed={seed}"
    assert _table_rows(*_sorted_byte_table([], [])) == []


def test_counts_saved_before_marks_went_with_their_symbol_name_the_version(tmp_path):
    """Counts and tables saved when "love" + U+2764 U+FE0F normalized to itself (the heart
    stripped, its selector left) were refused as the caller's slip ("count_words normalizes them")."""
    from diffmask_fast.anchors import mine_anchors
    from diffmask_fast.scoring import ScoreTable

    stale = "love\u2764\ufe0f"
    assert reference.normalize_word(stale) == "love"
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"format": counting.COUNTS_FORMAT, "counts": {stale: 3, "enzyme": 2},
                                "documents": 1, "lowercase": True}))
    with pytest.raises(ValueError, match=r"saved by an earlier version, which stripped a symbol at a word's end but "
                                         r"not the marks after it .*: count again"):
        WordCounts.load(path)
    with pytest.raises(ValueError, match=r"score again"):
        ScoreTable.from_arrays([stale], np.array([0.5], np.float32))
    with pytest.raises(ValueError, match=r"'enzyme,' is counted as 'enzyme'; count_words normalizes them$"):
        WordCounts({"enzyme,": 2})  # no earlier version made that word
    counts = WordCounts(counting.CountTable.from_mapping({stale: 30, "enzyme": 2}), 1)  # a binary file, unchecked
    with pytest.raises(ValueError, match=r"anchor 'love.*', which .* earlier version, which stripped a symbol"):
        mine_anchors(counts, min_count=1)
