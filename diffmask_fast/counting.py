"""Counting the words of a target-domain corpus: c_T(w) and N_T of TF-ICF (eq. 2).

``count_words`` gives exactly ``reference.count_words`` over ``corpus.iter_documents`` (the words
``str.split()`` finds in each document, normalized by ``reference.normalize_word``), at the speed
of a byte loop and in memory that grows with the number of distinct words, not with the corpus:

- Text is taken in blocks of ``block_bytes``, a few at a time: plain files through a memory map
  (each block's pages are dropped once it is counted), gzip files decompressed by a background
  thread into a few reused buffers. Each block is cut at whitespace into chunks (a few per
  thread) that the threads take in turn, each counting into a hash table of its own with a Numba
  kernel that splits raw UTF-8 bytes on the byte sequences of Unicode whitespace and never
  decodes (``_wordtable`` explains why that is exact, invalid bytes included). A word cut by a
  block boundary is counted whole with the next block. Line ends are counted by the same kernel.
- At the end the thread tables are merged and each *distinct* raw word is normalized once: ASCII
  words in Numba, others by ``reference.normalize_word`` after decoding with ``errors="replace"``
  (files) or exactly (strings). The result is a table of words sorted by their UTF-8 bytes.
- With ``scheduler`` (a Dask ``Client`` or a scheduler address), files are cut into byte ranges
  counted by the same kernel on Dask workers and merged by a tree reduction
  (``diffmask_fast.dask_counting``).

``WordCounts`` holds the sorted table; ``save`` writes it in a compact binary format that ``load``
maps into memory without reading it, so scoring and reports never recount a corpus.
"""

from __future__ import annotations

import codecs
import collections
import collections.abc
import functools
import json
import math
import mmap
import numbers
import os
import queue
import stat
import struct
import threading
import types
import warnings
import zlib
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Callable, Collection, ItemsView, Iterable, Iterator, KeysView, Mapping, Sized, ValuesView

import numpy as np
from tqdm.auto import tqdm

from . import _wordtable as W
from . import reference
from ._checks import check_lowercase, earlier_normalization, first_unnormalized, shown_apart, whole_number
from ._io import atomic_write_json, atomic_writer, check_input_file
from .advice import DiffmaskWarning
from .corpus import (
    BINARY_CHECK_BYTES,
    UTF8_BOM,
    CorpusError,
    CorpusSource,
    FilesReadOnce,
    WORD_COUNTS_MAGIC,
    check_iterable_corpus,
    check_text_file,
    corpus_files,
    dataset_view,
    is_dataset,
    is_gzip,
    is_json_lines,
    iter_dataset_batches,
    open_binary,
    record_text,
    text_field_name,
    warn_of_json_lines_read_as_text,
)

COUNTS_FORMAT = "diffmask_fast.word_counts/1"
#: First bytes of the binary counts format.
BINARY_MAGIC = WORD_COUNTS_MAGIC  # b"DMWCOUNT"
#: How far a JSON counts file is looked into for its opening brace, past whitespace: other files
#: are refused by their first bytes, not read whole as JSON.
JSON_OPENING_BYTES = 1 << 16
BINARY_VERSION = 1
_PREAMBLE = struct.Struct("<8sIIQ")  # magic, version, reserved, header length

#: Bytes read at a time from a file; threads share each block.
DEFAULT_BLOCK_BYTES = 16 << 20
#: The largest block: a reader holds up to three at once.
MAX_BLOCK_BYTES = 1 << 30
#: Characters of strings (iterables, JSON lines, datasets) gathered before they are counted.
STRING_BATCH_CHARS = 4 << 20
#: A block is cut into up to this many chunks per thread, of at least MIN_CHUNK_BYTES each.
CHUNKS_PER_THREAD = 4
MIN_CHUNK_BYTES = 1 << 20


#: The most counting threads taken (tables are made only as chunks are counted, but the pool's
#: queues grow with the threads: 10**7 took seconds, and 2**70 overflowed).
MAX_THREADS = 1 << 20


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------
# Sorted count tables
# ----------------------------------------------------------------------------------------------


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


#: Counts and their total are int64.
_MAX_COUNT = 2**63


