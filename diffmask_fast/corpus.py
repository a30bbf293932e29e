"""Reading a corpus: text files (plain or gzip), JSON lines, directories, globs, strings or a
HuggingFace ``datasets.Dataset`` (or a pandas ``DataFrame``, read alike).

A document is a line of a text file (``\\n``, ``\\r\\n`` and a lone ``\\r`` end a line; invalid UTF-8
bytes become U+FFFD; a UTF-8 byte-order mark opening the file is not text), one record of a
JSON-lines file (its ``text_field``), one string of an iterable, or one row of a dataset.
``iter_documents`` yields them one by one and is the plain definition ``count_words`` is tested
against; ``count_words`` reads the same sources in blocks.

A directory gives its text files (``TEXT_SUFFIXES``: .txt, .text, gzipped or not; JSON lines when a
``text_field`` is given) at any depth, through links to folders too, leaving hidden files and
folders (``.git``, ``.ipynb_checkpoints``) out and warning of the other files it skips; the folders
a glob matches give theirs alike. A file named twice, or reached again through a link, is read
once. Pipes and devices (``<(cmd)``, ``/dev/stdin``) are refused: a corpus file is read more than
once.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import gzip
import io
import itertools
import json
import os
import re
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

from ._io import WORD_COUNTS_MAGIC, special_file_kind
from .advice import DiffmaskWarning

CorpusSource = Union[str, os.PathLike, Iterable[str], Any]

#: File name endings read from a directory of text files.
TEXT_SUFFIXES = (".txt", ".txt.gz", ".text", ".text.gz")
#: File name endings of JSON lines: the files read from a directory when a ``text_field`` is given.
DIRECTORY_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
#: File name endings read as JSON lines wherever a file is named (directly or by a glob). ``.json``
#: is among them because ``datasets.Dataset.to_json`` and pandas' ``to_json(lines=True)`` write
#: JSON lines under it; a directory scan leaves ``.json`` files out, as they are as often single
#: documents (saved anchors, a dataset's ``dataset_info.json``).
JSONL_SUFFIXES = (*DIRECTORY_JSONL_SUFFIXES, ".json", ".json.gz")
#: Field of a JSON-lines record or dataset row that holds the text, unless told otherwise.
DEFAULT_TEXT_FIELD = "text"
#: Bytes at the start of a file checked for NUL bytes (the mark of a binary file).
BINARY_CHECK_BYTES = 8192
#: The UTF-8 byte-order mark some editors write at the start of a file: not part of its text.
UTF8_BOM = b"\xef\xbb\xbf"


class CorpusError(ValueError):
    """A corpus that cannot be read as text: a missing path, no text files, binary data, a
    JSON-lines record that is not JSON or lacks the text field."""


def _expand_path(pattern: str, suffixes: tuple[str, ...] = TEXT_SUFFIXES) -> list[Path]:
    """Files named by a path, a directory (its files with ``suffixes``, recursively) or a glob.

    A name that exists is taken as it is, even if it holds glob characters (``notes[2023].txt``)."""
    if not str(pattern).strip():  # Path("") is the current folder: an unset variable counted it all
        raise CorpusError(f"a corpus path is empty ({str(pattern)!r}); name a file, folder or glob")
    if any(ch in pattern for ch in "*?[") and not os.path.exists(pattern):
        return _glob_files(pattern, suffixes)
    path = Path(pattern)
    try:
        path.is_dir()
    except PermissionError as error:  # a folder on the way that may not be searched
        raise CorpusError(f"cannot read corpus path {str(path)!r}: {error.strerror or error}") from None
    except OSError as error:  # a name too long for a path: text given where a path goes?
        shown = f"{pattern[:60]!r}..." if len(pattern) > 60 else repr(pattern)
        raise CorpusError(f"corpus path {shown} cannot be a file ({error.strerror}); a string is read as a "
                          "path: give texts as a list of strings") from None
    if path.is_dir():
        return _directory_files(path, suffixes)
    if not path.exists():
        raise CorpusError(f"corpus path {str(path)!r} does not exist"
                          f"{' (it is a link to nothing)' if path.is_symlink() else ''}")
    refuse_special_file(path)
    return [path]


def refuse_special_file(path: Path) -> None:
    """Raise CorpusError for a pipe, socket or device (``<(command)``, ``/dev/stdin``): its bytes
    can be read only once, from the start, while a corpus file is checked before it is read and
    split into ranges. Decided by ``os.stat``: opening a pipe would wait for a writer."""
    kind = special_file_kind(path)
    if kind is None:
        return
    raise CorpusError(f"corpus path {str(path)!r} is {kind}, which cannot be split or read twice; write it to a "
                      "file first, or pass its lines in Python as an iterable of strings")


@dataclasses.dataclass
class _FolderScan:
    """What walking folders found: the files to read, the other visible files, links to nothing."""

    files: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    broken: list[Path] = dataclasses.field(default_factory=list)


def _first_visit(folder: str, visited: set[tuple[int, int]]) -> bool:
    """Whether ``folder`` is seen for the first time (by device and inode): a link back to a folder
    above would otherwise be walked forever, and one to a folder seen before read it twice."""
    try:
        status = os.stat(folder)
    except OSError:
        return False
    key = (status.st_dev, status.st_ino)
    if key in visited:
        return False
    visited.add(key)
    return True


def _leads_above(folder: str, top: str) -> bool:
    """Whether ``folder`` is a link to ``top`` or to a folder holding it ("up -> ../.."): walking
    it would read what lies around the corpus (a link to ~ or / the whole tree)."""
    if not os.path.islink(folder):
        return False
    target = os.path.realpath(folder)
    return top == target or top.startswith(target.rstrip(os.sep) + os.sep)


def _unreadable_folder(error: OSError) -> None:
    """``os.walk`` passes over a folder it cannot list; a corpus missing it would be counted, and
    trained on, without a word."""
    raise CorpusError(f"cannot read the folder {error.filename!r} ({error.strerror or error}); make it readable, "
                      f"or name the folders to read") from error


def _walk(top: str | Path, visited: set[tuple[int, int]]) -> Iterator[tuple[str, list[str]]]:
    """Each folder under ``top`` (``top`` first) once, with the names of what is not a folder in
    it: links to folders are followed, but not to ``top`` or the folders above it. Hidden folders
    (a name starting with ".": ``.git``, ``.ipynb_checkpoints``) are no corpus and pass silently. A
    folder that cannot be listed is refused."""
    if not _first_visit(os.fspath(top), visited):
        return
    real_top = os.path.realpath(top)
    for root, folders, names in os.walk(top, onerror=_unreadable_folder, followlinks=True):
        folders[:] = sorted(name for name in folders
                            if not name.startswith(".") and not _leads_above(os.path.join(root, name), real_top)
                            and _first_visit(os.path.join(root, name), visited))
        yield root, names


def _scan_folder(top: Path, suffixes: tuple[str, ...], scan: _FolderScan, visited: set[tuple[int, int]]) -> None:
    """Add the files under ``top`` to ``scan`` (``_walk``). Hidden files pass silently; pipes,
    sockets and devices are skipped like files of other kinds."""
    for root, names in _walk(top, visited):
        for name in names:
            if name.startswith("."):
                continue
            path = Path(root, name)
            if path.is_file():
                (scan.files if name.lower().endswith(suffixes) else scan.skipped).append(path)
            elif path.is_symlink() and not path.exists():
                scan.broken.append(path)
            else:
                scan.skipped.append(path)


def _directory_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files with ``suffixes`` under ``folder``, sorted; warns of the files it leaves out."""
    scan = _FolderScan()
    _scan_folder(folder, suffixes, scan, set())
    if not scan.files:
        raise CorpusError(f"directory {str(folder)!r} holds no text files (looked for {', '.join(suffixes)})"
                          + (_jsonl_hint(scan.skipped, suffixes) or _json_hint(scan.skipped)))
    _warn_skipped(f"directory {str(folder)!r}", scan, suffixes)
    return sorted(scan.files)


