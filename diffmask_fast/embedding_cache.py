"""An on-disk cache of word vectors, so a corpus's word types are embedded once per model.

Layout: ``<root>/embeddings/<key>/`` per embedding configuration, where ``key`` is the SHA-256 of
everything a vector depends on (see ``WordEmbedder.cache_key``: model class, configuration and
weights, tokenizer, pooling, max_length, dtype and this format's version). The directory holds
``key.json`` (the key's fields, for people) and segments, one per batch of newly embedded words:

* ``<name>.npy``: float32 [n, D], the vectors, read by memory map;
* ``<name>.json``: the words in row order, n, D, the SHA-256 of the vectors file and that of
  the words (as JSON): a damaged word would otherwise be served another word's vector.

A segment is written as temporary files renamed into place, vectors first and the JSON last, so
a segment exists only once it is complete: concurrent runs and crashes never expose a partial
one. A segment that fails its checks (unreadable JSON, a missing or truncated vectors file, a
checksum mismatch, of the vectors or of the words) is reported with ``warnings.warn`` naming
the file, deleted, and its words are embedded again. Vectors are verified against their
checksum the first time a run reads them. A whole segment of vectors of another width than the
cache was opened for is skipped, not deleted: that is the caller's slip, not damage.
When a configuration has more than ``MAX_SEGMENTS`` segments, the smallest are merged into one.
A segment is removed JSON first, so one whose JSON is gone was merged (or discarded) by another
process: its words are looked up again in the segments on disk, with no warning.
A process killed mid-write leaves temporary files, or a vectors file with no JSON; a run that
adds segments deletes such leftovers once they are ``STALE_SECONDS`` old (younger ones may belong
to a run still writing).
The cache trusts whoever may write its folders: a folder of it that every user may write (/tmp as
the root), or a root another user owns and alone may write, is not used (``UntrustedCache``); its
folders are made writable by their owner alone, or by the group that shares the folder they are
made in; nothing is written through a link planted in the key's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import stat
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ._io import atomic_write_json, atomic_writer, file_sha256 as _file_sha256
from .advice import DiffmaskWarning

CACHE_FORMAT = "diffmask_fast.embedding_cache/1"
#: Segments per configuration before they are merged into one.
MAX_SEGMENTS = 16
#: Vectors a merge copies at a time (about 100 MiB at D = 384).
MERGE_BLOCK_ROWS = 65536
#: Age after which a temporary file, or a vectors file with no JSON, is a leftover of a dead writer.
STALE_SECONDS = 3600.0


def default_cache_dir() -> Path:
    """``$DIFFMASK_CACHE`` if set, else ``$XDG_CACHE_HOME/diffmask_fast`` (``~/.cache/diffmask_fast``)."""
    explicit = os.environ.get("DIFFMASK_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffmask_fast"


def _words_sha256(words: list[str]) -> str:
    """SHA-256 of a segment's words, written as JSON with every non-ASCII character escaped (so
    the same for any word, lone surrogates too)."""
    return hashlib.sha256(json.dumps(words).encode("ascii")).hexdigest()


class CorruptSegment(Exception):
    pass


class UnreadableSegment(CorruptSegment):
    """A segment this process may not read (permissions of a shared cache), or one of another
    format (written by another version of the library): skipped, not deleted."""


class UntrustedCache(PermissionError):
    """A cache folder others could fill with vectors of their choosing: not read, not written."""


def _untrusted_reason(folder: Path, root: bool) -> str | None:
    """Why ``folder`` (an existing folder of the cache; ``root``: the cache's own) is not to be
    trusted, or None. Below a trusted root, folders are made by those who may write the root."""
    if not hasattr(os, "getuid"):  # no POSIX owners (Windows): nothing to check
        return None
    status = folder.stat()
    if status.st_mode & stat.S_IWOTH:
        return (f"{folder} is writable by every user (mode {stat.S_IMODE(status.st_mode):o}; a drive without "
                "POSIX modes shows every folder so)")
    if root and status.st_uid not in (os.getuid(), 0) and not os.access(folder, os.W_OK):
        return f"{folder} belongs to another user (uid {status.st_uid}), who alone may write it"
    return None


def _make_folder(folder: Path) -> None:
    """``mkdir -p`` of a cache folder, never writable by every user (a umask of 0 would make it
    so, and the cache would then refuse it); in a folder a group shares (group-writable), a new
    folder is group-writable too, with the parent's set-group-ID bit, for the team's others."""
    if folder.is_dir():
        return
    _make_folder(folder.parent)
    try:
        folder.mkdir()
    except FileExistsError:  # made by another process meanwhile
        return
    if not hasattr(os, "getuid"):
        return
    parent, mode = folder.parent.stat().st_mode, stat.S_IMODE(folder.stat().st_mode)
    wanted = mode & ~stat.S_IWOTH
    if parent & stat.S_IWGRP and not parent & stat.S_IWOTH:
        wanted |= stat.S_IRWXG | (parent & stat.S_ISGID)
    if wanted != mode:
        folder.chmod(wanted)


def _stored_shape(path: Path) -> tuple | None:
    """The shape of the array a .npy file holds (mapped, not read), or None where it holds none
    whole."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError):
        return None


class _Segment:
    """One committed segment: its words, and its vectors mapped from disk once verified."""

    def __init__(self, meta_path: Path, dimension: int):
        self.meta_path = meta_path
        self.vectors_path = meta_path.with_suffix(".npy")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except PermissionError as error:
            raise UnreadableSegment(f"cannot read {meta_path}: {error}") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptSegment(f"cannot read {meta_path}: {error}") from error
        if not isinstance(meta, dict) or not isinstance(meta.get("format"), str):
            raise CorruptSegment(f"{meta_path} is not an embedding-cache segment of format {CACHE_FORMAT}")
        if meta["format"] != CACHE_FORMAT:
            raise UnreadableSegment(f"{meta_path} is a segment of format {meta['format'][:60]!r}, not {CACHE_FORMAT} "
                                    "(another version's)")
        words, rows, dim, checksum = meta.get("words"), meta.get("rows"), meta.get("dimension"), meta.get("sha256")
        if dim != dimension and isinstance(words, list) and rows == len(words) and _stored_shape(self.vectors_path) \
                == (rows, dim):  # whole, of another width: a wrong dimension given is no damage to delete
            raise UnreadableSegment(f"{meta_path} holds vectors of {dim} dimensions, not the {dimension} this cache "
                                    "was opened for")
        if not isinstance(words, list) or rows != len(words) or dim != dimension or not isinstance(checksum, str):
            raise CorruptSegment(f"{meta_path} has inconsistent fields (rows {rows}, dimension {dim}, expected {dimension})")
        if not all(isinstance(w, str) for w in words):
            raise CorruptSegment(f"{meta_path} holds words that are not strings")
        words_checksum = meta.get("words_sha256")  # absent from segments of earlier versions
        if words_checksum is not None and words_checksum != _words_sha256(words):
            raise CorruptSegment(f"{meta_path}'s words do not match their checksum")
        if not self.vectors_path.is_file():
            raise CorruptSegment(f"{self.vectors_path} is missing")
        self.words: list[str] = words
        self.dimension = dimension
        self.checksum = checksum
        self._vectors: np.ndarray | None = None

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            try:
                if _file_sha256(self.vectors_path) != self.checksum:
                    raise CorruptSegment(f"{self.vectors_path} does not match its checksum")
                vectors = np.load(self.vectors_path, mmap_mode="r", allow_pickle=False)
            except PermissionError as error:
                raise UnreadableSegment(f"cannot read {self.vectors_path}: {error}") from error
            except (OSError, ValueError) as error:
                raise CorruptSegment(f"cannot read {self.vectors_path}: {error}") from error
            if vectors.dtype != np.float32 or vectors.shape != (len(self.words), self.dimension):
                raise CorruptSegment(f"{self.vectors_path} holds {vectors.dtype} {vectors.shape}, expected float32 "
                                     f"{(len(self.words), self.dimension)}")
            self._vectors = vectors
        return self._vectors

    def remove(self) -> OSError | None:
        """Delete the segment's files; the error that kept one (a read-only cache) if any."""
        kept = None
        for path in (self.meta_path, self.vectors_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:
                kept = kept or error
        return kept


class EmbeddingCache:
    """Word vectors of one embedding configuration (``key``) under ``root``."""

    def __init__(self, root: str | os.PathLike, key: str, dimension: int, description: dict | None = None):
        self.directory = Path(root).expanduser() / "embeddings" / key
        self.key = key
        self.dimension = int(dimension)
        self.description = description or {}
        self._segments: dict[str, _Segment] = {}
        self._where: dict[str, tuple[str, int]] = {}
        #: Segments found corrupt: never read again, even where they could not be deleted.
        self._rejected: set[str] = set()
        self._swept = False

    def check_trusted(self) -> None:
        """Raise ``UntrustedCache`` where another user could have put vectors into this cache."""
        for folder in (self.directory.parent.parent, self.directory.parent, self.directory):
            reason = _untrusted_reason(folder, folder == self.directory.parent.parent) if folder.is_dir() else None
            if reason is not None:
                raise UntrustedCache(f"{reason}: vectors there could be anyone's, so the cache is not used; "
                                     "`chmod o-w` it, or give a cache folder of your own (cache_dir, or "
                                     "$DIFFMASK_CACHE)")

    # -- reading -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Pick up segments written since the last look (by this or another process)."""
        self.check_trusted()
        if not self.directory.is_dir():
            return
        names = sorted(p.name for p in self.directory.glob("seg-*.json"))
        gone = set(self._segments) - set(names)
        for name in gone:
            del self._segments[name]
        if gone:
            self._reindex()
        for name in names:
            if name in self._segments or name in self._rejected:
                continue
            try:
                segment = _Segment(self.directory / name, self.dimension)
            except CorruptSegment as error:
                self._discard(None, self.directory / name, error)
                continue
            self._segments[name] = segment
            for row, word in enumerate(segment.words):
                self._where.setdefault(word, (name, row))

    def _reindex(self) -> None:
        self._where = {}
        for name in sorted(self._segments):
            for row, word in enumerate(self._segments[name].words):
                self._where.setdefault(word, (name, row))

    def _discard(self, segment: _Segment | None, path: Path, error: Exception) -> None:
        """Delete a segment that failed its checks, unless another process already removed it."""
        if segment is None:
            segment = object.__new__(_Segment)
            segment.meta_path, segment.vectors_path = path, path.with_suffix(".npy")
        if not segment.meta_path.exists():
            return  # merged away by another process, not damaged
        self._rejected.add(segment.meta_path.name)
        if isinstance(error, UnreadableSegment):  # another user's, perhaps: theirs to keep
            warnings.warn(f"embedding cache: {error}; skipping it and embedding its words again", DiffmaskWarning,
                          stacklevel=4)
            return
        kept = segment.remove()
        if kept is None:
            warnings.warn(f"embedding cache: {error}; discarded {path} and embedding its words again", DiffmaskWarning,
                          stacklevel=4)
        else:  # every run finds it again until someone who may delete it does
            warnings.warn(f"embedding cache: {error}; cannot delete it ({kept.strerror or kept}), so skipping it and "
                          f"embedding its words again; delete {segment.meta_path} and {segment.vectors_path} to stop "
                          "this warning", DiffmaskWarning, stacklevel=4)

    def __contains__(self, word: str) -> bool:
        return word in self._where

    def __len__(self) -> int:
        return len(self._where)

    def lookup(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(positions of ``words`` found, their vectors float32 [found, D]); corrupt segments are
        discarded (with a warning) and their words reported missing."""
        self.refresh()
        while True:
            by_segment: dict[str, list[tuple[int, int]]] = {}
            for position, word in enumerate(words):
                found = self._where.get(word)
                if found is not None:
                    by_segment.setdefault(found[0], []).append((position, found[1]))
            try:
                positions, blocks = [], []
                for name, pairs in by_segment.items():
                    vectors = self._segments[name].vectors
                    rows = np.fromiter((row for _, row in pairs), dtype=np.int64, count=len(pairs))
                    order = np.argsort(rows)
                    blocks.append(np.asarray(vectors[rows[order]], dtype=np.float32)[np.argsort(order)])
                    positions.append(np.fromiter((p for p, _ in pairs), dtype=np.int64, count=len(pairs)))
            except CorruptSegment as error:
                segment = self._segments.pop(name)
                self._discard(segment, segment.vectors_path, error)
                self._reindex()
                self.refresh()  # a merged segment written by another process holds the words again
                continue
            if not positions:
                return np.zeros(0, dtype=np.int64), np.zeros((0, self.dimension), dtype=np.float32)
            return np.concatenate(positions), np.concatenate(blocks)

    # -- writing -----------------------------------------------------------------------------
    def add(self, words: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors of new words as one segment (atomically); merges segments past MAX_SEGMENTS."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(words), self.dimension):
            raise ValueError(f"expected {len(words)} x {self.dimension} vectors, got {vectors.shape}")
        if not len(words):
            return
        self.check_trusted()
        _make_folder(self.directory)
        self.check_trusted()  # the folders another process made meanwhile too
        key_file = self.directory / "key.json"
        if not key_file.is_file() and not key_file.is_symlink():  # never written through a link
            atomic_write_json(key_file, {"format": CACHE_FORMAT, "key": self.key, **self.description})
        if not self._swept:
            self._swept = True
            self._sweep_leftovers()
        self._write_segment(list(words), [vectors])
        self.refresh()
        if len(self._segments) > MAX_SEGMENTS:
            with self._merge_lock() as merging:
                if merging:  # else another process is merging these segments now
                    self.refresh()  # what another process merged before the lock came free
                    if len(self._segments) > MAX_SEGMENTS:
                        self._merge()

    @contextlib.contextmanager
    def _merge_lock(self):
        """Yields whether this process holds the folder's merge lock (taken without waiting):
        two processes merging the same segments would each write a copy of their words, and
        later merges would copy the copies. Without ``fcntl`` (Windows) every process merges."""
        try:
            import fcntl
        except ImportError:
            yield True
            return
        try:  # a link there is refused (O_NOFOLLOW): the lock file is never created elsewhere. Read-only:
            # flock needs no more, and a team's others may open the lock the first of them made
            handle = os.fdopen(os.open(self.directory / ".merge.lock", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW,
                                       0o644), "rb")
        except OSError:  # a folder this process cannot write a lock in: merge as before
            yield True
            return
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _sweep_leftovers(self, now: float | None = None) -> None:
        """Delete what killed writers left behind: temporary files, and vectors files whose JSON
        never came, once they are older than STALE_SECONDS."""
        now = time.time() if now is None else now
        leftovers = list(self.directory.glob(".*.tmp"))  # every atomic write's temporary file (key.json's too)
        leftovers += [path for path in self.directory.glob("seg-*.npy") if not path.with_suffix(".json").exists()]
        for path in leftovers:
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    path.unlink()
            except OSError:  # gone already, or another user's: theirs to keep
                continue

    def _write_segment(self, words: list[str], blocks: Iterable[np.ndarray]) -> str:
        """A segment of ``words`` whose vectors are ``blocks`` (float32 [rows, D] each, rows
        adding up to len(words)), written one block at a time: a merge never holds its segment
        in memory. Vectors first, then the JSON that commits the segment."""
        name = f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        digest = hashlib.sha256()
        with atomic_writer(self.directory / f"{name}.npy") as file:
            header = io.BytesIO()
            shape = (len(words), self.dimension)
            np.lib.format.write_array_header_1_0(
                header, {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": shape})
            rows = 0
            for data in itertools.chain([header.getvalue()], blocks):
                if isinstance(data, np.ndarray):
                    rows += data.shape[0]
                    data = np.ascontiguousarray(data, dtype=np.float32).data
                digest.update(data)
                file.write(data)
            if rows != len(words):
                raise ValueError(f"a segment of {len(words)} words got {rows} vectors")
        atomic_write_json(self.directory / f"{name}.json", {
            "format": CACHE_FORMAT, "rows": len(words), "dimension": self.dimension,
            "sha256": digest.hexdigest(), "words_sha256": _words_sha256(words), "words": words,
        })
        return f"{name}.json"

    def _merge(self) -> None:
        """Merge the smallest segments into one, leaving MAX_SEGMENTS // 2 + 1 segments: large
        segments are rewritten rarely, so caching n words costs O(n log n) writes, not O(n^2).
        The merged vectors are copied ``MERGE_BLOCK_ROWS`` at a time from the mapped segments."""
        by_size = sorted(self._segments, key=lambda name: (len(self._segments[name].words), name))
        chosen = by_size[: len(by_size) - MAX_SEGMENTS // 2]
        if len(chosen) < 2:
            return
        words, parts, seen = [], [], set()
        for name in chosen:
            segment = self._segments[name]
            try:
                vectors = segment.vectors  # verified against its checksum before anything is written
            except CorruptSegment as error:
                self._segments.pop(name)
                self._discard(segment, segment.vectors_path, error)
                continue
            # A word two processes both embedded is in two segments: the merge keeps it once.
            rows = np.fromiter((row for row, word in enumerate(segment.words) if word not in seen), dtype=np.int64)
            seen.update(segment.words)
            words += [segment.words[row] for row in rows.tolist()]
            parts.append((vectors, rows))
        if parts:
            self._write_segment(words, (vectors[rows[start : start + MERGE_BLOCK_ROWS]]
                                        for vectors, rows in parts for start in range(0, len(rows), MERGE_BLOCK_ROWS)))
        for name in chosen:
            segment = self._segments.pop(name, None)
            if segment is not None:
                segment.remove()
        self._reindex()
        self.refresh()