class CountTable:
    """Distinct words and their counts, sorted by UTF-8 bytes (which is code point order).

    ``blob`` holds the words' bytes back to back, word i is ``blob[offsets[i]:offsets[i + 1]]``,
    and ``counts[i]`` is its count. Arrays are read-only; they may be mapped from a file
    (``source`` names it, for errors)."""

    __slots__ = ("blob", "offsets", "counts", "source")

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, counts: np.ndarray, source: str | None = None):
        self.blob = _readonly(np.asarray(blob, dtype=np.uint8))
        self.offsets = _readonly(np.asarray(offsets, dtype=np.int64))
        self.counts = _readonly(np.asarray(counts, dtype=np.int64))
        self.source = source

    @classmethod
    def empty(cls) -> "CountTable":
        return cls(np.zeros(0, np.uint8), np.zeros(1, np.int64), np.zeros(0, np.int64))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, int]) -> "CountTable":
        """A table of a word -> count mapping; words with count 0 are left out."""
        items = []
        for word, count in mapping.items():
            if not isinstance(word, str):
                raise TypeError(f"words must be strings, got {type(word).__name__}")
            if (isinstance(count, bool) or not isinstance(count, numbers.Real) or not math.isfinite(count)
                    or count < 0 or int(count) != count):
                raise ValueError(f"the count of {word!r} must be a non-negative integer, got {count!r}")
            if count >= _MAX_COUNT:
                raise ValueError(f"the count of {word!r} is {int(count)}, more than the {_MAX_COUNT - 1} a table holds")
            if count:
                items.append((word.encode("utf-8", "surrogatepass"), int(count)))
        if sum(count for _, count in items) >= _MAX_COUNT:
            raise ValueError(f"the counts add up to more than the {_MAX_COUNT - 1} word occurrences a table holds")
        items.sort()
        lengths = np.fromiter((len(w) for w, _ in items), np.int64, len(items))
        offsets = np.zeros(len(items) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        blob = np.frombuffer(b"".join(w for w, _ in items), np.uint8)
        return cls(blob, offsets, np.fromiter((c for _, c in items), np.int64, len(items)))

    def __len__(self) -> int:
        return len(self.counts)

    def word(self, i: int) -> str:
        try:
            return self.blob[self.offsets[i]: self.offsets[i + 1]].tobytes().decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise self._damaged(i) from None

    def words(self, rows: Iterable[int] | None = None) -> list[str]:
        """The words of some rows (all by default), decoded."""
        if rows is not None:
            return [self.word(int(i)) for i in rows]
        data, starts = self.blob.tobytes(), self.offsets.tolist()
        try:
            return [data[starts[i]: starts[i + 1]].decode("utf-8", "surrogatepass") for i in range(len(self))]
        except UnicodeDecodeError:
            for i in range(len(self)):
                self.word(i)  # raises for the first damaged word
            raise

    def _damaged(self, row: int) -> ValueError:
        """Word bytes that are no UTF-8: counting writes none, so the file was damaged after."""
        where = repr(self.source) if self.source else "the count table"
        return ValueError(f"{where} is corrupt: word {row:,} is not UTF-8 (WordCounts.load(path, verify=True) and "
                          "the CLI check a file's checksum as they load it)")

    def find(self, word: str) -> int:
        """Row of ``word``, or -1."""
        if not isinstance(word, str):
            return -1
        key = np.frombuffer(word.encode("utf-8", "surrogatepass"), np.uint8)
        return int(W.search_sorted(self.blob, self.offsets, key))

    def merge(self, other: "CountTable") -> "CountTable":
        if not len(other):
            return self
        if not len(self):
            return other
        if int(self.counts.sum()) + int(other.counts.sum()) >= _MAX_COUNT:
            raise ValueError(f"the merged counts would add up to more than the {_MAX_COUNT - 1} word occurrences a "
                             "table holds")
        return CountTable(*W.merge_sorted(self.blob, self.offsets, self.counts, other.blob, other.offsets, other.counts))

    def subtract(self, part: "CountTable") -> "CountTable":
        """These counts less those of ``part``, counts of some of the same text (words left at 0
        are dropped): what the rest of a corpus holds, without counting it again."""
        counts = np.array(self.counts)
        for word, count in part.items():
            at = self.find(word)
            if at < 0 or counts[at] < count:
                raise ValueError(f"cannot subtract counts that are not part of these: {word!r} occurs "
                                 f"{count} times there, {0 if at < 0 else int(counts[at])} here")
            counts[at] -= count
        kept = counts > 0
        lengths = np.diff(self.offsets)
        offsets = np.zeros(int(kept.sum()) + 1, np.int64)
        np.cumsum(lengths[kept], out=offsets[1:])
        return CountTable(self.blob[np.repeat(kept, lengths)], offsets, counts[kept])

    def items(self) -> Iterator[tuple[str, int]]:
        return zip(self.words(), self.counts.tolist())

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CountTable) and np.array_equal(self.counts, other.counts)
                and np.array_equal(self.offsets, other.offsets) and np.array_equal(self.blob, other.blob))

    def __reduce__(self):
        return (CountTable, (np.array(self.blob), np.array(self.offsets), np.array(self.counts)))


# ----------------------------------------------------------------------------------------------
# Raw byte-string tables, one per thread
# ----------------------------------------------------------------------------------------------


