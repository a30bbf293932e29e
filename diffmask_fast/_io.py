"""Atomic file writes: a crash or a full disk never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import math
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def _umask() -> int:
    """The process's file-creation mask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The permissions ``path`` should end with: those of the file it replaces, else what
    ``open()`` would give a new file (mkstemp's temporary files are private to the owner)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


#: Bytes of a file's name that start the name of its temporary file.
TEMPORARY_NAME_START_BYTES = 64


def _temporary_prefix(name: str) -> str:
    """``.<start of name>.``: at most ``TEMPORARY_NAME_START_BYTES`` bytes of ``name``, so that the
    temporary name (with mkstemp's 8 random characters and ``.tmp``) is allowed wherever ``name``
    is, however long ``name`` is."""
    start = name[:TEMPORARY_NAME_START_BYTES]
    while len(os.fsencode(start)) > TEMPORARY_NAME_START_BYTES:
        start = start[:-1]
    return f".{start}."


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: it is written beside ``path`` under a temporary
    name, fsynced, and renamed into place (the folder synced too) only when the block finishes
    without an error. The result is what a plain ``open(path, "wb")`` would leave: its
    permissions, and through a link the file the link points to (written beside that file), with
    the link kept."""
    if _names_a_folder(path):  # realpath would drop the final "/" and write a file of that name
        raise IsADirectoryError(f"cannot write {os.fspath(path)!r}: it names a folder (it ends in a separator), "
                                "not a file")
    given, path = path, Path(os.path.realpath(path))
    if path.is_dir():  # else the rename fails naming the temporary file
        raise IsADirectoryError(f"cannot write {os.fspath(given)!r}: it is a folder, not a file")
    _refuse_special_file(path, path)
    temporary_start = os.path.join(path.parent, _temporary_prefix(path.name))
    try:
        _make_folder(path.parent, given)
        handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as error:
        named = _naming(error, given, temporary_start)
        if named is None:
            raise
        raise named from error
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            put_in_place(file, temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        named = _naming(error, given, temporary_start) if isinstance(error, OSError) else None
        if named is None:
            raise
        raise named from error


def _make_folder(folder: Path, given: str | os.PathLike) -> None:
    """``folder`` and those above it, made where missing. A file where a folder should be is
    named as ``open()`` names it (mkdir's "File exists" reads as if the output already did)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        blocking = next((part for part in (folder, *folder.parents) if part.exists() and not part.is_dir()), folder)
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {os.fspath(given)!r}: {str(blocking)!r} is a file, "
                                 "not a folder") from None


def put_in_place(file: BinaryIO, temporary: str, path: Path) -> None:
    """Finish ``file``, written under the name ``temporary`` beside ``path``, and rename it to
    ``path``: the permissions a plain ``open()`` would leave (those of the file it replaces),
    fsynced and closed, renamed, and the folder synced so that the rename survives a power cut."""
    file.flush()
    if hasattr(os, "fchmod"):  # POSIX
        os.fchmod(file.fileno(), _final_mode(path))
    os.fsync(file.fileno())
    file.close()
    os.replace(temporary, path)
    _sync_folder(path.parent)


#: Errors of writing that name no file: a full disk or quota, a file too large, a read-only mount.
_UNNAMED_WRITE_ERRORS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS")
                                  if hasattr(errno, name))


def _naming(error: OSError, given: str | os.PathLike, temporary_start: str) -> OSError | None:
    """``error`` naming the file being written, where it named its temporary file (which the
    user never asked for) or, an error of writing, none ("[Errno 28] No space left on device");
    None to keep ``error`` as it is (about another file, or not one of writing)."""
    if error.filename is not None:
        ours = os.fspath(error.filename).startswith(temporary_start)
    else:
        ours = error.errno in _UNNAMED_WRITE_ERRORS
    return type(error)(error.errno, error.strerror or str(error), os.fspath(given)) if ours else None


