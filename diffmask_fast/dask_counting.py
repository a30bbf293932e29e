"""Word counting on a Dask cluster, for corpora beyond one machine.

Files are cut into byte ranges of about ``partition_bytes``; each range is moved forward to the
next word boundary (text) or line start (JSON lines), a rule that depends only on the bytes just
before the nominal cut, so neighbouring ranges agree without talking to each other. A gzip file
cannot be entered in the middle and is one range. Every range is counted on a worker by the same
Numba kernel as on one machine (``counting._Counter``) and normalized there; the partial tables,
sorted by word, are merged by a tree reduction (``split_every`` tables per merge) and only the
final table travels to the client. Counts are exactly those of a single process: the same
words, and documents counted per range (line ends, plus a last line without one in the range
that ends the file).

Workers must see the corpus at the same paths as the client (a shared or replicated file system).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from . import _wordtable as W
from ._checks import check_lowercase, whole_number
from .corpus import (CorpusError, corpus_files, is_data_frame, is_dataset, is_gzip, is_json_lines, open_binary,
                     text_field_name)
from .counting import DEFAULT_BLOCK_BYTES, CountTable, WordCounts, _Counter, _result, check_block_bytes

#: Nominal bytes of one range of a file counted by one task.
DEFAULT_PARTITION_BYTES = 64 << 20
#: Partial tables merged by one task of the tree reduction.
DEFAULT_SPLIT_EVERY = 8
_WINDOW = 1 << 16


@dataclass(frozen=True)
class Partition:
    """A nominal byte range [start, end) of one file, and how to read it."""

    path: str
    start: int
    end: int
    size: int
    json_lines: bool
    field: str | None


@dataclass
class PartialCounts:
    """Normalized counts of some ranges: a sorted table, documents and bytes read."""

    table: CountTable
    documents: int
    bytes: int


def plan_partitions(files: Iterable[Path], text_field: str | None = None,
                    partition_bytes: int = DEFAULT_PARTITION_BYTES) -> list[Partition]:
    """Nominal ranges of about ``partition_bytes`` covering every file (a gzip file is one)."""
    partition_bytes = whole_number(partition_bytes, "partition_bytes")
    parts = []
    for path in files:
        path = Path(os.path.abspath(path))  # a worker may run in another directory
        size = path.stat().st_size
        json_lines = is_json_lines(path, text_field)
        field = text_field_name(text_field) if json_lines else None
        if is_gzip(path) or size <= partition_bytes:
            parts.append(Partition(str(path), 0, size, size, json_lines, field))
            continue
        count = -(-size // partition_bytes)
        bounds = [size * k // count for k in range(count + 1)]
        parts.extend(Partition(str(path), a, b, size, json_lines, field) for a, b in zip(bounds, bounds[1:]))
    return parts


def _paths_only(source: Iterable) -> list:
    """The items of ``source``, refused at the first that is no path: an iterable of texts is
    not read whole (into memory, or forever) before it is refused."""
    items = []
    for item in source:
        if not isinstance(item, os.PathLike):
            raise CorpusError("distributed counting reads files: give paths (pathlib.Path), not strings of text")
        items.append(item)
    return items


def range_start(path: str | os.PathLike, nominal: int, size: int, json_lines: bool) -> int:
    """Where a range nominally starting at ``nominal`` really starts: the first word boundary
    (or line start, for JSON lines) at or after it; 0 and ``size`` are boundaries."""
    if nominal <= 0:
        return 0
    if nominal >= size:
        return size
    position = max(0, nominal - 3)  # is_cut looks at the three bytes before a position
    with open_binary(Path(path)) as handle:
        while position < size:
            handle.seek(position)
            data = handle.read(_WINDOW)
            if not data:
                break
            found = int(W.next_cut(np.frombuffer(data, np.uint8), max(nominal - position, 0), json_lines))
            if found >= 0:
                return position + found
            if position + len(data) >= size or len(data) <= 3:  # the end, or a file shorter than planned
                break
            position += len(data) - 3
    return size


def count_partition(part: Partition, lowercase: bool = True, threads: int = 1,
                    block_bytes: int = DEFAULT_BLOCK_BYTES) -> PartialCounts:
    """Count one range on a worker: the same reader and kernel as ``count_words``. A file whose
    size changed since the ranges were planned is refused: its ranges no longer cover it."""
    path = Path(part.path)
    size = path.stat().st_size if path.exists() else part.size  # a missing file is named by the reader
    if size != part.size:
        raise CorpusError(f"{str(path)!r} changed while it was being counted ({part.size} bytes when the ranges "
                          f"were planned, {size} now); count it again once it is complete")
    if is_gzip(path):
        start, end = 0, None
    else:
        start = range_start(path, part.start, part.size, part.json_lines)
        end = range_start(path, part.end, part.size, part.json_lines)
        if end <= start:
            return PartialCounts(CountTable.empty(), 0, 0)
    counter = _Counter(threads, block_bytes, progress=False, total_bytes=None)
    try:
        if part.json_lines:
            counter.count_json_lines(path, part.field, start, end)
        elif start == 0:
            counter.count_text_file(path, 0, end, at_end=end is None or end >= part.size)
        else:
            with open_binary(path) as handle:
                handle.seek(start - 1)
                prev = handle.read(1)[0]
            counter.count_text_file(path, start, end, prev, at_end=end >= part.size)
        table = counter.finish(lowercase)
    finally:
        counter.close()
    read = part.size if end is None else end - start
    return PartialCounts(table, counter.documents, read)


def merge_partials(*parts: PartialCounts) -> PartialCounts:
    """Sum partial counts (one step of the tree reduction), merging tables pairwise."""
    tables = [p.table for p in parts]
    while len(tables) > 1:
        tables = [tables[i].merge(tables[i + 1]) if i + 1 < len(tables) else tables[i]
                  for i in range(0, len(tables), 2)]
    return PartialCounts(tables[0] if tables else CountTable.empty(),
                         sum(p.documents for p in parts), sum(p.bytes for p in parts))


#: ``dask.compute``'s local schedulers, which people pass as ``scheduler`` out of habit: as an
#: address, Client would try to reach a host of that name.
LOCAL_DASK_SCHEDULERS = frozenset({"sync", "synchronous", "single-threaded", "threads", "threading", "processes",
                                   "multiprocessing"})


def _check_scheduler(scheduler) -> None:
    """Refuse a local Dask scheduler's name before any work: counting without a scheduler is
    this machine's parallel count already."""
    if isinstance(scheduler, str) and scheduler.strip().lower() in LOCAL_DASK_SCHEDULERS:
        raise ValueError(f"the scheduler {scheduler!r} names one of dask.compute's local schedulers, but counting on "
                         "Dask takes a cluster: a distributed.Client, or a scheduler's address such as "
                         "'tcp://host:8786'. To count on this machine give no scheduler (threads, --threads on the "
                         "command line, sets the counting threads)")


