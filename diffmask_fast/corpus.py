"""Reading a corpus: text files (plain or gzip), directories, globs, or strings, one document a line."""

from __future__ import annotations

import glob
import gzip
import io
import os
from pathlib import Path
from typing import Iterable, Iterator, Union

CorpusSource = Union[str, os.PathLike, Iterable[str]]

#: File name endings read when a directory is given.
TEXT_SUFFIXES = (".txt", ".txt.gz", ".text", ".text.gz")


class CorpusError(ValueError):
    """A corpus that cannot be read as text: a missing path, no text files, binary data."""


def _expand_path(pattern: str) -> list[Path]:
    """Files named by a path, a directory (its text files, recursively) or a glob pattern."""
    if any(ch in pattern for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise CorpusError(f"no files match the pattern {pattern!r}")
        return files
    path = Path(pattern)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
        if not files:
            raise CorpusError(f"directory {str(path)!r} holds no text files (looked for {', '.join(TEXT_SUFFIXES)})")
        return files
    if not path.exists():
        raise CorpusError(f"corpus path {str(path)!r} does not exist")
    return [path]


def corpus_files(source: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]) -> list[Path]:
    """Every file of a corpus given as one path/pattern or a list of them."""
    if isinstance(source, (str, os.PathLike)):
        return _expand_path(os.fspath(source))
    files: list[Path] = []
    for item in source:
        files.extend(_expand_path(os.fspath(item)))
    return files


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    head = raw.peek(8192)[:8192] if hasattr(raw, "peek") else b""
    if b"\x00" in head:
        raw.close()
        raise CorpusError(f"{str(path)!r} looks like a binary file (it contains NUL bytes), not text")
    # Invalid UTF-8 bytes become U+FFFD rather than aborting a long count.
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)


def iter_file_lines(path: Path) -> Iterator[str]:
    """Lines of one text file, without line ends."""
    with _open_text(path) as handle:
        for line in handle:
            yield line.rstrip("\n")


def iter_documents(source: CorpusSource) -> Iterator[str]:
    """Documents of a corpus: lines of its files, or the strings themselves.

    A ``str`` is a path or pattern; an iterable holds literal strings or ``pathlib.Path``s.
    """
    if isinstance(source, (str, os.PathLike)):
        for path in corpus_files(source):
            yield from iter_file_lines(path)
        return
    for item in source:
        if isinstance(item, os.PathLike):
            for path in corpus_files(item):
                yield from iter_file_lines(path)
            continue
        if not isinstance(item, str):
            raise CorpusError(f"corpus items must be strings, got {type(item).__name__}")
        yield item


def corpus_size_bytes(source: CorpusSource) -> int | None:
    """Total size of a file corpus, for progress bars; None for an iterable of strings."""
    if isinstance(source, (str, os.PathLike)):
        return sum(p.stat().st_size for p in corpus_files(source))
    return None