class _RawTables:
    """One Numba hash table of raw (undecoded, unnormalized) words per thread that counts.

    ``errors`` is how distinct raw words are decoded before normalization: "replace" for file
    bytes (as the reader of ``corpus.iter_documents`` does), "surrogatepass" for strings, which
    are encoded that way so that any ``str`` round-trips exactly."""

    def __init__(self, threads: int, errors: str):
        # Made on first use: many more threads than a small input keeps busy cost no memory.
        self.tables: list[list | None] = [None] * threads
        self.errors = errors
        self.totals = None
        # Tables no thread is counting into, the last returned handed out first, so that only as
        # many tables are made as chunks were ever counted at once.
        self.idle: queue.LifoQueue = queue.LifoQueue()
        for k in reversed(range(threads)):
            self.idle.put(k)

    def count(self, thread: int, buf: np.ndarray, start: int, end: int, prev: int) -> None:
        """Count buf[start:end] (word boundaries; ``prev`` the byte before, -1 if none)."""
        if end > start:
            table = self.tables[thread]
            if table is None:
                table = self.tables[thread] = list(W.new_table())
            table[0], table[1] = W.count_span(buf, start, end, prev, table[0], table[1], table[2])

    def count_any(self, buf: np.ndarray, start: int, end: int, prev: int) -> None:
        """``count`` into a table no other thread is counting into (there is one per thread)."""
        k = self.idle.get()
        try:
            self.count(k, buf, start, end, prev)
        finally:
            self.idle.put(k)

    def _sum(self, slot: int) -> int:
        if self.totals is not None:  # finished
            return int(self.totals[slot])
        return int(sum(table[2][slot] for table in self.tables if table is not None))

    @property
    def words(self) -> int:
        return self._sum(W.META_WORDS)

    @property
    def line_ends(self) -> int:
        """Line ends counted so far: "\\n", "\\r\\n" and a lone "\\r" each end one line."""
        return self._sum(W.META_LF) + self._sum(W.META_CR) - self._sum(W.META_CRLF)

    def finish(self, lowercase: bool, pool: ThreadPoolExecutor | None = None) -> CountTable:
        """Normalize every distinct raw word once and return the sorted table of normalized words.

        Each thread's table is split into its ASCII words, normalized in Numba and then sorted on
        a thread of ``pool``, and its other words; those of all tables are summed and normalized
        by ``reference.normalize_word`` here, while the threads sort, and merged in with the
        sorted tables."""
        made = [table for table in self.tables if table is not None]
        tables = [table for table in made if table[2][W.META_DISTINCT] > 0]
        self.totals = sum((table[2] for table in made), np.zeros(W.META_SIZE, np.int64))
        self.tables = []
        if not tables:
            return CountTable.empty()

        def sorted_merged(blob, starts, lengths, counts) -> CountTable:
            # Sorted, the words that normalize alike lie side by side: merged there.
            return CountTable(*W.sorted_table(blob, starts, lengths, counts))

        def split(table: list) -> tuple[Future | CountTable, list[tuple[bytes, int]]]:
            blob, starts, lengths, counts = W.table_strings(*table)
            table.clear()
            ascii_blob, ascii_starts, ascii_lengths, rows, others = W.normalize_ascii(
                blob, starts, lengths, lowercase, W.ASCII_STRIP)
            ascii_words = (ascii_blob, ascii_starts, ascii_lengths, np.ascontiguousarray(counts[rows]))
            sorting = pool.submit(sorted_merged, *ascii_words) if pool is not None else sorted_merged(*ascii_words)
            rest = [(blob[s: s + n].tobytes(), c) for s, n, c in
                    zip(starts[others].tolist(), lengths[others].tolist(), counts[others].tolist())]
            return sorting, rest

        parts = list(pool.map(split, tables)) if pool is not None and len(tables) > 1 else [split(t) for t in tables]
        raw: dict[bytes, int] = {}
        for _, rest in parts:
            for word, count in rest:
                raw[word] = raw.get(word, 0) + count
        normalize, errors = reference.normalize_word, self.errors
        keys = [normalize(word.decode("utf-8", errors), lowercase).encode("utf-8", "surrogatepass") for word in raw]
        lengths = np.fromiter(map(len, keys), np.int64, len(keys))
        starts = np.zeros(len(keys), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        result = sorted_merged(np.frombuffer(bytearray(b"".join(keys)), np.uint8),  # writable: one compiled kernel
                               starts, lengths, np.fromiter(raw.values(), np.int64, len(raw)))
        for sorting, _ in parts:
            if not isinstance(sorting, Future):
                result = result.merge(sorting)
        # Each sorted table merged in as soon as it is ready: the first while the others still sort.
        for sorting in as_completed([sorting for sorting, _ in parts if isinstance(sorting, Future)]):
            result = result.merge(sorting.result())
        return result


def _chunks(buf: np.ndarray, start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """Split buf[start:end] (whose ends are word boundaries) at word boundaries into ``parts``."""
    bounds = [start]
    for k in range(1, parts):
        nominal = start + (end - start) * k // parts
        if nominal <= bounds[-1]:
            continue
        cut = int(W.find_cut(buf, nominal, end, False))
        if cut < 0 or cut >= end:
            break
        if cut > bounds[-1]:
            bounds.append(cut)
    bounds.append(end)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


_NEW_BUFFER = object()


class _BlockReader:
    """A file's (decompressed) bytes [start, end) in blocks, read by a background thread into a
    few reused buffers (reading and gzip decompression release the GIL and overlap with counting;
    reused buffers spare the page faults of fresh allocations).

    Iterating yields (block, bytes of the file on disk it took, release): a block is a read-only
    memoryview, valid until ``release()`` hands its buffer back for another read. The reader
    waits for a free buffer, so at most ``buffers`` blocks exist at a time."""

    def __init__(self, path: Path, start: int, end: int | None, block_bytes: int, buffers: int = 3):
        if not is_gzip(path):  # no bigger buffers than the bytes to read
            try:
                block_bytes = max(1, min(block_bytes, (path.stat().st_size if end is None else end) - start + 1))
            except OSError:
                pass  # reported by open_binary
        self.path, self.start, self.end, self.block_bytes = path, start, end, block_bytes
        self.free: queue.Queue = queue.Queue()
        for _ in range(buffers):
            self.free.put(_NEW_BUFFER)  # allocated by the reader when first needed
        self.full: queue.Queue = queue.Queue()
        self.stop = threading.Event()

    def _read(self) -> None:
        done = object()
        try:
            with open_binary(self.path) as handle:
                raw = getattr(handle, "fileobj", None) or handle
                # A compressed file's bytes before the start are read by the seek: the bar counts them.
                position = raw.tell() if raw is not handle else None
                if self.start:
                    handle.seek(self.start)
                position = raw.tell() if position is None else position
                left = None if self.end is None else self.end - self.start
                while (left is None or left > 0) and not self.stop.is_set():
                    buffer = self.free.get()
                    if buffer is None:
                        return
                    if buffer is _NEW_BUFFER:  # uninitialized: its pages are touched by the read
                        buffer = np.empty(self.block_bytes, np.uint8)
                    view = memoryview(buffer)[: self.block_bytes if left is None else min(self.block_bytes, left)]
                    filled = 0
                    while filled < len(view):
                        try:
                            got = handle.readinto(view[filled:])
                        except (OSError, EOFError, zlib.error) as error:
                            raise CorpusError(f"{str(self.path)!r} cannot be read: {error}") from error
                        if not got:
                            break
                        filled += got
                    if not filled:
                        break
                    if left is not None:
                        left -= filled
                    now = raw.tell()
                    self.full.put((buffer, filled, now - position))
                    position = now
        except BaseException as error:  # raised in the consuming thread
            self.full.put(error)
        finally:
            self.full.put(done)

    def __iter__(self) -> Iterator[tuple[memoryview, int, Callable[[], None]]]:
        worker = threading.Thread(target=self._read, name="diffmask-reader", daemon=True)
        worker.start()
        try:
            while True:
                item = self.full.get()
                if isinstance(item, BaseException):
                    raise item
                if not isinstance(item, tuple):
                    return
                buffer, filled, taken = item
                yield memoryview(buffer)[:filled].toreadonly(), taken, functools.partial(self.free.put, buffer)
        finally:
            self.stop.set()
            self.free.put(None)
            worker.join()


#: A plain file this small is read whole, at once: a memory map or a reader thread costs more.
SMALL_FILE_BYTES = 1 << 16


def _small_file(path: Path, start: int, end: int | None) -> list | None:
    """A small plain file's bytes [start, end) as its one block (block, bytes, release), like
    ``_BlockReader``'s; None for a larger, compressed or special file."""
    if is_gzip(path):
        return None
    try:
        status = path.stat()
        size = status.st_size
        if not stat.S_ISREG(status.st_mode) or size > SMALL_FILE_BYTES:
            return None
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(size - start if end is None else max(0, min(end, size) - start))
    except OSError:
        return None  # named by the reader
    return [(memoryview(data), len(data), _nothing_to_release)]


def _nothing_to_release() -> None:
    """The release of a block that holds no reader's buffer."""


class _MappedBlocks:
    """A plain file's bytes [start, end) as blocks of a read-only memory map: no copies and no
    reader thread; the counting threads fault the pages in. At most ``in_flight`` blocks are
    handed out at a time, and ``release()`` drops a block's pages from this process's memory
    (they stay in the page cache), so resident memory does not grow with the file.

    Iterating yields (block, its length, release), like ``_BlockReader``. As with any memory map,
    a file truncated by another process while it is being counted ends the process (SIGBUS)."""

    def __init__(self, mapped: mmap.mmap, start: int, stop: int, block_bytes: int, in_flight: int = 3):
        self.mapped, self.start, self.stop, self.block_bytes = mapped, start, stop, block_bytes
        self.slots = threading.Semaphore(in_flight)

    @staticmethod
    def open(path: Path, start: int, end: int | None, block_bytes: int):
        """The blocks of a plain file through a memory map, or None where it cannot be mapped
        (compressed, empty or special files, or a file system that maps no files: some network
        and FUSE mounts); read them with ``_BlockReader`` then."""
        if is_gzip(path) or not path.is_file():
            return None
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                stop = size if end is None else min(end, size)
                if stop <= start:
                    return None
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        return _MappedBlocks(mapped, start, stop, block_bytes)

    def _release(self, mapped: mmap.mmap, position: int, length: int) -> None:
        page = mmap.PAGESIZE
        first = -(-position // page) * page
        last = (position + length) // page * page
        if last > first and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mapped.madvise(mmap.MADV_DONTNEED, first, last - first)
            except (OSError, ValueError):
                pass
        self.slots.release()

    def __iter__(self) -> Iterator[tuple[memoryview, int, Callable[[], None]]]:
        mapped = self.mapped
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            try:
                mapped.madvise(mmap.MADV_SEQUENTIAL)
            except OSError:
                pass  # advice only
        view = memoryview(mapped)
        position = self.start
        while position < self.stop:
            length = min(self.block_bytes, self.stop - position)
            self.slots.acquire()
            yield (view[position: position + length], length,
                   functools.partial(self._release, mapped, position, length))
            position += length


def _release_when_done(futures: list[Future], release: Callable[[], None]) -> None:
    """Call ``release`` once every future has finished (at once if there are none)."""
    if not futures:
        release()
        return
    remaining = [len(futures)]
    lock = threading.Lock()

    def finished(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            release()

    for future in futures:
        future.add_done_callback(finished)


def _known_length(source) -> int | None:
    """``len(source)``, or None where it has none (a streaming dataset)."""
    try:
        return len(source)
    except TypeError:
        return None


def check_block_bytes(block_bytes) -> int:
    """``block_bytes`` as an int from 1 to ``MAX_BLOCK_BYTES``, or an error naming it."""
    return whole_number(block_bytes, "block_bytes", most=MAX_BLOCK_BYTES, why=" (1 GiB; a few blocks are held at once)")


class _Counter:
    """Counts a corpus source by source into raw tables, then normalizes once."""

    def __init__(self, threads: int, block_bytes: int, progress: bool, total_bytes: int | None,
                 total_documents: int | None = None):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        check_block_bytes(block_bytes)
        self.threads = threads
        self.block_bytes = block_bytes
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="diffmask-count") if threads > 1 else None
        self.file_words = _RawTables(threads, "replace")
        self.string_words = _RawTables(threads, "surrogatepass")
        self.string_documents = 0
        self.final_lines = 0
        self._bar_counts_bytes = total_bytes is not None  # else documents, the unit of an iterable of texts
        if total_bytes is not None:
            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="counting words", disable=not progress)
        else:
            self.bar = tqdm(total=total_documents, unit=" docs", unit_scale=True, desc="counting words",
                            disable=not progress)

    def _bytes_read(self, count: int) -> None:
        """Advance a bar of bytes; a bar of documents advances when a file is done."""
        if self._bar_counts_bytes:
            self.bar.update(count)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.bar.close()

    @property
    def documents(self) -> int:
        """Lines of text files (line ends, plus last lines without one) and string documents."""
        return self.file_words.line_ends + self.final_lines + self.string_documents

    def _submit(self, tables: _RawTables, buf: np.ndarray, start: int, end: int, prev: int) -> list[Future]:
        """Count buf[start:end] (word boundaries; ``prev`` the byte before) in chunks: on the
        threads, returning their futures, or here and now with one thread. Several chunks per
        thread, taken in turn by whichever thread is free, keep the threads equally busy."""
        if end <= start:
            return []
        if end - start < MIN_CHUNK_BYTES:  # counted here: a thread's hand-off costs more (many small files)
            (tables.count_any if self.pool is not None else functools.partial(tables.count, 0))(buf, start, end, prev)
            return []
        parts = max(1, min(self.threads * CHUNKS_PER_THREAD, (end - start) // MIN_CHUNK_BYTES))
        chunks = _chunks(buf, start, end, parts)
        if self.pool is None:
            for a, b in chunks:
                tables.count(0, buf, a, b, int(buf[a - 1]) if a > start else prev)
            return []
        return [self.pool.submit(tables.count_any, buf, a, b, int(buf[a - 1]) if a > start else prev)
                for a, b in chunks]

    # -- text files ---------------------------------------------------------------------------

    def count_text_file(self, path: Path, start: int = 0, end: int | None = None, prev: int = -1,
                        at_end: bool = True) -> None:
        """Count the words and lines of a text file's bytes [start, end) (the whole file by
        default). ``start`` and ``end`` must be word boundaries, ``prev`` the byte before
        ``start``; ``at_end`` says whether ``end`` is the end of the file.

        Blocks are not waited for: while the threads count one, the next is cut up and handed
        out (a block's buffer goes back to the reader when its last chunk is counted)."""
        tables = self.file_words
        head = check_text_file(path)  # the file's head, also for a range further on
        warn_of_json_lines_read_as_text(path, head)
        if start == 0 and head.startswith(UTF8_BOM):  # a byte-order mark is not text
            start = len(UTF8_BOM)
            if not is_gzip(path):  # read past, all the same (a compressed file's reader counts it)
                self._bytes_read(start)
        carry: list[bytes] = []  # the start of a word that goes on in the next block
        carry_prev = prev  # the byte before the carry
        last = prev
        pending: collections.deque = collections.deque()
        try:
            if end is None and len(head) < BINARY_CHECK_BYTES:  # the head read is the whole file
                read = path.stat().st_size if is_gzip(path) else len(head) - start  # a BOM's bytes are counted
                blocks = [(memoryview(head)[start:], read, _nothing_to_release)]
            else:
                blocks = (_small_file(path, start, end) or _MappedBlocks.open(path, start, end, self.block_bytes)
                          or _BlockReader(path, start, end, self.block_bytes))
            for block, taken, release in blocks:
                buf = np.frombuffer(block, np.uint8)
                size = len(buf)
                if not size:
                    release()
                    self._bytes_read(taken)
                    continue
                futures: list[Future] = []
                cut = int(W.find_cut(buf, 0, size, False))
                if cut < 0:  # no word ends in this block
                    carry.append(block.tobytes())
                else:
                    head = b"".join(carry) + block[:cut].tobytes()
                    futures += self._submit(tables, np.frombuffer(head, np.uint8), 0, len(head), carry_prev)
                    tail = int(W.find_cut(buf, cut, size, True))
                    tail = cut if tail < 0 else tail
                    futures += self._submit(tables, buf, cut, tail, int(buf[cut - 1]))
                    carry = [block[tail:].tobytes()] if tail < size else []
                    carry_prev = int(buf[tail - 1])
                last = int(buf[-1])
                _release_when_done(futures, release)
                pending.extend(futures)
                while pending and pending[0].done():
                    pending.popleft().result()  # raises a counting error
                self._bytes_read(taken)
            if carry:
                rest = b"".join(carry)
                pending.extend(self._submit(tables, np.frombuffer(rest, np.uint8), 0, len(rest), carry_prev))
            while pending:
                pending.popleft().result()
        finally:
            wait(pending)
        if at_end and last not in (-1, 10, 13):
            self.final_lines += 1  # a last line without a line end

    # -- strings --------------------------------------------------------------------------------

    def count_strings(self, texts: list[str]) -> None:
        """Count a batch of documents given as strings, joined about ``STRING_BATCH_CHARS`` at a
        time: a dataset's batch of 1,000 books was joined and encoded whole, two more copies of it."""
        start, chars = 0, 0
        for end, text in enumerate(texts, 1):
            chars += len(text) + 1
            if chars >= STRING_BATCH_CHARS or end == len(texts):
                data = "\n".join(texts[start:end]).encode("utf-8", "surrogatepass")
                for future in self._submit(self.string_words, np.frombuffer(data, np.uint8), 0, len(data), -1):
                    future.result()
                start, chars = end, 0
        self.string_documents += len(texts)

    def count_iterable(self, items: Iterable, text_field: str | None) -> None:
        batch: list[str] = []
        chars = 0
        files = FilesReadOnce()
        for item in items:
            if type(item) is str or isinstance(item, str):
                batch.append(item)
                chars += len(item) + 1
                if chars >= STRING_BATCH_CHARS:
                    self.count_strings(batch)
                    self.bar.update(len(batch))
                    batch, chars = [], 0
                continue
            if isinstance(item, os.PathLike):
                self.count_strings(batch)
                self.bar.update(len(batch))
                batch, chars = [], 0
                for path in files.new_files(item, text_field):
                    before = self.documents
                    self.count_file(path, text_field)
                    self.bar.update(self.documents - before)
                continue
            raise CorpusError(f"corpus items must be strings, got {type(item).__name__}")
        self.count_strings(batch)
        self.bar.update(len(batch))

    # -- JSON lines -------------------------------------------------------------------------------

    def count_json_lines(self, path: Path, field: str, start: int = 0, end: int | None = None) -> None:
        """Count the text field of the records of a JSON-lines file's bytes [start, end), which
        must begin and end at line starts."""
        carry: list[bytes] = []  # a record that goes on in the next block, joined once its line ends
        line_number = 0
        batch: list[str] = []
        chars = 0
        check_text_file(path)  # the file's head, also for a range further on

        def parse(lines: list[bytes]) -> None:
            nonlocal line_number, chars
            for line in lines:
                line_number += 1
                try:
                    text = record_text(line, path, line_number, field)
                except CorpusError:
                    if start:  # name the line by its number in the whole file
                        record_text(line, path, line_number + _lines_before(path, start), field)
                    raise
                if text is not None:
                    batch.append(text)
                    chars += len(text) + 1

        for block, taken, release in _BlockReader(path, start, end, self.block_bytes):
            data = block.tobytes()
            release()
            self._bytes_read(taken)
            if b"\n" not in data:
                carry.append(data)
                continue
            lines = b"".join([*carry, data]).split(b"\n")
            carry = [lines.pop()]
            parse(lines)
            if chars >= STRING_BATCH_CHARS:
                self.count_strings(batch)
                batch, chars = [], 0
        rest = b"".join(carry)
        if rest:
            parse([rest])
        self.count_strings(batch)

    # -- dispatch ---------------------------------------------------------------------------------

    def count_file(self, path: Path, text_field: str | None) -> None:
        if is_json_lines(path, text_field):
            self.count_json_lines(path, text_field_name(text_field))
        else:
            self.count_text_file(path)

    def finish(self, lowercase: bool) -> CountTable:
        self.bar.set_postfix_str("normalizing", refresh=True)
        table = self.file_words.finish(lowercase, self.pool).merge(self.string_words.finish(lowercase, self.pool))
        return table

    @property
    def words(self) -> int:
        return self.file_words.words + self.string_words.words


def _lines_before(path: Path, offset: int) -> int:
    """Number of "\\n" bytes in a file before ``offset``."""
    count = 0
    with open_binary(path) as handle:
        while offset > 0:
            block = handle.read(min(offset, 1 << 24))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
    return count


def count_words(
    source: CorpusSource,
    lowercase: bool = True,
    progress: bool = True,
    *,
    threads: int | None = None,
    text_field: str | None = None,
    scheduler=None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    partition_bytes: int | None = None,
) -> "WordCounts":
    """Count normalized whitespace-separated words (README, "Choices") of every document in ``source``.

    ``source`` is a file, directory or glob (plain or ``.gz`` text, one document a line; JSON
    lines, one document a record), a list of ``pathlib.Path``, an iterable of strings (one
    document each; a list of strings that all name files is refused, not counted as names), or
    a HuggingFace ``datasets.Dataset`` or pandas ``DataFrame`` (one document a row).

    - ``threads``: counting threads, each with its own table (default: every available core;
      with a ``scheduler``, threads per Dask task, 1 by default).
    - ``text_field``: the field of JSON-lines records or dataset rows holding the text (default
      "text"). When given, every file is read as JSON lines and directories yield their
      ``.jsonl``/``.ndjson`` files; otherwise only files named so (or ``.json``) are read as JSON lines.
    - ``scheduler``: a ``distributed.Client`` or the address of a Dask scheduler: files are
      counted on its workers in byte ranges of ``partition_bytes`` (see ``dask_counting``). The
      workers must see the same paths.
    - ``block_bytes``: bytes read at a time (memory use is a few blocks plus the tables).

    Counts equal ``reference.count_words(corpus.iter_documents(source))`` exactly. Raises
    ``CorpusError`` for a missing path, a directory without text files, a binary file (a NUL
    byte in its first ``BINARY_CHECK_BYTES``; words holding one further on are warned of), a
    bad JSON-lines record, or a corpus with no documents or no words.
    """
    check_lowercase(lowercase)  # before the count, which can take hours
    if scheduler is not None:
        from .dask_counting import count_words_distributed

        return count_words_distributed(
            source, scheduler, lowercase=lowercase, progress=progress, text_field=text_field,
            partition_bytes=partition_bytes, threads=threads, block_bytes=block_bytes)
    if partition_bytes is not None:
        raise ValueError("partition_bytes sizes the byte ranges Dask workers count; without a scheduler it would do "
                         "nothing (block_bytes sizes the reads here)")
    if threads is None:
        threads = default_threads()
    else:
        threads = whole_number(threads, "threads", most=MAX_THREADS)
    source = dataset_view(source)
    dataset = is_dataset(source)
    if not dataset:
        check_iterable_corpus(source)
    files = None
    if isinstance(source, (str, os.PathLike)):
        files = corpus_files(source, text_field)
    elif isinstance(source, (list, tuple)) and source and all(isinstance(s, os.PathLike) for s in source):
        files = corpus_files(source, text_field)
    total_bytes = sum(p.stat().st_size for p in files) if files is not None else None
    texts_only = isinstance(source, (list, tuple)) and all(isinstance(item, str) for item in source)
    # Other sized sources of texts (pretrain's documents, read from their files) have a length too;
    # not collections, whose items may be files of many documents.
    sized = progress and files is None and isinstance(source, Sized) and not isinstance(source, Collection)
    rows = _known_length(source) if dataset or texts_only or sized else None  # the bar has an end
    counter = _Counter(threads, block_bytes, progress, total_bytes, rows)
    try:
        if files is not None:
            for path in files:
                counter.count_file(path, text_field)
        elif dataset:
            for batch in iter_dataset_batches(source, text_field):
                counter.count_strings(batch)
                counter.bar.update(len(batch))
        else:
            counter.count_iterable(source, text_field)
        return _result(counter.finish(lowercase), counter.documents, lowercase)
    finally:
        counter.close()


def _result(table: CountTable, documents: int, lowercase: bool) -> "WordCounts":
    if documents == 0:
        raise CorpusError("the corpus is empty: it has no documents")
    if not len(table):
        raise CorpusError(f"the corpus has no words: its {documents} document(s) are blank")
    _warn_of_nul_bytes(table)
    return WordCounts(table, documents, lowercase)


def _warn_of_nul_bytes(table: CountTable) -> None:
    """Warn where counted words hold NUL bytes, which text has not: binary data past the head of
    a file (``BINARY_CHECK_BYTES``, the part read for the binary check), or texts read wrongly.
    One pass over the distinct words' bytes, not the corpus's."""
    nul = table.blob == 0
    if not nul.any():
        return
    rows = np.flatnonzero(np.add.reduceat(nul, table.offsets[:-1]))  # words are never empty
    example = table.word(int(rows[0]))
    warnings.warn(f"{len(rows):,} distinct counted word(s) hold NUL bytes (e.g. {example[:40]!r}), which text has "
                  f"not: the corpus holds binary data (a file is checked for it in its first {BINARY_CHECK_BYTES:,} "
                  "bytes only, texts given as strings not at all)", DiffmaskWarning, stacklevel=3)


def merge_counts(parts: Iterable["WordCounts"]) -> "WordCounts":
    """Sum the counts of several corpora."""
    merged = None
    for part in parts:
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise ValueError("no word counts to merge")
    return merged


# ----------------------------------------------------------------------------------------------
# WordCounts
# ----------------------------------------------------------------------------------------------


def _check_counted_words(words: Iterable[str], lowercase: bool) -> None:
    """Refuse words that counting could not have produced (empty, holding whitespace, or not
    normalized): they would never meet a counted or looked-up word."""
    for word in words:
        if isinstance(word, str) and word.split() != [word]:
            raise ValueError(f"counted words are non-empty and hold no whitespace (words of str.split()), got {word!r}")
    found = first_unnormalized((word for word in words if isinstance(word, str)), lowercase)
    if found is not None:
        word, normalized = shown_apart(*found)
        reason = earlier_normalization(found[0], lowercase)
        earlier = f" (counts saved by an earlier version, which {reason}: count again)" if reason else ""
        raise ValueError(f"counted words are normalized (reference.normalize_word"
                         f"{'' if lowercase else ', lowercase=False'}): {word} is counted as {normalized}; "
                         f"count_words normalizes them{earlier}")


class WordCounts:
    """Normalized word counts of a corpus, with the number of documents they came from.

    Backed by a ``CountTable`` (words sorted by UTF-8 bytes), possibly mapped from a file by
    ``load``: ``total``, ``len``, ``counts[word]``, ``word in counts``, ``most_common(k)`` and
    ``at_least(n)`` never build a dict of every word. ``counts`` (a read-only mapping) does, on
    first use.
    """

    def __init__(self, counts: Mapping[str, int] | CountTable | None = None, documents: int = 0,
                 lowercase: bool = True, *, total: int | None = None):
        documents = whole_number(documents, "documents", least=0)
        check_lowercase(lowercase)
        if counts is None:
            table = CountTable.empty()
        elif isinstance(counts, WordCounts):  # a mapping too, but its table is already checked
            if bool(lowercase) != counts.lowercase:
                raise ValueError(f"counts made with lowercase={counts.lowercase} cannot be taken as "
                                 f"lowercase={lowercase}")
            table = counts.table
        elif isinstance(counts, CountTable):
            table = counts
        elif isinstance(counts, Mapping):
            _check_counted_words(counts, bool(lowercase))
            table = CountTable.from_mapping(counts)
        else:
            raise TypeError(f"counts must be a mapping or a CountTable, got {type(counts).__name__}")
        self.table = table
        self.documents = int(documents)
        self.lowercase = bool(lowercase)
        self._total = None if total is None else int(total)
        self._dict = None

    @classmethod
    def from_mapping(cls, counts: Mapping[str, int], documents: int = 0, lowercase: bool = True) -> "WordCounts":
        return cls(counts, documents, lowercase)

    @property
    def counts(self) -> Mapping[str, int]:
        """Every word and its count, as a read-only mapping (built on first use)."""
        if self._dict is None:
            self._dict = types.MappingProxyType(dict(self.table.items()))
        return self._dict

    @property
    def total(self) -> int:
        """N_T: the number of word occurrences."""
        if self._total is None:
            self._total = int(self.table.counts.sum(dtype=np.int64))
        return self._total

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, word: str) -> int:
        return self.get(word, 0)

    def __iter__(self) -> Iterator[str]:
        """The words, as a Counter's keys. Without it Python would iterate by indexing counts[0],
        counts[1], ... (each 0, an unknown word) and never stop."""
        return iter(self.table.words())

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self.table.find(word) >= 0

    # A mapping's views, so that Counter(counts), dict(counts) and code written for a Counter read
    # the counts (Counter() of the words alone counted each once).
    def keys(self) -> KeysView:
        return self.counts.keys()

    def items(self) -> ItemsView:
        return self.counts.items()

    def values(self) -> ValuesView:
        return self.counts.values()

    def get(self, word: str, default: int | None = None) -> int | None:
        row = self.table.find(word)
        return int(self.table.counts[row]) if row >= 0 else default

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WordCounts):
            return NotImplemented
        return (self.documents == other.documents and self.lowercase == other.lowercase
                and self.table == other.table)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_dict"] = None
        return state

    def __repr__(self) -> str:
        return (f"WordCounts({len(self):,} words, total={self.total:,}, documents={self.documents:,}, "
                f"lowercase={self.lowercase})")

    def most_common(self, n: int | None = None) -> list[tuple[str, int]]:
        """Words by count, ties broken by word so the order is deterministic."""
        counts = self.table.counts
        if n is not None:
            n = whole_number(n, "n", 0)
        if n is None or n >= len(counts):
            rows = np.argsort(-counts, kind="stable")
        elif n == 0:
            return []
        else:
            threshold = np.partition(counts, len(counts) - n)[len(counts) - n]
            candidates = np.flatnonzero(counts >= threshold)
            rows = candidates[np.argsort(-counts[candidates], kind="stable")][:n]
        return list(zip(self.table.words(rows), counts[rows].tolist()))

    def at_least(self, min_count: int) -> list[tuple[str, int]]:
        """(word, count) of every word with at least ``min_count`` occurrences, in word order."""
        rows = np.flatnonzero(self.table.counts >= whole_number(min_count, "min_count", 0))
        return list(zip(self.table.words(rows), self.table.counts[rows].tolist()))

    def merge(self, other: "WordCounts") -> "WordCounts":
        if not isinstance(other, WordCounts):
            raise TypeError(f"can merge only WordCounts, got {type(other).__name__}")
        if other.lowercase != self.lowercase:
            raise ValueError("cannot merge counts made with different lowercasing")
        return WordCounts(self.table.merge(other.table), self.documents + other.documents, self.lowercase)

    def subtract(self, part: "WordCounts") -> "WordCounts":
        """The counts of a corpus without some of its documents, given their counts (``part``):
        the rest is counted by the fast reader of whole files, the few left out as strings."""
        if not isinstance(part, WordCounts):
            raise TypeError(f"can subtract only WordCounts, got {type(part).__name__}")
        if part.lowercase != self.lowercase:
            raise ValueError("cannot subtract counts made with different lowercasing")
        if part.documents > self.documents:
            raise ValueError(f"cannot subtract the counts of {part.documents} documents from those of "
                             f"{self.documents}")
        return WordCounts(self.table.subtract(part.table), self.documents - part.documents, self.lowercase)

    # -- files --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, format: str | None = None) -> None:
        """Write the counts: ``format`` "binary" (compact, loaded lazily; the default) or "json"
        (readable; the default when ``path`` ends in ``.json``). Written atomically."""
        if format is None:
            format = "json" if os.fspath(path).lower().endswith(".json") else "binary"
        if format == "json":
            try:
                atomic_write_json(path, {"format": COUNTS_FORMAT, "documents": self.documents,
                                         "lowercase": self.lowercase, "counts": dict(self.most_common())})
            except ValueError as error:  # a word JSON would read back as another
                raise ValueError(f"{error}; the binary format keeps every word as counted") from None
        elif format == "binary":
            _write_binary(path, self)
        else:
            raise ValueError(f"unknown counts format {format!r}; expected 'binary' or 'json'")

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = False) -> "WordCounts":
        """Read counts written by ``save``. The binary format is mapped into memory: its header's
        checksum is checked, its offsets and counts in one pass, its words are not read; ``verify``
        also checks the data's checksum, the total and the words' order (reading it all)."""
        path = Path(path)
        check_input_file(path, "word counts")
        with open(path, "rb") as handle:  # JSON may open with a byte-order mark and whitespace
            start = handle.read(len(BINARY_MAGIC) + JSON_OPENING_BYTES)
        if start[:len(BINARY_MAGIC)] == BINARY_MAGIC:
            return _read_binary(path, verify)
        if start.removeprefix(codecs.BOM_UTF8).lstrip()[:1] != b"{":
            raise ValueError(f"{str(path)!r} is not a word-counts file (neither the binary nor the JSON format)")
        from ._io import read_json

        payload = read_json(path, "word counts")
        if not isinstance(payload, dict) or payload.get("format") != COUNTS_FORMAT:
            raise ValueError(f"{str(path)!r} is not a word-counts file (expected format {COUNTS_FORMAT})")
        try:
            counts, documents, lowercase = payload["counts"], payload["documents"], payload["lowercase"]
            if not isinstance(counts, dict) or not isinstance(documents, int) or not isinstance(lowercase, bool):
                raise TypeError("'counts' must be an object, 'documents' an integer and 'lowercase' true or false")
            if any(type(count) is not int for count in counts.values()):
                raise TypeError("every count must be an integer")
            return cls.from_mapping(counts, documents, lowercase)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{str(path)!r} is not a valid word-counts file: {error}") from None


# A mapping as Counter is one (a missing word counts 0), not a subclass: its table is no dict.
collections.abc.Mapping.register(WordCounts)


# ----------------------------------------------------------------------------------------------
# Binary format
#
#   offset 0   b"DMWCOUNT", uint32 version, uint32 0, uint64 header length H (little-endian)
#   24         header: UTF-8 JSON, space-padded to a multiple of 8 bytes: format, documents,
#              lowercase, total, words (n), blob_bytes (B), crc32 of the data below, and
#              header_crc32 of the other fields (``_header_checksum``; files of earlier versions lack it)
#   24 + H     offsets: n + 1 little-endian int64;  counts: n int64;  blob: B bytes
#              (words sorted by UTF-8 bytes; word i is blob[offsets[i]:offsets[i + 1]])
# ----------------------------------------------------------------------------------------------


def _little(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.dtype("<i8"))


def _write_binary(path: str | os.PathLike, counts: WordCounts) -> None:
    table = counts.table
    parts = [_little(table.offsets), _little(table.counts), np.ascontiguousarray(table.blob)]
    crc = 0
    for part in parts:
        crc = zlib.crc32(memoryview(part).cast("B"), crc)
    fields = {
        "format": COUNTS_FORMAT, "documents": counts.documents, "lowercase": counts.lowercase,
        "total": counts.total, "words": len(table), "blob_bytes": int(table.blob.shape[0]), "crc32": crc,
    }
    header = json.dumps({**fields, "header_crc32": _header_checksum(fields)}).encode("utf-8")
    header += b" " * (-len(header) % 8)
    with atomic_writer(path) as file:
        file.write(_PREAMBLE.pack(BINARY_MAGIC, BINARY_VERSION, 0, len(header)))
        file.write(header)
        for part in parts:
            file.write(memoryview(part).cast("B"))


def _header_checksum(fields: dict) -> int:
    """The CRC-32 of the header's fields but itself, in one spelling: the data's checksum does
    not cover the header, whose number of documents no other check would catch changed."""
    fields = {name: value for name, value in fields.items() if name != "header_crc32"}
    return zlib.crc32(json.dumps(fields, sort_keys=True).encode("utf-8"))


#: The binary header's fields: those that are counts, and those that are true or false.
_HEADER_COUNTS = ("documents", "total", "words", "blob_bytes", "crc32")
_HEADER_FLAGS = ("lowercase",)


def _check_binary_header(header: object, name: str) -> None:
    """Refuse a header whose fields are missing or of the wrong kind (a damaged or hand-edited
    file), naming the file and the field, before any of it is used."""
    if not isinstance(header, dict):
        raise ValueError(f"{name!r} is corrupt: its header is not a JSON object")
    for field in _HEADER_COUNTS + _HEADER_FLAGS:
        if field not in header:
            raise ValueError(f"{name!r} is corrupt: its header lacks {field!r}")
    for field in _HEADER_COUNTS + (("header_crc32",) if "header_crc32" in header else ()):
        value = header[field]
        if type(value) is not int or value < 0:
            raise ValueError(f"{name!r} is corrupt: its header's {field!r} must be a non-negative integer, "
                             f"got {value!r}")
    for field in _HEADER_FLAGS:
        if type(header[field]) is not bool:
            raise ValueError(f"{name!r} is corrupt: its header's {field!r} must be true or false, "
                             f"got {header[field]!r}")


def _read_binary(path: Path, verify: bool) -> WordCounts:
    name = str(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size  # of the file opened, should another replace it meanwhile
        preamble = handle.read(_PREAMBLE.size)
        if len(preamble) < _PREAMBLE.size:
            raise ValueError(f"{name!r} is truncated: {size} bytes, too short for a word-counts file")
        magic, version, _, header_length = _PREAMBLE.unpack(preamble)
        if version != BINARY_VERSION:
            raise ValueError(f"{name!r} is word counts format version {version}; this diffmask_fast reads version {BINARY_VERSION}")
        if header_length > size - _PREAMBLE.size:
            raise ValueError(f"{name!r} is truncated or corrupt: its header length ({header_length:,} bytes) "
                             f"exceeds the file")
        header_bytes = handle.read(header_length)
        try:
            if len(header_bytes) < header_length:
                raise ValueError("short header")
            header = json.loads(header_bytes.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{name!r} is truncated or corrupt: its header cannot be read") from None
        _check_binary_header(header, name)
        if "header_crc32" in header and _header_checksum(header) != header["header_crc32"]:  # costs nothing
            raise ValueError(f"{name!r} is corrupt: its header's checksum does not match its fields")
        words, blob_bytes = header["words"], header["blob_bytes"]
        data = _PREAMBLE.size + header_length
        expected = data + 8 * (2 * words + 1) + blob_bytes
        if size != expected:
            raise ValueError(f"{name!r} is truncated or corrupt: {size:,} bytes where its header "
                             f"announces {expected:,}")
        try:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file system that maps no files: read it whole
            handle.seek(0)
            mapped = handle.read()
    offsets = np.frombuffer(mapped, np.dtype("<i8"), words + 1, data)
    counts = np.frombuffer(mapped, np.dtype("<i8"), words, data + 8 * (words + 1))
    blob = np.frombuffer(mapped, np.uint8, blob_bytes, data + 8 * (2 * words + 1))
    if offsets[0] != 0 or offsets[-1] != blob_bytes:
        raise ValueError(f"{name!r} is corrupt: its word offsets do not span its word bytes")
    bad_row = W.first_inconsistent_row(offsets, counts, blob_bytes)
    if bad_row >= 0:
        raise ValueError(f"{name!r} is corrupt: word {bad_row:,} has offsets {int(offsets[bad_row]):,}.."
                         f"{int(offsets[bad_row + 1]):,} in {blob_bytes:,} word bytes and count "
                         f"{int(counts[bad_row]):,} (offsets must increase, counts be positive)")
    if verify:
        crc = zlib.crc32(memoryview(mapped)[data:], 0)
        if crc != header.get("crc32"):
            raise ValueError(f"{name!r} is corrupt: checksum mismatch")
        if int(counts.sum()) != header.get("total"):
            raise ValueError(f"{name!r} is corrupt: its counts sum to {int(counts.sum()):,}, its header "
                             f"says {header['total']:,}")
        unsorted = W.first_unsorted_row(blob, offsets)
        if unsorted >= 0:
            raise ValueError(f"{name!r} is corrupt: word {unsorted:,} does not sort after word {unsorted - 1:,} "
                             "(words are stored sorted and distinct, and looked up by bisection)")
    table = CountTable.__new__(CountTable)
    table.blob, table.offsets, table.counts, table.source = blob, offsets, counts, name
    if offsets.dtype.byteorder not in ("<", "=", "|") or np.dtype("<i8") != np.dtype(np.int64):
        table = CountTable(blob, offsets.astype(np.int64), counts.astype(np.int64), name)
    return WordCounts(table, header["documents"], header["lowercase"], total=header["total"])