def _refuse_special_file(target: Path, given: str | os.PathLike, what: str = "output") -> None:
    """Refuse a ``target`` that exists and is no regular file (a pipe, a device such as
    /dev/null, a socket): renaming a finished file onto it would replace it."""
    if target.exists() and not target.is_file() and not target.is_dir():
        raise ValueError(f"cannot write the {what} {os.fspath(given)!r}: it is not a regular file (a pipe, device or "
                         "socket), and results are written whole, by renaming a finished file into place")


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: until the folder itself is synced, a power cut may
    bring the old file back. Where folders cannot be opened (Windows), the rename has to do."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def user_path(text: str) -> Path:
    """A path given on the command line, ``~`` expanded: a shell leaves ``--output=~/x`` as it is,
    which would otherwise name a folder "~" in the working directory."""
    return Path(os.path.expanduser(text))


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise ValueError now, before hours of work, if ``path`` could not be written later: it is a
    directory or no regular file, its name holds a NUL, or the nearest existing folder on its
    way is a file or cannot be written in. Nothing is created, so a run refused later leaves no
    empty folders behind."""
    if "\x00" in os.fspath(path):
        raise ValueError(f"the {what} {os.fspath(path)!r} holds a NUL character, which no file name can")
    if _names_a_folder(path):
        raise ValueError(f"the {what} {os.fspath(path)!r} names a folder (it ends in a separator), not a file")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"the {what} {str(path)!r} is a directory, not a file")
    target = Path(os.path.realpath(path))  # through a link, the writer writes beside its target
    _refuse_special_file(target, path, what)
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write the {what} {str(path)!r}: {str(existing)!r} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"cannot write the {what} {str(path)!r}: cannot write in folder {str(existing)!r} "
                         f"({error.strerror or error})") from None
    return path


def _names_a_folder(path: str | os.PathLike) -> bool:
    """Whether a path's last part is no file name: it ends in a separator, "." or ".."."""
    return os.path.basename(os.fspath(path)) in ("", ".", "..")


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same file where both exist (links included), else
    the same resolved path."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(first) == os.path.realpath(second)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    with atomic_writer(path) as file:
        file.write(data)
    return Path(path)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as UTF-8 JSON; text holding lone surrogates (kept from invalid input by
    counting) cannot be UTF-8, so such a payload is written with ``\\u`` escapes instead.

    JSON has no NaN or infinity (a diverged run's loss): they are written as ``null``, which
    every JSON reader takes, where Python's own ``NaN`` would break other tools."""
    payload = json_ready(payload)
    try:
        data = json.dumps(payload, ensure_ascii=False, indent=1, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        paired = _surrogates_read_as_one(payload)
        if paired is not None:
            raise ValueError(f"cannot write {str(path)!r} as JSON: the text {paired!r} holds a high and a low "
                             "surrogate side by side, two characters JSON reads back as one (the character they "
                             "encode in UTF-16), so the file would not hold what was written") from None
        data = json.dumps(payload, ensure_ascii=True, indent=1, allow_nan=False).encode("ascii")
    return atomic_write_bytes(path, data + b"\n")


_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _surrogates_read_as_one(value: Any) -> str | None:
    """The first string in ``value`` (keys too) where a high surrogate precedes a low one:
    written as ``\\u`` escapes they read back as one character, another word."""
    if isinstance(value, str):
        return value if _SURROGATE_PAIR.search(value) else None
    if isinstance(value, dict):
        value = itertools.chain.from_iterable(value.items())
    if isinstance(value, (list, tuple, itertools.chain)):
        return next((found for item in value if (found := _surrogates_read_as_one(item)) is not None), None)
    return None


def json_ready(value: Any) -> Any:
    """``value`` as JSON will hold it: tuples and sets as lists, paths as strings, numpy numbers
    and arrays and torch tensors as Python's numbers and lists, and non-finite floats as None,
    inside its dicts (numpy keys too), lists and tuples. A settings dict
    compared with one read back from JSON must pass through here first."""
    numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")  # not loaded: none of their values
    if numpy is not None and isinstance(value, (numpy.generic, numpy.ndarray)):  # JSON knows Python's numbers
        value = value.tolist()
    elif torch is not None and isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {json_ready(key) if numpy is not None and isinstance(key, numpy.generic) else key: json_ready(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (set, frozenset)):  # in a fixed order, where its items have one
        items = [json_ready(item) for item in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder ("a pipe", "a
    device", ...), else None. Decided by ``os.stat``: opening a pipe would wait for a writer."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return ("a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")


def refuse_special_input(path: str | os.PathLike, what: str) -> None:
    """Raise ValueError for a saved file to read that is a pipe, socket or device: opening a pipe
    waits for a writer, /dev/zero never ends, and a stream cannot be read twice (as checks and
    fingerprints do)."""
    kind = special_file_kind(path)
    if kind is not None:
        raise ValueError(f"{what} file {os.fspath(path)!r} is {kind}, not a regular file; write it to a file first")


#: How a saved ``WordCounts`` file begins (``counting.BINARY_MAGIC``).
WORD_COUNTS_MAGIC = b"DMWCOUNT"


class FolderGivenError(IsADirectoryError, ValueError):
    """A folder given where a file to read was expected: an ``IsADirectoryError``, and a
    ``ValueError`` as every other refusal of a file's content is (``io.UnsupportedOperation`` is
    both an ``OSError`` and a ``ValueError`` alike)."""


def check_input_file(path: str | os.PathLike, what: str, folder: str = "not a file") -> None:
    """Refuse a ``what`` file to read that is missing, a folder (``folder`` says what to give
    instead), or a pipe, socket or device, saying which: each used to be reported as missing, or
    failed when read."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} file {os.fspath(path)!r} does not exist")
    if Path(path).is_dir():
        raise FolderGivenError(f"{what} file {os.fspath(path)!r} is a folder, {folder}")
    refuse_special_input(path, what)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Load a JSON file, naming ``what`` it should have held when it cannot be read. A byte-order
    mark, which some Windows editors write, is skipped."""
    path = Path(path)
    check_input_file(path, what)
    data = path.read_bytes()
    if not data:  # a copy or save cut short: "Expecting value" said nothing of it
        raise ValueError(f"{str(path)!r} is not a valid {what} file: it is empty (0 bytes)")
    if data.startswith(b"PK"):  # a zip: a score table's .npz, say
        raise ValueError(f"{str(path)!r} is not a valid {what} file: it is a zip archive (as score tables saved as "
                         ".npz are), not JSON")
    if data.startswith(WORD_COUNTS_MAGIC):
        raise ValueError(f"{str(path)!r} is not a valid {what} file: it holds saved word counts (as mine "
                         "--counts-output writes them), not JSON")
    try:
        return json.loads(data.decode("utf-8-sig"))
    except RecursionError:  # brackets nested thousands deep: no file this library writes
        raise ValueError(f"{str(path)!r} is not a valid {what} file: its JSON is nested too deeply") from None
    except ValueError as error:  # not JSON, not UTF-8, or a number of over 4,300 digits (Python refuses it)
        raise ValueError(f"{str(path)!r} is not a valid {what} file: {error}") from error