#: A "**" part of a glob, with the separators around it.
_ANY_FOLDERS = re.compile(r"(^|/)\*\*(/|$)")


def _glob(pattern: str, refused: Callable[[str], bool]) -> list[str]:
    """What ``glob.glob(pattern, recursive=True)`` matches, but with "**" walking the folders as a
    directory is read (``_walk``): each folder once, never through a link back to one that holds
    it, nor from a folder ``refused`` says is reached through such a link. glob followed
    "up -> .." until paths 40 links deep failed, reading the tree around the corpus (all of it for
    a link to / or ~) and every file of the corpus again at each depth."""
    found = _ANY_FOLDERS.search(pattern)
    if found is None:
        return glob.glob(pattern)
    head, tail = pattern[: found.end(1)], pattern[found.end():]
    tops = glob.glob(head) if glob.has_magic(head) else [head]
    matches: list[str] = []
    visited: set[tuple[int, int]] = set()
    for top in tops:
        folder = top or "."  # "**" first: the current folder
        if not os.path.isdir(folder) or refused(folder):
            continue
        for root, names in _walk(folder, visited):
            root = root if top else os.path.relpath(root)  # "**/x" matches "a/x", not "./a/x"
            if tail:  # the pattern goes on: it matches inside each folder
                matches += _glob(os.path.join(glob.escape(root), tail), refused)
            else:  # "**" last: the folders, and their files unless the pattern ends in a separator
                if root != ".":  # "**" is what lies in the current folder, not that folder
                    matches.append(root)
                if not found.group(2):
                    matches += [os.path.join(root, name) for name in names if not name.startswith(".")]
    return matches


