"""Data for continued pretraining: documents split into train and validation, tokenized into
sequences of at most ``max_length`` tokens, and the collator the Trainer uses.

Long documents are cut into consecutive windows instead of being truncated, so no text is
thrown away. Windows end between words, as the masking strategies group them: a word cut in two
would start the next window as a word of its own ("##ors"), scored and matched against the
domain terms as one. The validation set is masked once up front (``MaskingStrategy.
mask_examples``) so that successive validation losses are measured on the same masks;
``TrainingCollator`` passes such pre-masked examples through and masks the others.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import math
import numbers
import operator
import os
import random
import re
import tempfile
import warnings
from collections.abc import Mapping
from collections.abc import Sequence as SequenceABC
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ._checks import whole_number
from .advice import DiffmaskWarning
from ._io import put_in_place
from .corpus import CorpusError, corpus_files, iter_documents
from .tokenization import WordGrouper, naming_word_boundary, tokenizable_text, tokenize_texts
from .vocabulary import WordTypes

#: The shortest sequence worth training on: two special tokens and two word pieces.
MIN_MAX_LENGTH = 4


class SequenceDataset(torch.utils.data.Dataset):
    """Token-id sequences (or pre-masked examples: dicts, or any mapping such as a tokenizer's
    BatchEncoding) as a map-style dataset of dicts."""

    def __init__(self, examples: Sequence[Any]):
        if isinstance(examples, Mapping):  # a tokenizer's output for many texts: columns, not examples
            examples = _rows_of_columns(examples)
        # TokenWindows stay compact (a list of them would take ten times the memory).
        self.examples = examples if isinstance(examples, TokenWindows) else list(examples)
        if self.examples and isinstance(self.examples[0], (str, bytes)):
            raise TypeError("SequenceDataset takes token-id sequences or example dicts, got "
                            f"{type(self.examples[0]).__name__} items; tokenize the texts first")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return dict(example) if isinstance(example, Mapping) else {"input_ids": example}


def _rows_of_columns(columns: Mapping) -> list[dict]:
    """Examples from columns (``tokenizer(texts)``: ``{"input_ids": [[...], ...], ...}``), one a
    row; columns of unequal length cannot be rows and are refused."""
    if "input_ids" not in columns:
        raise ValueError(f"a mapping given as the examples is read as columns and needs an 'input_ids' column; it has "
                         f"{', '.join(map(repr, columns)) or 'none'}")
    first = next(iter(columns["input_ids"]), None)
    if isinstance(first, numbers.Integral):  # tokenizer(text), not tokenizer(texts)
        raise ValueError("the mapping given as the examples is one example (its input_ids are token ids); give a list "
                         "of examples, or tokenize a list of texts")
    names = list(columns)
    lengths = {name: len(columns[name]) for name in names}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {length}" for name, length in lengths.items())
        raise ValueError(f"the columns given as the examples differ in length ({shown})")
    return [{name: columns[name][row] for name in names} for row in range(lengths["input_ids"])]


class CorpusDocuments:
    """The non-empty documents (stripped) of a corpus's files, in order, read from the files
    again each time they are iterated: a corpus never needs to fit in memory. ``without``
    leaves the documents at some positions out. A pass, or a count of ``word_counts``, that finds
    a file changed since the first pass began (its size or time of change), or another number of
    documents than the first pass did, fails: the files changed while the run read them."""

    def __init__(self, sources: Iterable, text_field: str | None = None):
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        self.files = corpus_files(list(sources), text_field)  # a file named twice is read once
        self.text_field = text_field
        self._left_out: frozenset[int] = frozenset()
        self._left_out_documents: Sequence[str] | None = ()  # those at the positions left out, where known
        self._count: list[int | None] = [None]  # documents of the files, once a pass has counted them; shared
        self._states: list[list | None] = [None]  # the files' states when the first pass began; shared

    def without(self, positions: Iterable[int], documents: Sequence[str] | None = None) -> CorpusDocuments:
        """The same documents but those at ``positions`` (counted among all of the files').
        ``documents``: those at the positions, where the caller holds them (``word_counts``
        then counts the files whole, less them)."""
        positions = frozenset(positions)
        if documents is not None and len(documents) != len(positions):
            raise ValueError(f"{len(documents)} documents were given for the {len(positions)} positions left out")
        other = object.__new__(CorpusDocuments)
        other.files, other.text_field, other._count, other._states = self.files, self.text_field, self._count, \
            self._states
        other._left_out = self._left_out | positions
        # Documents given again for positions already left out would be subtracted twice: unknown then.
        known = self._left_out_documents is not None and documents is not None and not positions & self._left_out
        other._left_out_documents = [*self._left_out_documents, *documents] if known else None
        return other

    def word_counts(self, progress: bool = True) -> Any:
        """``counting.count_words`` of these documents (a ``WordCounts``). Where the documents
        left out are known, the files are counted whole by the counter's multi-threaded reader of
        files, and the counts of those left out subtracted: the same counts, without passing
        every document to the counter as a Python string."""
        from .counting import count_words

        if self._left_out_documents is None:
            return count_words(self, progress=progress)
        self._check_unchanged()  # the count is of the files as they are now, not of what was read
        whole = count_words(list(self.files), progress=progress, text_field=self.text_field)
        self._check_unchanged()
        if self._left_out_documents:
            whole = whole.subtract(count_words(self._left_out_documents, progress=False))
        return type(whole)(whole.table, len(self), whole.lowercase)

    def _check_unchanged(self) -> None:
        """Note the files' states (device, inode, size, time of change) at the first call; refuse a
        later call that finds one changed."""
        states = []
        for path in self.files:
            try:
                status = os.stat(path)
            except OSError as error:
                raise CorpusError(f"the corpus file {str(path)!r} cannot be read any more "
                                  f"({error.strerror or error})") from None
            states.append((status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns))
        if self._states[0] is None:
            self._states[0] = states
            return
        for path, before, now in zip(self.files, self._states[0], states):
            if now != before:
                change = f"{before[2]:,} bytes then, {now[2]:,} now" if now[2] != before[2] else "rewritten"
                raise CorpusError(f"the corpus file {str(path)!r} changed while the run read it ({change}): a run "
                                  "reads its files more than once; copy them where nothing writes to them")

    def __iter__(self) -> Iterator[str]:
        self._check_unchanged()
        position = 0
        for path in self.files:
            for document in iter_documents(path, self.text_field):
                document = document.strip()
                if document:
                    if position not in self._left_out:
                        yield document
                    position += 1
        if self._count[0] is None:
            self._count[0] = position
        elif position != self._count[0]:
            raise CorpusError(f"the corpus files changed while they were read: they hold {position:,} documents now, "
                              f"{self._count[0]:,} before")

    def __len__(self) -> int:
        if self._count[0] is None:
            for _ in self:  # counts them
                pass
        return self._count[0] - sum(position < self._count[0] for position in self._left_out)


def read_documents(sources: Iterable, text_field: str | None = None) -> list[str]:
    """Non-empty documents (stripped) of every source: files, directories, globs, JSON lines;
    a file named twice (or matched by two patterns) is read once. One path may come alone."""
    return list(CorpusDocuments(sources, text_field))


def split_documents(documents: list[str], validation_fraction: float, max_validation: int,
                    seed: int, key: Callable[[str], Hashable] | None = None) -> tuple[list[str], list[str]]:
    """(train, validation): a seeded random ``validation_fraction`` of the documents (at least
    one, at most ``max_validation``) held out. Copies of a text stay together, on one side: a
    text also trained on would make the validation loss look better than it is. ``key`` says
    which texts are copies (``reading_key(tokenizer)``: those the tokenizer reads alike); the
    text itself when None."""
    held = held_out(documents if key is None else [key(document) for document in documents],
                    validation_fraction, max_validation, seed, stacklevel=3)
    return ([d for i, d in enumerate(documents) if i not in held], [documents[i] for i in sorted(held)])


def held_out(keys: Sequence[Hashable] | np.ndarray, validation_fraction: float, max_validation: int, seed: int, *,
             stacklevel: int = 2) -> set[int]:
    """The positions ``split_documents`` holds out of documents with these keys (equal keys:
    copies). Keys stand for the documents, so a corpus's split needs no text: given as a numpy
    array of 16-byte values (``reading_key``'s digests, ``np.dtype("V16")``), 16 bytes a
    document, and about 100 for the moment the copies are grouped (numpy's ``unique``: 10 GB
    for 10^8 documents). ``stacklevel`` places its warning."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if isinstance(max_validation, bool) or not isinstance(max_validation, numbers.Real) or not max_validation >= 1:
        raise ValueError(f"max_validation must be at least 1 (a validation set holds a document), got "
                         f"{max_validation!r}")
    if len(keys) < 2:
        raise ValueError(f"the corpus has {len(keys)} non-empty document(s); holding out a validation set needs "
                         "at least 2 (or give validation files)")
    group_of, sizes = _copies(keys)  # each document's text, numbered in the order texts first appear
    if len(sizes) < 2:
        raise ValueError(f"the corpus's {len(keys)} documents are one text repeated; holding out a validation set "
                         "needs 2 different ones (or give validation files)")
    # 8 bytes a text, where a list of ints takes 36; shuffled with the same draws as a list.
    texts = array.array("q", range(len(sizes)))
    random.Random(seed).shuffle(texts)  # without repeated texts, the same draw as shuffling the documents
    largest = min(max_validation, len(keys) - 1)
    wanted = min(max(1, round(validation_fraction * len(keys))), largest)
    chosen, held = [], 0
    for text in texts:
        if held >= wanted:
            break
        if held + sizes[text] <= wanted:  # a text with too many copies stays in training
            chosen.append(text)
            held += int(sizes[text])
    if not chosen:  # every text has more copies than the validation set should hold: the rarest one
        rarest = min(texts, key=lambda text: sizes[text])
        copies = int(sizes[rarest])
        if copies > largest:
            raise ValueError(f"every text of the corpus appears at least {copies} times, and copies of a text stay "
                             f"on one side of the split: holding one out exceeds the {largest} validation documents "
                             "allowed; give validation files")
        warnings.warn(f"every text of the corpus appears at least {copies} times, and copies of a text stay on one "
                      f"side of the split: the validation set holds {copies} of {len(keys)} documents, not "
                      f"the {wanted} asked for; give validation files for a smaller one", DiffmaskWarning,
                      stacklevel=stacklevel)
        chosen = [rarest]
    return set(np.flatnonzero(np.isin(group_of, chosen)).tolist())


def _copies(keys: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the text of each document, the number of documents of each text): texts are numbered in
    the order they first appear, documents with equal keys are one text."""
    if isinstance(keys, np.ndarray) and keys.ndim != 1:
        raise ValueError(f"the keys must be one a document, in a one-dimensional array; got shape {keys.shape}")
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "VS":  # fixed-width bytes: compared as such
        _, first, inverse, sizes = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        order = np.argsort(first, kind="stable")  # unique's texts, in the order they first appear
        number = np.empty_like(order)
        number[order] = np.arange(len(order))
        return number[inverse.reshape(-1)], sizes[order]
    numbers_of: dict[Hashable, int] = {}
    group_of = np.fromiter((numbers_of.setdefault(key, len(numbers_of)) for key in keys), dtype=np.int64,
                           count=len(keys))
    return group_of, np.bincount(group_of, minlength=len(numbers_of))


def documents_fingerprint(documents: Iterable[str]) -> dict:
    """How many documents and a SHA-256 of their text, in order: a resumed run checks that it
    trains and validates on the documents its run began with."""
    digest, count = hashlib.sha256(), 0
    for document in documents:
        data = document.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        count += 1
    return {"documents": count, "sha256": digest.hexdigest()}


def reading_key(tokenizer: Any) -> Callable[[str], Hashable]:
    """A key of a text as ``tokenizer`` reads it, for ``split_documents`` to keep near-copies on
    one side: the text after the tokenizer's normalizer (which may fold case and Unicode forms),
    without its whitespace, digested (16 bytes a document). Texts that differ in what the
    normalizer folds or in spacing ("Gagoś" in NFC and NFD under an uncased model, "[ diethyl"
    and "[diethyl") share a key, where the raw text put some in training and their copies, token
    for token, in validation. Texts that differ only in spacing inside a word share it too,
    though they tokenize apart: keeping such near-copies together costs the split nothing. A
    fraction of tokenizing's time (it pre-tokenizes nothing)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = None if backend is None else backend.normalizer

    def key(text: str) -> bytes:
        text = tokenizable_text(text)  # a lone surrogate (from JSON) as the tokenizer reads it: U+FFFD
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        return hashlib.blake2b("".join(text.split()).encode("utf-8"), digest_size=16).digest()

    return key


def text_key(text: str) -> bytes:
    """The key of a text where copies are texts equal to the letter (``split_documents`` without
    a key, as runs began before ``reading_key`` split): a digest, 16 bytes a document. Keys
    split as the texts themselves do: the split depends on which keys are equal, not on them."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class UndecodedText:
    """Documents holding U+FFFD, which reading puts for bytes that are not UTF-8, counted as they
    go by (``see``): a corpus saved in another encoding (Latin-1, cp1252) would otherwise be
    trained on with its accented words broken into marks, and nothing said."""

    def __init__(self) -> None:
        self.documents = self.damaged = 0
        self.example: str | None = None

    def see(self, document: str) -> None:
        self.documents += 1
        if "\ufffd" in document:
            self.damaged += 1
            if self.example is None:
                at = document.index("\ufffd")
                self.example = document[max(0, at - 30): at + 30]

    def notice(self, name: str) -> str | None:
        """The warning for the documents seen, or None when none was damaged."""
        if not self.damaged:
            return None
        return (f"{self.damaged:,} of the {self.documents:,} {name} documents hold U+FFFD, the mark reading leaves "
                f"for bytes that are not UTF-8 (e.g. {self.example!r}): is the corpus in another encoding? Convert it "
                "to UTF-8 (iconv -f latin1 -t utf-8), or the model trains on the marks")


def undecoded_text_notice(documents: Iterable[str], name: str) -> str | None:
    """``UndecodedText``'s warning for ``documents``, or None."""
    tally = UndecodedText()
    for document in documents:
        tally.see(document)
    return tally.notice(name)


def tokenize_documents(tokenizer: Any, documents: Iterable[str], max_length: int, *, batch_size: int = 1000,
                       progress: bool = True, description: str = "tokenizing",
                       word_boundary: str | None = None, into: str | os.PathLike | None = None,
                       word_types: WordTypes | None = None) -> TokenWindows:
    """Token ids with special tokens, one window of at most ``max_length`` tokens each (a
    ``TokenWindows``: read as lists of ints, kept in a few bytes a token).

    A document that does not fit is cut into consecutive windows, each as long as it can be
    while ending between two words (``word_boundary`` names the scheme; detected when None).
    Only a word longer than a whole window is cut inside. Documents without tokens give none.
    Given ``into``, the windows are written to ``TokenWindows.save``'s files there as they are
    made, and returned memory-mapped from them (``TokenWindows.load``). Given ``word_types``,
    the documents' words are added to it from the same tokens (for scoring). The tokenizer reads
    at most ``batch_size`` documents and about ``CHARACTERS_PER_BATCH`` characters at once: a
    longer document goes in pieces cut before a space after a word, and has the windows of the
    whole (unless it has no such space in four times that many characters: see ``_pieces``). A
    tokenizer that reads text cut there otherwise reads each document whole.
    """
    if isinstance(documents, (str, bytes)):  # iterating would read a document a character
        raise TypeError(f"documents must be an iterable of texts, got one {type(documents).__name__}: give [text]")
    max_length = whole_number(max_length, "max_length", least=MIN_MAX_LENGTH)

    before, after = special_wrapping(tokenizer)
    room = max_length - len(before) - len(after)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text beside the {len(before) + len(after)} "
                         f"special tokens {type(tokenizer).__name__} adds")
    with naming_word_boundary():
        grouper = WordGrouper.for_tokenizer(tokenizer, word_boundary)
    windows = TokenWindows.Builder(into)
    try:
        _add_windows(windows, tokenizer, documents, room, before, after, grouper, batch_size, progress, description,
                     word_types)
    except BaseException:
        windows.discard()
        raise
    return windows.build()


def _add_windows(windows: TokenWindows.Builder, tokenizer: Any, documents: Iterable[str], room: int,
                 before: list[int], after: list[int], grouper: WordGrouper, batch_size: int, progress: bool,
                 description: str, word_types: WordTypes | None) -> None:
    """``tokenize_documents``'s work: the windows of ``documents``, added to ``windows``."""
    from tqdm.auto import tqdm

    total = _length_known_without_reading(documents) if progress else None
    cutter = _WindowCutter(grouper, room)
    start = piece_start(tokenizer)
    with tqdm(total=total, desc=description, unit="doc", disable=not progress) as bar:
        for batch in batches_of_pieces(documents, batch_size, CHARACTERS_PER_BATCH, start):
            encoded = tokenize_texts(tokenizer, [text for text, _ in batch], add_special_tokens=False,
                                     return_attention_mask=False, return_token_type_ids=False,
                                     verbose=False)["input_ids"]
            if word_types is not None:
                word_types.add(encoded)
            for (_, ends_document), ids in zip(batch, encoded):
                for window in cutter.windows(ids, ends_document):
                    windows.add(before + window + after)
            del encoded
            windows.flush()
            bar.update(sum(ends_document for _, ends_document in batch))


#: Characters tokenized at once, about: a batch holds documents up to this many characters, and a
#: longer document is tokenized in pieces of this size. A tokenizer's output takes about 150 bytes
#: a character (its encodings), so memory holds a piece's, not a whole long document's (a corpus
#: of one 100 MB line took 15 GB).
CHARACTERS_PER_BATCH = 1 << 20


def batches_of_pieces(documents: Iterable[str], batch_size: int, characters: int, start: str | None
                      ) -> Iterator[list[tuple[str, bool]]]:
    """Texts to tokenize at once, each with whether it ends its document: at most ``batch_size``
    documents and, past the first text, ``characters`` characters a batch. ``start``
    (``piece_start``): how a piece after a cut begins; None: documents are not cut."""
    batch: list[tuple[str, bool]] = []
    held = ended = 0
    for document in documents:
        pieces = _pieces(document, characters if start is not None else math.inf)
        for number, (piece, last) in enumerate(pieces):
            if number and start == "no space" and piece.startswith(" "):  # not where cut inside a word
                piece = piece[1:]
            if batch and (held + len(piece) > characters or ended == batch_size):
                yield batch
                batch, held, ended = [], 0, 0
            batch.append((piece, last))
            held += len(piece)
            ended += last
    if batch:
        yield batch


def _pieces(text: str, size: float) -> Iterator[tuple[str, bool]]:
    """``text`` in consecutive pieces of at most about ``size`` characters, each (but the last) cut
    before a space that follows other characters: the space goes with the word after it, which
    the tokenizers then read as a word begun after a space (byte-level BPE's "Ġword",
    SentencePiece's "▁word"), as they do inside the whole text. Where no such space lies within
    ``size`` characters, the first one after them ends the piece, and where none lies within
    ``4 * size`` either, the piece is cut inside a word."""
    start = 0
    while len(text) - start > size:
        start, cut = _cut(text, start, int(size)), start
        yield text[cut:start], False
    yield text[start:], True


#: A space after other characters: where ``_pieces`` cuts.
_SPACE_AFTER_TEXT = re.compile(r"(?<=\S) ")


def _cut(text: str, start: int, size: int) -> int:
    """Where the piece of ``text`` from ``start`` ends (see ``_pieces``)."""
    at = text.rfind(" ", start + 1, start + size + 1)
    while at > start and text[at - 1].isspace():
        at = text.rfind(" ", start + 1, at)
    if at > start:
        return at
    later = _SPACE_AFTER_TEXT.search(text, start + size, start + 4 * size)
    return later.start() if later else start + size


#: Texts with the cuts ``_pieces`` makes (before a space after a word, a run of spaces, accents,
#: punctuation) that tell whether a tokenizer reads the pieces as it reads the whole text.
_CUT_PROBES = ("the receptor binds its ligand", "inhibition. (Fig. 2) of", "the na\u00efve  caf\u00e9 \u6771\u4eac")


def piece_start(tokenizer: Any) -> str | None:
    """How a piece after a cut begins for ``tokenizer`` to read the pieces as the whole text: with
    the space before its first word ("space": most tokenizers), without it ("no space": a
    normalizer that puts "▁" before every text, as Llama 2's does), or None where neither (such
    a tokenizer reads each document whole)."""
    for start, skip in (("space", 0), ("no space", 1)):
        if all(_reads_as_the_whole(tokenizer, text, skip) for text in _CUT_PROBES):
            return start
    return None


def _reads_as_the_whole(tokenizer: Any, text: str, skip: int) -> bool:
    cuts = [match.start() for match in _SPACE_AFTER_TEXT.finditer(text)]
    texts = [text] + [part for cut in cuts for part in (text[:cut], text[cut + skip:])]
    ids = tokenize_texts(tokenizer, texts, add_special_tokens=False, return_attention_mask=False,
                         return_token_type_ids=False, verbose=False)["input_ids"]
    return all(list(ids[0]) == list(ids[1 + 2 * i]) + list(ids[2 + 2 * i]) for i in range(len(cuts)))


class _WindowCutter:
    """A document's windows (``word_windows``' spans of its ids) from its ids given piece by piece:
    a span whose reach (``room`` tokens from its start) lies within the ids seen so far is final;
    the ids from the first span that is not wait for the next piece (at most ``room`` of them)."""

    def __init__(self, grouper: WordGrouper, room: int):
        self.grouper, self.room = grouper, room
        self._waiting: list[int] = []

    def windows(self, ids: list[int], ends_document: bool) -> Iterator[list[int]]:
        ids = self._waiting + list(ids) if self._waiting else list(ids)
        self._waiting = []
        if ends_document and len(ids) <= self.room:
            if ids:
                yield ids
            return
        taken = 0
        for begin, end in word_windows(self.grouper.breaks(ids), self.room):
            if not ends_document and begin + self.room >= len(ids):
                break
            if end > begin:
                yield ids[begin:end]
            taken = end
        self._waiting = ids[taken:]


def _length_known_without_reading(documents: Iterable[str]) -> int | None:
    """``len(documents)`` where no pass over them is needed to know it (the progress bar's total):
    a ``CorpusDocuments`` not read yet would read its files through once more to count."""
    if isinstance(documents, CorpusDocuments) and documents._count[0] is None:
        return None
    return len(documents) if isinstance(documents, Sized) else None


class TokenWindows(SequenceABC):
    """Token-id windows kept as one flat array of ids and the offsets where each window starts:
    4 bytes a token (8 for ids beyond int32), where lists of Python ints take about 40, and
    memory the DataLoader workers of a forked process share as it is (reading a list of ints
    writes to every int's reference count, copying its page into each worker). Reads as a
    sequence of lists of ints."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray):
        if ids.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(ids) \
                or bool(np.any(np.diff(offsets) < 0)):
            raise ValueError("TokenWindows takes the flat ids and the offsets of the windows in them, from 0 to "
                             "len(ids), in order")
        self._ids, self._offsets = ids, offsets
        self._files: tuple[str, tuple] | None = None  # the stem of the files they are mapped from, and their identity

    @property
    def ids(self) -> np.ndarray:
        """Every window's ids, one after the other."""
        return self._ids

    @property
    def offsets(self) -> np.ndarray:
        """Where each window starts in ``ids``, and ``len(ids)`` last."""
        return self._offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        return self.ids[self.offsets[index]:self.offsets[index + 1]].tolist()

    def __repr__(self) -> str:
        return f"TokenWindows({len(self):,} windows, {len(self.ids):,} tokens)"

    def fingerprint(self) -> dict:
        """How many windows and tokens, and a SHA-256 of the ids window by window: a resumed run
        checks that its documents still tokenize to the windows it began with."""
        digest = hashlib.sha256()
        step = 1 << 20  # a million values at a time: no copy of a whole corpus in int64
        lengths = np.diff(self.offsets)
        for values in (lengths, self.ids):
            for start in range(0, len(values), step):
                digest.update(values[start:start + step].astype("<i8").tobytes())
        return {"windows": len(self), "tokens": int(len(self.ids)), "sha256": digest.hexdigest()}

    def save(self, stem: str | os.PathLike) -> None:
        """Writes ``<stem>.ids.npy`` and ``<stem>.offsets.npy`` (each atomically), for ``load``.
        Earlier offsets are removed first and the new ones put in place last, so that a save cut
        short leaves no new ids beside old offsets (which ``load`` could not tell apart when
        their lengths agree): it leaves no offsets, and ``load`` says so."""
        from ._io import atomic_writer

        _remove_offsets(os.fspath(stem))
        for part, values in zip(WINDOWS_FILES, (self.ids, self.offsets)):
            with atomic_writer(f"{os.fspath(stem)}.{part}.npy") as file:
                np.save(file, np.ascontiguousarray(values), allow_pickle=False)

    @classmethod
    def load(cls, stem: str | os.PathLike) -> TokenWindows:
        """The windows ``save`` wrote, memory-mapped read-only: the processes that load the same
        files share one copy of them in memory (the page cache), however many there are. Such
        windows pickle as their files' name, so spawned DataLoader workers map them too instead
        of each receiving a copy; the files must stay, unchanged, until those have started."""
        stem = os.path.abspath(os.fspath(stem))
        if os.path.exists(f"{stem}.ids.npy") and not os.path.exists(f"{stem}.offsets.npy"):
            raise ValueError(f"the windows at {stem} have ids but no offsets ({stem}.offsets.npy): their save or "
                             "build was cut short; make them again")
        identity = _files_identity(stem)
        ids, offsets = [np.load(f"{stem}.{part}.npy", mmap_mode="r", allow_pickle=False) for part in WINDOWS_FILES]
        windows = cls(ids, offsets)
        windows._files = stem, identity
        return windows

    def __reduce__(self):
        if self._files is not None:
            return _load_unchanged, self._files
        return TokenWindows, (np.asarray(self.ids), np.asarray(self.offsets))

    def __copy__(self) -> TokenWindows:
        copied = TokenWindows(self.ids, self.offsets)
        copied._files = self._files
        return copied

    def __deepcopy__(self, memo: dict) -> TokenWindows:
        return TokenWindows(np.array(self.ids), np.array(self.offsets))  # in memory, whatever happens to the files

    class Builder:
        """Windows added one list at a time, kept as arrays chunk by chunk (``flush``). Given a
        ``stem``, the chunks go to ``save``'s files instead as they come, and ``build`` returns
        the windows mapped from them: a corpus's windows never need to fit in memory, nor to be
        copied on disk. ``discard`` removes what was written of a build that cannot finish."""

        def __init__(self, stem: str | os.PathLike | None = None):
            self._pending: list[int] = []
            self._lengths: list[int] = []
            self._chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (ids, lengths), in memory
            self._stem = None if stem is None else os.fspath(stem)
            self._files: tuple[_GrowingNpy, _GrowingNpy] | None = None  # (ids, offsets), given a stem
            self._end = 0  # the offset after the last window written to the files
            if self._stem is not None:
                self._files = _GrowingNpy(f"{self._stem}.ids.npy"), _GrowingNpy(f"{self._stem}.offsets.npy", "<i8")
                self._files[1].append(np.zeros(1, dtype=np.int64))

        def add(self, window: list[int]) -> None:
            self._check_open()
            self._pending.extend(window)
            self._lengths.append(len(window))

        def flush(self) -> None:
            self._check_open()
            if self._lengths:
                ids = np.asarray(self._pending, dtype=np.int64)
                fits = len(ids) == 0 or (ids.min() >= np.iinfo(np.int32).min and ids.max() <= np.iinfo(np.int32).max)
                ids = ids.astype(np.int32) if fits else ids  # joined as int64 only if one chunk needs it
                lengths = np.asarray(self._lengths, dtype=np.int64)
                if self._files is None:
                    self._chunks.append((ids, lengths))
                else:
                    offsets = self._end + np.cumsum(lengths)
                    self._files[0].append(ids)
                    self._files[1].append(offsets)
                    self._end = int(offsets[-1])
                self._pending, self._lengths = [], []

        def build(self) -> TokenWindows:
            self.flush()
            if self._stem is not None:
                try:
                    _remove_offsets(self._stem)  # as in save: no new ids beside old offsets
                    for file in self._files:
                        file.finish()
                finally:
                    self.discard()
                return TokenWindows.load(self._stem)
            ids = np.concatenate([ids for ids, _ in self._chunks]) if self._chunks else np.zeros(0, dtype=np.int32)
            lengths = (np.concatenate([lengths for _, lengths in self._chunks]) if self._chunks
                       else np.zeros(0, dtype=np.int64))
            return TokenWindows(ids, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

        def discard(self) -> None:
            if self._files is not None:
                for file in self._files:
                    file.discard()
                self._files = None

        def _check_open(self) -> None:
            if self._stem is not None and self._files is None:
                raise RuntimeError(f"the windows were built into {self._stem}.*.npy already (or discarded); a Builder "
                                   "builds them once")


class _GrowingNpy:
    """A one-dimensional ``.npy`` file appended to as its values come, under a temporary name
    until ``finish`` renames it into place. Its header must name the final length, so it is
    written last, over room kept for it. int32 values (the default) are widened to int64 once,
    when values that need it come."""

    HEADER_BYTES = 128  # a multiple of 64, as numpy aligns its headers, with room for any length

    def __init__(self, path: str, dtype: str = "<i4"):
        self.path, self.dtype, self.count = os.path.abspath(path), np.dtype(dtype), 0
        self.handle = self._new_file()

    def _new_file(self):
        folder, name = os.path.split(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".tmp", delete=False)
        handle.write(bytes(self.HEADER_BYTES))
        return handle

    def append(self, values: np.ndarray) -> None:
        if values.dtype.itemsize > self.dtype.itemsize:
            self._widen()
        self.handle.write(values.astype(self.dtype, copy=False).tobytes())
        self.count += len(values)

    def _widen(self) -> None:
        wide = self._new_file()
        try:
            self.handle.seek(self.HEADER_BYTES)
            while block := self.handle.read(1 << 24):  # a multiple of 4 bytes: whole int32 values
                wide.write(np.frombuffer(block, dtype="<i4").astype("<i8").tobytes())
        except BaseException:
            wide.close()
            os.unlink(wide.name)
            self.handle.seek(0, os.SEEK_END)  # where the next values go, as if the widening had not begun
            raise
        self.discard()
        self.handle, self.dtype = wide, np.dtype("<i8")

    def finish(self) -> None:
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": (self.count,)}).encode("latin1")
        room = self.HEADER_BYTES - 10  # after the magic string, the version and the header's length
        self.handle.seek(0)
        self.handle.write(b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + header.ljust(room - 1) + b"\n")
        put_in_place(self.handle, self.handle.name, Path(self.path))

    def discard(self) -> None:
        self.handle.close()
        with contextlib.suppress(FileNotFoundError):  # renamed into place already
            os.unlink(self.handle.name)


WINDOWS_FILES = ("ids", "offsets")  # <stem>.ids.npy and <stem>.offsets.npy


def _remove_offsets(stem: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{stem}.offsets.npy")


def _files_identity(stem: str) -> tuple:
    """What tells the windows' files apart from others written in their place since."""
    identity = []
    for part in WINDOWS_FILES:
        status = os.stat(f"{stem}.{part}.npy")
        identity.append((status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(identity)


def _load_unchanged(stem: str, identity: tuple) -> TokenWindows:
    """``TokenWindows.load``, for windows that were pickled as the name of their files: refused
    when the files are gone or were written again since (they would be other windows)."""
    try:
        now = _files_identity(stem)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"the windows' files {stem}.*.npy are gone: windows mapped from files are pickled as "
                                "their name (for DataLoader workers), and the files must stay until they are "
                                "loaded") from error
    if now != identity:
        raise ValueError(f"the windows' files {stem}.*.npy were written again since these windows were mapped from "
                         "them; they hold other windows")
    return TokenWindows.load(stem)


def special_wrapping(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the tokens of one sequence, as ``tokenizer`` adds them: ([CLS],
    [SEP]) for BERT, (<s>, </s>) for RoBERTa, nothing for a tokenizer that adds none."""
    probe = "a b"
    inner = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    wrapped = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    if inner:
        for start in range(len(wrapped) - len(inner) + 1):
            if wrapped[start:start + len(inner)] == inner:
                return wrapped[:start], wrapped[start + len(inner):]
    raise ValueError(f"cannot tell which special tokens {type(tokenizer).__name__} adds around a sequence: "
                     f"{probe!r} is {inner} alone and {wrapped} with them")


def word_windows(breaks: np.ndarray, room: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` spans of at most ``room`` tokens covering a sequence, each
    ending at the last position ``breaks`` allows within reach (cut at ``room`` when none)."""
    if room < 1:
        raise ValueError(f"a window must hold at least one token, got room for {room}")
    cuts = np.flatnonzero(breaks)
    length, start, spans = len(breaks), 0, []
    while start < length:
        end = start + room
        if end < length:
            at = int(np.searchsorted(cuts, end, side="right")) - 1  # the last cut within reach, if any
            last = int(cuts[at]) if at >= 0 else start
            end = last if last > start else end
        else:
            end = length
        spans.append((start, end))
        start = end
    return spans


#: What ``pad_examples`` pads each per-token field with, beside ``input_ids`` (the pad token).
PADDING_VALUES = {"attention_mask": 0, "labels": -100, "loss_weights": 0.0, "token_type_ids": 0,
                  "special_tokens_mask": 1}


def pad_examples(examples: Sequence[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad ``input_ids`` (with the pad token) and every other per-token field the examples carry,
    with its ``PADDING_VALUES``: ``attention_mask`` (0; made from the lengths where the examples
    have none), ``labels`` (-100), ``loss_weights`` (0.0), ``token_type_ids`` (0) and
    ``special_tokens_mask`` (1). A field some examples lack, or one it cannot pad, is refused:
    dropping it would lose a pre-masked batch's weights or segments without a word."""
    names = {name for name in {name for example in examples for name in example} if _shared_field(examples, name)}
    unknown = sorted(names - {"input_ids", *PADDING_VALUES})
    if unknown:
        raise ValueError(f"the examples carry {unknown[0]!r}, which pad_examples cannot pad (it pads input_ids and "
                         f"{', '.join(PADDING_VALUES)}); remove that field")
    length = max(len(e["input_ids"]) for e in examples)
    fills = {"input_ids": int(pad_token_id), **PADDING_VALUES}
    padded = ["input_ids", "attention_mask", *(name for name in PADDING_VALUES if name in names - {"attention_mask"})]
    batch = {name: torch.full((len(examples), length), fills[name],
                              dtype=torch.float32 if name == "loss_weights" else torch.long) for name in padded}
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        span = slice(length - n, length) if padding_side == "left" else slice(0, n)
        for name in padded:
            values = example[name] if name in example else [1] * n  # attention_mask: every token
            if len(values) != n:
                raise ValueError(f"example {row} of the batch: its {name!r} has {len(values)} items but its input_ids "
                                 f"has {n}")
            batch[name][row, span] = torch.as_tensor(values, dtype=batch[name].dtype)
    return batch


def _shared_field(examples: Sequence[Any], name: str) -> bool:
    """Whether the examples have field ``name``: all of them, or none. A field only some have is
    refused, since a batch is one tensor per field (and pre-masked or not as a whole)."""
    having = sum(isinstance(example, Mapping) and name in example for example in examples)
    if 0 < having < len(examples):
        raise ValueError(f"{having} of the batch's {len(examples)} examples have a {name!r} field and the others do "
                         "not: give it to all of them or to none")
    return having > 0


@dataclass
class TrainingCollator:
    """Masks training examples with ``masking`` (a strategy's collator), or only pads them when
    masking happens in the training step (``masking=None``); examples that already carry
    ``labels`` (the pre-masked validation set) are padded as they are. A batch in which only
    some examples carry labels is refused."""

    tokenizer: Any
    masking: Any | None = None

    def __call__(self, examples: Sequence[dict]) -> dict:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        if _shared_field(examples, "labels") or self.masking is None:
            return pad_examples(examples, self.tokenizer.pad_token_id, self.tokenizer.padding_side)
        return self.masking(examples)

    def resume_at(self, step: int, calls_per_step: int = 1, calls_made: int | None = None) -> None:
        """Pass a resumed run's step on to the masking collator (see ``MaskingTrainer``)."""
        if hasattr(self.masking, "resume_at"):
            self.masking.resume_at(step, calls_per_step, calls_made=calls_made)