def _client(scheduler):
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str):
        return Client(scheduler), True
    raise TypeError(f"scheduler must be a distributed.Client or a scheduler address, got {type(scheduler).__name__}")


def _follow(futures, bar: tqdm, amount) -> None:
    """Advance ``bar`` by ``amount(future)`` as each of ``futures`` (an ``as_completed``)
    finishes, raising the first task error."""
    with bar:
        for future in futures:
            if future.status == "error":
                future.result()  # raises the task's error
            bar.update(amount(future))
            del future  # the last result is not held here


def count_words_distributed(
    source,
    scheduler,
    lowercase: bool = True,
    progress: bool = True,
    text_field: str | None = None,
    partition_bytes: int | None = None,
    threads: int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    split_every: int = DEFAULT_SPLIT_EVERY,
) -> WordCounts:
    """``count_words`` on a Dask cluster (``scheduler``: a ``distributed.Client`` or an address).

    ``source`` must name files (a path, directory, glob, or a list of them); ``threads`` is the
    counting threads per task (default 1: Dask runs tasks side by side)."""
    check_lowercase(lowercase)
    _check_scheduler(scheduler)
    split_every = whole_number(split_every, "split_every", least=2)  # before any file is read
    threads = 1 if threads is None else whole_number(threads, "threads")
    block_bytes = check_block_bytes(block_bytes)
    partition_bytes = DEFAULT_PARTITION_BYTES if partition_bytes is None else whole_number(partition_bytes,
                                                                                           "partition_bytes")
    if isinstance(source, (str, os.PathLike)):
        files = corpus_files(source, text_field)
    elif is_dataset(source) or is_data_frame(source):
        raise CorpusError("distributed counting reads files; count a dataset without a scheduler, "
                          "or save it as JSON lines where the workers can read it")
    else:
        files = corpus_files(_paths_only(source), text_field)
    parts = plan_partitions(files, text_field, partition_bytes)
    if not parts:  # no files, or only empty ones: the same error as counting locally
        return _result(CountTable.empty(), 0, lowercase)
    client, owned = _client(scheduler)
    keys: list = []  # of every task, to cancel them by: futures held here would hold their tables
    try:
        from distributed import as_completed

        level = client.map(count_partition, parts, lowercase=lowercase, threads=threads,
                           block_bytes=block_bytes, pure=False)
        keys += [future.key for future in level]
        sizes = {future.key: part.end - part.start for future, part in zip(level, parts)}
        counted = as_completed(level)
        merges = []
        while len(level) > 1:  # submitted at once: merges start as soon as their inputs exist
            level = [client.submit(merge_partials, *level[i: i + split_every], pure=False)
                     for i in range(0, len(level), split_every)]
            merges += level
            keys += [future.key for future in level]
        merged = as_completed(merges)
        del merges  # a merged table is freed on the cluster once the bar has seen it
        _follow(counted, tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="counting words (dask)",
                              disable=not progress), lambda future: sizes.pop(future.key, 0))
        _follow(merged, tqdm(total=merged.count(), unit=" tables", desc="merging counts (dask)",
                             disable=not progress or not merged.count()), lambda future: 1)
        result = level[0].result()
    except BaseException:
        # A task's error, or Ctrl-C: the tasks left would go on counting and merging on the
        # user's cluster, and hold their tables there, as long as the traceback keeps this frame.
        if not owned:
            from distributed import Future

            client.cancel([Future(key, client) for key in keys])
        raise
    finally:
        if owned:
            client.close()
    return _result(result.table, result.documents, lowercase)