def _below_a_link_up(pattern: str) -> Callable[[str], bool]:
    """Whether a path a glob matches is reached through a link to the folder the pattern starts
    in (its part before any wildcard) or to a folder above it: "corpus/*" matching "up -> .."
    would read the tree around the corpus, as a folder's walk never does."""
    parts = pattern.split("/")
    literal = "/".join(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
    root = literal or ("/" if pattern.startswith("/") else ".")
    real_root = os.path.realpath(root)

    @functools.lru_cache(maxsize=None)
    def refused(path: str) -> bool:
        parent = os.path.dirname(path)
        if os.path.normpath(path) == os.path.normpath(root) or parent == path:
            return False
        return _leads_above(path, real_root) or (parent not in ("", root) and refused(parent))

    return lambda path: refused(path.rstrip("/") or "/")


def _glob_files(pattern: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files a glob matches, as named (whatever their ending), and the files with
    ``suffixes`` under the folders it matches, as a directory gives them; not what lies beyond a
    link up (``_below_a_link_up``)."""
    refused = _below_a_link_up(pattern)
    matches = sorted(Path(p) for p in _glob(pattern, refused) if not refused(p))
    folders = _outermost([p for p in matches if p.is_dir()])
    named = [p for p in matches if not p.is_dir() and p.exists()]
    for path in named:
        refuse_special_file(path)
    scan = _FolderScan(broken=[p for p in matches if not p.exists()])
    visited: set[tuple[int, int]] = set()
    for folder in folders:
        _scan_folder(folder, suffixes, scan, visited)
    taken = set(named)
    scan.files = [p for p in scan.files if p not in taken]
    scan.skipped = [p for p in scan.skipped if p not in taken]
    if not named and not scan.files:
        looked = f" (its folders hold no files ending in {', '.join(suffixes)})" if folders else ""
        raise CorpusError(f"no files match the pattern {pattern!r}{looked}")
    _warn_skipped(f"the {len(folders):,} folder(s) matched by {pattern!r}" if folders else f"pattern {pattern!r}",
                  scan, suffixes)
    return sorted([*named, *scan.files])


def _outermost(folders: list[Path]) -> list[Path]:
    """``folders`` less those inside another of them (a ``**`` glob matches a folder and every
    folder below it): walking the outer one reads them. Linear in the folders times their depth."""
    kept: set[Path] = set()
    for folder in sorted(folders, key=lambda p: len(p.parts)):
        if not any(parent in kept for parent in folder.parents):
            kept.add(folder)
    return sorted(kept)


def _names(paths: list[Path]) -> str:
    return f"{', '.join(p.name for p in paths[:3])}{', ...' if len(paths) > 3 else ''}"


def _jsonl_hint(skipped: list[Path], suffixes: tuple[str, ...]) -> str:
    """A hint, when a folder read for text files holds JSON lines, that a text field reads them."""
    if suffixes == TEXT_SUFFIXES and any(p.name.lower().endswith(DIRECTORY_JSONL_SUFFIXES) for p in skipped):
        return "; JSON lines are read from a directory with a text field (--text-field)"
    return ""


def _json_hint(skipped: list[Path]) -> str:
    """How to read the .json files of a folder that holds nothing else to read."""
    if any(p.name.lower().endswith((".json", ".json.gz")) for p in skipped):
        return ("; .json files are not read from a directory (they are as often one JSON document as JSON lines): "
                "name them by a glob (folder/*.json) or rename them .jsonl")
    return ""


def _warn_skipped(where: str, scan: _FolderScan, suffixes: tuple[str, ...]) -> None:
    """Say which files of the folders read were left out: files of other kinds and links to nothing."""
    left_out = []
    skipped, broken = sorted(scan.skipped), sorted(scan.broken)
    if skipped:
        left_out.append(f"skipped {len(skipped):,} other file(s) ({_names(skipped)}){_jsonl_hint(skipped, suffixes)}")
    if broken:
        left_out.append(f"skipped {len(broken):,} broken link(s) to nothing ({_names(broken)})")
    if left_out:
        warnings.warn(f"reading the {len(scan.files):,} file(s) ending in {', '.join(suffixes)} of {where}; "
                      + "; ".join(left_out), DiffmaskWarning, stacklevel=5)


def _read_once(files: list[Path]) -> list[Path]:
    """``files`` with each file (by its real path) kept at its first place only: one reached again
    through a link, or named twice, would have its words counted twice."""
    first: dict[tuple[int, int], Path] = {}
    repeated: list[Path] = []
    for path in files:
        status = os.stat(path)  # one call, where resolving the path would take one per component
        identity = (status.st_dev, status.st_ino)
        if identity in first:
            repeated.append(path)
        else:
            first[identity] = path
    if repeated:
        status = os.stat(repeated[0])
        example, kept = repeated[0], first[(status.st_dev, status.st_ino)]
        same = f" (the file {str(kept)!r})" if example != kept else ""
        warnings.warn(f"{len(repeated):,} file(s) of the corpus are named more than once (twice, or again through "
                      f"a link) and are read once: {str(example)!r}{same}{', ...' if len(repeated) > 1 else ''}",
                      DiffmaskWarning, stacklevel=3)
    return list(first.values())


class FilesReadOnce:
    """The files of paths met one at a time (among texts, or from a generator such as
    ``Path.rglob``), each kept the first time only, as ``corpus_files`` keeps them within one
    call; the first repeat is named in a warning."""

    def __init__(self) -> None:
        self._first: dict[tuple[int, int], Path] = {}
        self._warned = False

    def new_files(self, item: Union[str, os.PathLike], text_field: str | None) -> list[Path]:
        """The files of ``item`` (a path, folder or pattern) not met before."""
        new = []
        for path in corpus_files(item, text_field):
            status = os.stat(path)
            identity = (status.st_dev, status.st_ino)
            if identity not in self._first:
                self._first[identity] = path
                new.append(path)
            elif not self._warned:
                self._warned = True
                kept = self._first[identity]
                same = f" (the file {str(kept)!r})" if path != kept else ""
                warnings.warn(f"a file of the corpus is named more than once (twice, or again through a link) and is "
                              f"read once: {str(path)!r}{same}", DiffmaskWarning, stacklevel=4)
        return new


class CorpusPath(os.PathLike):
    """A corpus file, folder or glob as it was typed (on the command line), to give in a list of
    paths: ``pathlib.Path`` drops a trailing separator, and the glob "data/*/" (data's folders)
    became "data/*" (every file in data, README and .csv files read as documents too)."""

    def __init__(self, text: str):
        self.text = text

    def __fspath__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"CorpusPath({self.text!r})"


def corpus_files(
    source: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]], text_field: str | None = None
) -> list[Path]:
    """Every file of a corpus given as one path/pattern or a list of them, each file once.

    Directories contribute their text files, or their JSON-lines files when ``text_field`` is
    given. Pipes and devices are refused (``refuse_special_file``)."""
    suffixes = DIRECTORY_JSONL_SUFFIXES if text_field is not None else TEXT_SUFFIXES
    files: list[Path] = []
    for item in [source] if isinstance(source, (str, os.PathLike)) else source:
        files.extend(_expand_path(os.fspath(item), suffixes))
    return _read_once(files)


def is_json_lines(path: Path, text_field: str | None) -> bool:
    """Whether a file is read as JSON lines: always when a ``text_field`` is given, else by name."""
    return text_field is not None or path.name.lower().endswith(JSONL_SUFFIXES)  # "DATA.JSONL" too


def is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def open_binary(path: Path):
    """A binary reader of a file's (decompressed) bytes."""
    try:
        return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"corpus path {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise CorpusError(f"corpus path {str(path)!r} is a directory, not a file") from None


#: How a gzip file begins.
GZIP_MAGIC = b"\x1f\x8b"
#: How files compressed by tools other than gzip begin, which are not read (gzip is).
UNREAD_COMPRESSIONS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                       b"\x04\x22\x4d\x18": "lz4", b"PK\x03\x04": "zip", b"7z\xbc\xaf\x27\x1c": "7-Zip"}
#: What follows bzip2's "BZh" and block size digit: a block's mark (the digits of pi) or, for
#: empty input, the stream's end (those of the square root of pi). Text can open with "BZh9".
BZIP2_MARKS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")


def _is_bzip2(head: bytes) -> bool:
    return head.startswith(b"BZh") and head[3:4] in tuple(b"%d" % size for size in range(1, 10)) and (
        head[4:10] in BZIP2_MARKS)


def check_text(path: Path, head: bytes) -> None:
    """Raise CorpusError if the first bytes of a file show another compression than gzip, or hold
    a NUL byte (binary data, saved word counts, or UTF-16)."""
    if head.startswith(GZIP_MAGIC) and not is_gzip(path):
        raise CorpusError(f"{str(path)!r} is gzip-compressed but not named *.gz, so it is read as text; rename it "
                          "to end in .gz, or decompress it")
    for magic, name in UNREAD_COMPRESSIONS.items():
        if head.startswith(magic) and (name != "bzip2" or _is_bzip2(head)):
            raise CorpusError(f"{str(path)!r} is compressed with {name}, which is not read; decompress it, or "
                              "compress it with gzip (.gz files are read)")
    if head.startswith(WORD_COUNTS_MAGIC):
        raise CorpusError(f"{str(path)!r} holds saved word counts, not text: give it as counts (--counts), not as "
                          "the corpus")
    if b"\x00" in head[:BINARY_CHECK_BYTES]:
        encoding = _wide_text_encoding(head[:BINARY_CHECK_BYTES])
        if encoding is not None:
            raise CorpusError(f"{str(path)!r} is {encoding} text: convert it to UTF-8 (iconv -f {encoding} -t UTF-8), "
                              "which corpora are read as")
        raise CorpusError(f"{str(path)!r} looks like a binary file (it contains NUL bytes), not text")


def _wide_text_encoding(head: bytes) -> str | None:
    """"UTF-32" or "UTF-16" where the bytes read as text in it, nearly all printable characters,
    and either open with its byte-order mark or hold as many NUL bytes as Latin text in it does
    (UTF-8 text with a stray NUL reads as printable UTF-16 too); None for binary data."""
    zeros = head.count(0) / max(len(head), 1)
    for name, width, marks, least_zeros in (("UTF-32", 4, (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"), 0.4),
                                            ("UTF-16", 2, (b"\xff\xfe", b"\xfe\xff"), 0.2)):
        if not head.startswith(marks) and zeros < least_zeros:
            continue
        for codec in (f"{name.lower()}-le", f"{name.lower()}-be"):
            text = head[: len(head) - len(head) % width].decode(codec, "replace").lstrip("\ufeff")
            readable = sum(character.isprintable() and character != "\ufffd" or character in "\t\n\r"
                           for character in text)
            if text and readable >= 0.95 * len(text):
                return name
    return None


#: Folders with a file already warned of as JSON lines read as text, with the lock that guards
#: them (counting threads read files at once): a folder of thousands of such files warns once.
_FOLDERS_WARNED_OF_JSON_LINES: set[str] = set()
_FOLDERS_WARNED_LOCK = threading.Lock()


def warn_of_json_lines_read_as_text(path: Path, head: bytes) -> None:
    """Warn where a file read as text opens with a JSON object on its own line: JSON lines under
    another name (train.jsonl copied as train.txt), whose field names and quotes would be words.
    Once per folder in a process, as Python shows a repeated warning once."""
    folder = os.path.abspath(path.parent)
    if folder in _FOLDERS_WARNED_OF_JSON_LINES:  # said already: its other files (or ranges) need no parsing
        return
    first = next((line for line in head.split(b"\n") if line.strip()), b"")
    text = first.decode("utf-8", "replace").removeprefix("\ufeff").strip()
    if not text.startswith("{"):
        return
    try:
        record = json.loads(text)
    except ValueError:  # prose in braces, or a first line the head cuts
        return
    if not (isinstance(record, dict) and record):
        return
    with _FOLDERS_WARNED_LOCK:
        if folder in _FOLDERS_WARNED_OF_JSON_LINES:  # another thread said it meanwhile
            return
        _FOLDERS_WARNED_OF_JSON_LINES.add(folder)
    fields = ", ".join(repr(key) for key in list(record)[:3])
    warnings.warn(f"{str(path)!r} looks like JSON lines (fields {fields}) but is read as text, its field names "
                  "and quotes as words: name it .jsonl, or give its text field (--text-field); other files "
                  f"of {str(path.parent)!r} read so are not named", DiffmaskWarning, stacklevel=2)


#: What reading a damaged file raises: OSError (also gzip.BadGzipFile), a truncated gzip
#: stream's EOFError, a corrupt deflate stream's zlib.error.
READ_ERRORS = (OSError, EOFError, zlib.error)


def check_text_file(path: Path) -> bytes:
    """The first ``BINARY_CHECK_BYTES`` (decompressed) of a file; raises CorpusError if the file
    cannot be read or they hold a NUL byte. ``count_words`` makes the same check on every file
    (and on every range of a file it splits)."""
    with open_binary(path) as raw:
        try:
            head = raw.read(BINARY_CHECK_BYTES)  # read, not peek: peek may return less than asked
        except READ_ERRORS as error:
            raise CorpusError(f"{str(path)!r} cannot be read: {error}") from error
    check_text(path, head)
    return head


def _read_lines(path: Path, handle) -> Iterator:
    """The lines of an open file, with read errors (a truncated or corrupt gzip file) reported as
    CorpusError naming the file."""
    try:
        yield from handle
    except READ_ERRORS as error:
        raise CorpusError(f"{str(path)!r} cannot be read: {error}") from error


def iter_file_lines(path: Path) -> Iterator[str]:
    """Lines of one text file, without line ends."""
    warn_of_json_lines_read_as_text(path, check_text_file(path))
    # Invalid UTF-8 bytes become U+FFFD rather than aborting a long count. A whole byte-order mark
    # opening the file is dropped here (utf-8-sig would also drop the bytes of a cut one, which
    # are invalid UTF-8 like any other).
    with io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="replace", newline=None) as handle:
        for number, line in enumerate(_read_lines(path, handle)):
            if number == 0:
                line = line.removeprefix("\ufeff")
                if not line:  # the file held the mark alone: no line
                    continue
            yield line.rstrip("\n")


def record_text(line: Union[str, bytes], path: Union[str, os.PathLike], number: int, field: str) -> str | None:
    """The text of one JSON-lines record; None for a blank line (which is no record).

    Raises CorpusError naming the file and line when the line is not a JSON object or its
    ``field`` is missing or not a string. Invalid UTF-8 bytes become U+FFFD."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.removeprefix("\ufeff")  # a byte-order mark opening the file: JSON cannot start with one
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{os.fspath(path)!r} line {number}: not valid JSON ({error.msg})"
                          f"{_one_document_hint(line, number) or _plain_text_hint(path)}") from None
    except (ValueError, RecursionError) as error:  # nested too deep, or a number too long for Python
        raise CorpusError(f"{os.fspath(path)!r} line {number}: JSON that cannot be read ({error})") from None
    if not isinstance(record, dict):
        raise CorpusError(f"{os.fspath(path)!r} line {number}: expected a JSON object, got {type(record).__name__}"
                          f"{_one_document_hint(line, number)}")
    if field not in record:
        fields = ", ".join(repr(name) for name in sorted(record)[:10]) or "none"  # quoted: not read as options
        raise CorpusError(f"{os.fspath(path)!r} line {number}: no field {field!r} (fields: {fields}); "
                          "choose the text field with text_field / --text-field")
    text = record[field]
    if not isinstance(text, str):
        raise CorpusError(f"{os.fspath(path)!r} line {number}: field {field!r} holds {type(text).__name__}, not a string")
    return text


def _plain_text_hint(path: Union[str, os.PathLike]) -> str:
    """Why a file named as plain text was read as JSON lines."""
    if not os.fspath(path).lower().endswith(TEXT_SUFFIXES):
        return ""
    return ("; with a text field (text_field / --text-field) every file is read as JSON lines, this plain-text one "
            "too: read plain-text files in a run without a text field")


def _one_document_hint(line: str, number: int) -> str:
    """Advice when the first line opens one JSON document (an array, or an object spread over
    lines) rather than a record per line."""
    text = line.strip()
    opens_document = text.startswith("[") or (text.startswith("{") and text.endswith(("{", "[", ",")))
    if (number == 1 and opens_document) or text.startswith("[{"):
        return ("; the file looks like one JSON document, but a corpus file holds one JSON object per line "
                "(JSON lines, as datasets' to_json writes)")
    return ""


def iter_json_lines(path: Path, field: str) -> Iterator[str]:
    """Texts of the records of one JSON-lines file (blank lines skipped)."""
    check_text_file(path)
    with open_binary(path) as handle:
        for number, line in enumerate(_read_lines(path, handle), start=1):
            text = record_text(line, path, number, field)
            if text is not None:
                yield text


def is_dataset(source: object) -> bool:
    """Whether ``source`` looks like a HuggingFace ``datasets.Dataset`` (``column_names`` and
    ``iter(batch_size=...)``); ``datasets`` itself is never imported."""
    return (not isinstance(source, (str, bytes, os.PathLike))
            and hasattr(source, "column_names") and callable(getattr(source, "iter", None)))


def text_field_name(text_field: object) -> str:
    """The field (JSON key, dataset or frame column) documents are read from: ``text`` when none is
    given; a given one is used as it is, "" too (``or`` would read "" as "text")."""
    if text_field is None:
        return DEFAULT_TEXT_FIELD
    if not isinstance(text_field, str):
        raise TypeError(f"text_field must be the name of a field (a string), got {type(text_field).__name__} "
                        f"{text_field!r:.60}")
    return text_field


class _FrameAsDataset:
    """A pandas ``DataFrame`` read as a dataset, one document a row of its text column: it is
    neither a mapping nor a dataset, and iterating it would count its column names."""

    def __init__(self, frame: Any):
        self.frame = frame

    @property
    def column_names(self) -> list[str]:
        return [str(name) for name in self.frame.columns]

    def iter(self, batch_size: int) -> Iterator["_FrameRows"]:
        names: dict[str, list] = {}
        for name in self.frame.columns:
            names.setdefault(str(name), []).append(name)
        for start in range(0, len(self.frame), batch_size):
            yield _FrameRows(self.frame.iloc[start:start + batch_size], names)


class _FrameRows:
    """Some rows of a frame, a column read only when asked for by name: the other columns may be
    of any kind, or share a name (``pd.concat(axis=1)``), which only the text column may not."""

    def __init__(self, rows: Any, names: dict[str, list]):
        self.rows, self.names = rows, names

    def __contains__(self, field: str) -> bool:
        return field in self.names

    def __getitem__(self, field: str) -> list:
        columns = self.names[field]
        if len(columns) > 1:
            raise CorpusError(f"the data frame has {len(columns)} columns named {field!r}; the text must be one "
                              "column (keep one, e.g. frame.loc[:, ~frame.columns.duplicated()])")
        return self.rows[columns[0]].tolist()


def is_data_frame(source: object) -> bool:
    """Whether ``source`` looks like a pandas ``DataFrame`` (``columns`` and ``iloc``, but no
    Series' ``name``); pandas itself is never imported. Its class is asked, not the frame: a
    frame's columns are attributes too, so one with a "name" column has ``frame.name``."""
    kind = type(source)
    return hasattr(kind, "columns") and hasattr(kind, "iloc") and not hasattr(kind, "name")


def dataset_view(source: object) -> object:
    """``source``, with a pandas ``DataFrame`` read as a dataset of its rows."""
    return _FrameAsDataset(source) if is_data_frame(source) else source


def check_iterable_corpus(source: object) -> None:
    """Refuse what would be counted as something else: a dict (e.g. a ``datasets.DatasetDict`` of
    splits) would count its keys, and a list of strings that name files (``glob.glob``'s, say)
    their names, since strings are documents; bytes would be counted as numbers."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        raise CorpusError(f"the corpus is {type(source).__name__}; decode it to a string (text.decode('utf-8')) and "
                          "pass its lines or documents as strings, or pass the path of a file")
    if not isinstance(source, (str, os.PathLike, Iterable)) and not _iterable_by_index(source):
        raise CorpusError(f"the corpus is {source!r:.60} ({type(source).__name__}); pass the path of a file, directory "
                          "or glob, an iterable of strings, a datasets.Dataset or a pandas DataFrame")
    if isinstance(source, Mapping):
        keys = ", ".join(map(str, list(source)[:5]))
        raise CorpusError(f"a mapping was given as the corpus (keys: {keys}); pass one split of a "
                          "dataset, paths or an iterable of strings")
    if isinstance(source, (list, tuple)) and source and all(map(_names_a_file, source[:8])):
        shown = ", ".join(repr(name) for name in source[:3])
        raise CorpusError(f"the corpus is a list of strings that name files ({shown}{', ...' if len(source) > 3 else ''}), "
                          "and strings are documents: give the files as pathlib.Path objects "
                          "([Path(name) for name in names]), or one path, directory or glob as a string")


def _iterable_by_index(source: object) -> bool:
    """Whether ``iter()`` takes ``source`` though it is no ``Iterable``: a sequence by
    ``__getitem__`` alone (a map-style torch Dataset). ``iter()`` starts nothing here."""
    try:
        iter(source)
    except TypeError:
        return False
    return True


def _names_a_file(item: object) -> bool:
    """Whether ``item`` is a string that could be a file name and names an existing file."""
    return (isinstance(item, str) and 0 < len(item) < 4096 and "\n" not in item and "\0" not in item
            and os.path.isfile(item))


def iter_dataset_batches(dataset: Any, field: str | None, batch_size: int = 1000) -> Iterator[list[str]]:
    """Lists of texts of a dataset's ``field`` column, ``batch_size`` rows at a time."""
    field = text_field_name(field)
    columns = dataset.column_names
    if isinstance(columns, dict):
        raise CorpusError(f"a dataset with several splits ({', '.join(columns)}) was given; pass one split")
    if columns is not None and field not in columns:
        raise CorpusError(f"the dataset has no column {field!r} (columns: {', '.join(columns)}); "
                          "choose it with text_field")
    row = 0
    for batch in dataset.iter(batch_size=batch_size):
        if field not in batch:
            raise CorpusError(f"the dataset has no column {field!r}; choose it with text_field")
        texts = batch[field]
        for offset, text in enumerate(texts):
            if not isinstance(text, str):
                raise CorpusError(f"dataset row {row + offset}: column {field!r} holds {type(text).__name__}, not a string")
        row += len(texts)
        yield list(texts)


def _iter_file_documents(path: Path, text_field: str | None) -> Iterator[str]:
    if is_json_lines(path, text_field):
        yield from iter_json_lines(path, text_field_name(text_field))
    else:
        yield from iter_file_lines(path)


def names_only_paths(source: object) -> bool:
    """Whether ``source`` is a list or tuple of paths only: one set of files, each read once
    however often it is named (``count_words`` takes such a list the same way)."""
    return (isinstance(source, (list, tuple)) and bool(source)
            and all(isinstance(item, os.PathLike) for item in source))


def iter_documents(source: CorpusSource, text_field: str | None = None) -> Iterator[str]:
    """Documents of a corpus: lines of text files, records of JSON-lines files, rows of a
    dataset, or the strings themselves.

    A ``str`` is a path or pattern; an iterable holds literal strings or ``pathlib.Path``s; a
    pandas ``DataFrame`` is read as a dataset."""
    source = dataset_view(source)
    if isinstance(source, (str, os.PathLike)) or names_only_paths(source):
        for path in corpus_files(source, text_field):
            yield from _iter_file_documents(path, text_field)
        return
    if is_dataset(source):
        for batch in iter_dataset_batches(source, text_field):
            yield from batch
        return
    check_iterable_corpus(source)
    files = FilesReadOnce()
    for item in source:
        if isinstance(item, os.PathLike):
            for path in files.new_files(item, text_field):
                yield from _iter_file_documents(path, text_field)
            continue
        if not isinstance(item, str):
            raise CorpusError(f"corpus items must be strings, got {type(item).__name__}")
        yield item


def corpus_size_bytes(source: CorpusSource, text_field: str | None = None) -> int | None:
    """Total size on disk of a file corpus, for progress bars; None for strings or a dataset."""
    if isinstance(source, (str, os.PathLike)):
        return sum(p.stat().st_size for p in corpus_files(source, text_field))
    return None
