"""Contextual anchors: one vector per occurrence of each anchor word in the corpus.

The paper embeds each anchor word alone. An anchor word also has a vector in every sentence
that uses it: the hidden states of its sub-tokens, averaged, with the sentence around it. Those
vectors cover the senses the word actually has in the domain, and on a real corpus there are
hundreds of thousands of them, which is what ``AnchorIndex`` is for. A word's score is then its
highest cosine similarity to any occurrence of any anchor, and its nearest anchor is the anchor
word of that occurrence.

Occurrences are found as the collator finds words (README, "Choices": maximal runs of tokens the
tokenizer marks as one word, special tokens excluded), decoded and normalized, and compared
with each anchor as the same tokenizer reads it: an uncased model reads "naïve" as "naive", and
BERT reads "t-cell" as the three words "t", "-", "cell", which then match as a run of adjacent
words spaced as in the anchor ("t - cell" is not "t-cell"; a fast tokenizer's character offsets
tell). At most ``max_occurrences_per_anchor`` occurrences are kept per anchor, a uniform sample of
all of them (reservoir sampling, seeded). A document longer than the context the vectors are read
in (``max_length`` tokens) is read as consecutive windows of whole words that fit it, so that the
whole document is sampled; a Python (slow) tokenizer, which gives no character offsets to cut the
text by, is read in each document's first ``max_length`` tokens only.

Contextual vectors are means of sub-token hidden states, so they compare with word vectors of
the same kind: use them with ``pooling="mean"`` (the pooled [CLS] output of a word alone lives
elsewhere, and input embeddings do not depend on context at all).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, Sized

import numpy as np
import torch
from tqdm.auto import tqdm

from . import reference
from ._checks import check_lowercase, refuse_one_string, whole_number, word_list
from .advice import DiffmaskWarning
from .embedding import has_lone_surrogate
from .hf_loading import check_max_length, eval_mode, longest_input, model_name
from .pretrain_data import batches_of_pieces, piece_start, special_wrapping, word_windows
from .tokenization import WordGrouper, decode_words, tokenize_texts, truncating_on_the_right

#: Tokens of the context an anchor occurrence is read in, unless the model takes fewer: a longer
#: document is read as windows of whole words of at most so many tokens.
CONTEXT_LENGTH = 256
#: Share of documents longer than the context above which ``contextual_anchor_vectors`` says that
#: occurrences past it were not sampled (with a tokenizer that cannot cut documents into windows).
CUT_SHARE_NOTED = 0.1
#: Characters of documents cut into windows at a time: a longer document is tokenized in pieces cut
#: before a space (as pretraining's are), which no window spans.
WINDOW_PIECE_CHARACTERS = 1 << 20


@dataclass
class ContextualAnchors:
    """Vectors of anchor-word occurrences: ``vectors[i]`` is an occurrence of ``words[anchor_ids[i]]``."""

    words: tuple
    vectors: torch.Tensor
    anchor_ids: torch.Tensor

    def __post_init__(self) -> None:
        refuse_one_string(self.words, "words", "a sequence of anchor words")
        self.words = tuple(self.words)
        for name in ("vectors", "anchor_ids"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):  # numpy arrays as tensors, sharing memory
                setattr(self, name, torch.from_numpy(value))
            elif not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a tensor (or numpy array), got {type(value).__name__}")
        if self.vectors.ndim != 2 or self.anchor_ids.shape != (self.vectors.shape[0],):
            raise ValueError(f"vectors must be [M, D] and anchor_ids [M], got {tuple(self.vectors.shape)} "
                             f"and {tuple(self.anchor_ids.shape)}")
        if self.anchor_ids.is_floating_point() or self.anchor_ids.is_complex() or self.anchor_ids.dtype == torch.bool:
            raise ValueError(f"anchor_ids must be integers (indexes into words), got {self.anchor_ids.dtype}")
        repeated = _first_repeated(self.words)
        if repeated is not None:  # occurrences and nearest anchors are per word
            raise ValueError(f"anchor words must be distinct; {repeated!r} is given twice")
        outside = (self.anchor_ids < 0) | (self.anchor_ids >= len(self.words))
        if bool(outside.any()):
            raise ValueError(f"anchor_ids must index the {len(self.words)} words; {int(outside.sum())} do not "
                             f"(e.g. {int(self.anchor_ids[outside][0])})")

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def occurrences(self) -> dict:
        """Occurrences kept per anchor word."""
        counts = np.bincount(self.anchor_ids.cpu().numpy(), minlength=len(self.words))
        return dict(zip(self.words, counts.tolist()))


def _first_repeated(words: Sequence[str]) -> str | None:
    seen: set = set()
    for word in words:
        if word in seen:
            return word
        seen.add(word)
    return None


def _word_key(word: str, lowercase: bool) -> str:
    """How a decoded word is compared: normalized (a word of punctuation stays as it is)."""
    return reference.normalize_word(word, lowercase)


def anchor_readings(tokenizer, anchor_words: Sequence[str], *, lowercase: bool = True, scheme: str | None = None,
                    grouper: WordGrouper | None = None) -> list[tuple[str, ...]]:
    """Each anchor as the words ``tokenizer`` reads in it, normalized: ``("naive",)`` for "naïve"
    with an uncased model, ``("t", "-", "cell")`` for "t-cell" with BERT; empty when it reads
    nothing (or the anchor is not valid Unicode text). ``grouper``: the tokenizer's, if built."""
    return [reading for reading, _ in _anchor_patterns(tokenizer, anchor_words, lowercase, scheme, grouper)]


def _anchor_patterns(tokenizer, anchor_words: Sequence[str], lowercase: bool, scheme: str | None,
                     grouper: WordGrouper | None) -> list[tuple[tuple[str, ...], tuple[bool, ...] | None]]:
    """Each anchor's reading (``anchor_readings``) and spacing (``_spacing``)."""
    grouper = grouper or WordGrouper.for_tokenizer(tokenizer, scheme)
    readable = [i for i, word in enumerate(anchor_words) if word.strip() and not has_lone_surrogate(word)]
    patterns: list = [((), None)] * len(anchor_words)
    if not readable:
        return patterns
    encoded = tokenize_texts(tokenizer, [anchor_words[i] for i in readable], add_special_tokens=False,
                             return_offsets_mapping=_has_offsets(tokenizer))
    offsets = encoded.get("offset_mapping") or [None] * len(readable)
    for i, ids, spans in zip(readable, encoded["input_ids"], offsets):
        groups = grouper(ids)
        words = decode_words(tokenizer, [[ids[j] for j in group] for group in groups])
        kept = [g for g, word in enumerate(words) if _word_key(word, lowercase)]
        patterns[i] = (tuple(_word_key(words[g], lowercase) for g in kept),
                       _spacing(spans, [groups[g] for g in kept]))
    return patterns


def _has_offsets(tokenizer) -> bool:
    """Whether ``tokenizer`` maps tokens to characters (fast tokenizers do)."""
    return bool(getattr(tokenizer, "is_fast", False))


def _spacing(spans, groups: Sequence[Sequence[int]]) -> tuple[bool, ...] | None:
    """Whether any character lies between each word of ``groups`` and the next, from the tokens'
    character ``spans``; None without spans (a slow tokenizer: spacing is then not compared)."""
    if spans is None:
        return None
    return tuple(spans[after[0]][0] > spans[before[-1]][1] for before, after in zip(groups, groups[1:]))


def context_windows(tokenizer, texts: Iterable[str], max_length: int, grouper: WordGrouper,
                    batch_size: int = 512) -> Iterator[str]:
    """Each of ``texts`` as the texts of consecutive windows of whole words that the tokenizer
    reads in at most ``max_length`` tokens with its special tokens; a text that fits is itself.
    A window's text begins where the token before it ends, so that the whitespace before its
    first word is kept and the tokenizer reads that word as it does inside the text (but for a
    tokenizer that puts "▁" before every text: there it begins at the word). A word longer than a
    window is in none whole, and left out."""
    room = max_length - sum(len(tokens) for tokens in special_wrapping(tokenizer))
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a token beside the special tokens")
    pieces_begin = piece_start(tokenizer) or "space"  # a tokenizer reading pieces otherwise reads windows anew anyway
    start_at_word = pieces_begin == "no space"
    unknown = getattr(tokenizer, "unk_token_id", None)
    for batch in batches_of_pieces(texts, batch_size, WINDOW_PIECE_CHARACTERS, pieces_begin):
        pieces = [piece for piece, _ in batch]
        encoded = tokenize_texts(tokenizer, pieces, add_special_tokens=False, return_offsets_mapping=True,
                                 return_attention_mask=False, return_token_type_ids=False, verbose=False)
        for piece, ids, spans in zip(pieces, encoded["input_ids"], encoded["offset_mapping"]):
            if len(ids) <= room:
                yield piece
                continue
            breaks = grouper.breaks_after_words(ids)
            breaks[1:] &= np.asarray(ids[1:]) != unknown  # text read as unknown stays with what it is written beside
            for start, end in word_windows(breaks, room):
                if end < len(ids) and not breaks[end]:
                    continue  # all one piece of a word longer than a window
                if not breaks[start]:  # the end of such a word, then perhaps whole words
                    whole = np.flatnonzero(breaks[start + 1 : end])
                    if not whole.size:
                        continue
                    start += 1 + int(whole[0])
                begin = spans[start][0] if start_at_word else 0 if start == 0 else spans[start - 1][1]
                yield piece[begin : spans[end - 1][1]]


def find_occurrences(tokenizer, texts: Iterable[str], anchor_words: Sequence[str], *, max_per_anchor: int,
                     max_length: int = 256, lowercase: bool = True, seed: int = 0, chunk: int = 512,
                     scheme: str | None = None, progress: bool = False,
                     tally: dict | None = None) -> list[list[tuple[str, int, int]]]:
    """Per anchor, a uniform sample of at most ``max_per_anchor`` occurrences as
    (text, first token, end token) in the tokenization of ``text`` with special tokens and
    truncation to ``max_length``, where ``text`` is a document or, for a longer one, the text of
    one of its windows (``context_windows``; with a Python tokenizer, which gives no offsets to cut
    by, the document, read in its first ``max_length`` tokens). ``tally``, a dict, gets the
    number of ``documents`` read and of those ``cut`` at ``max_length`` (not read whole).

    An anchor occurs where the words of a text, as the tokenizer groups and decodes them, read as
    the anchor does (``anchor_readings``); an anchor of several such words matches them only
    adjacent, with no special token between, and spaced as in the anchor (with a fast tokenizer).
    Anchors read and spaced alike all go to the first of them. A word that a text's cut at
    ``max_length`` splits is left out: its first pieces may read as an anchor.
    It reads every text, so it shows a progress bar (``progress``) by documents."""
    grouper = WordGrouper.for_tokenizer(tokenizer, scheme)
    patterns: dict[tuple[str, ...], list[tuple[tuple[bool, ...] | None, int]]] = {}
    for anchor, (reading, spacing) in enumerate(_anchor_patterns(tokenizer, anchor_words, lowercase, None, grouper)):
        if reading and all(spacing != seen for seen, _ in patterns.get(reading, [])):
            patterns.setdefault(reading, []).append((spacing, anchor))
    lengths = sorted({len(reading) for reading in patterns})
    offsets = _has_offsets(tokenizer)
    known: dict[tuple[int, ...], str] = {}  # the key of each distinct word (token ids), decoded once
    rng = random.Random(seed)
    seen = [0] * len(anchor_words)
    kept: list[list[tuple[str, int, int]]] = [[] for _ in anchor_words]

    def keep(anchor: int, occurrence: tuple[str, int, int]) -> None:
        seen[anchor] += 1
        if len(kept[anchor]) < max_per_anchor:
            kept[anchor].append(occurrence)
        else:
            slot = rng.randrange(seen[anchor])
            if slot < max_per_anchor:
                kept[anchor][slot] = occurrence

    trailing = len(special_wrapping(tokenizer)[1])

    counted = {} if tally is None else tally
    counted.update(documents=0, cut=0)

    def cut_to_window(ids: list[int], spans) -> tuple[list[int], list[list[int]], list]:
        """A text tokenized to one token more than ``max_length``, cut to it: (ids, words, spans).
        Where the cut falls inside a word ("kinase" of "kinases"), that last word is left out."""
        if len(ids) <= max_length:
            return ids, grouper(ids), spans
        counted["cut"] += not offsets  # else a window, which its text fits but for tokens read otherwise
        extra = len(ids) - trailing - 1  # the one text token past the window
        inside_word = not bool(grouper.breaks(ids[: extra + 1])[extra])
        ids = ids[:extra] + ids[extra + 1:]
        spans = None if spans is None else spans[:extra] + spans[extra + 1:]
        words = grouper(ids)
        return ids, words[:-1] if inside_word and words else words, spans

    def consume(batch: list[str]) -> None:
        with truncating_on_the_right(tokenizer):  # cut_to_window drops the last text token
            encoded = tokenize_texts(tokenizer, batch, add_special_tokens=True, truncation=True,
                                     max_length=max_length + 1, return_offsets_mapping=offsets)
        spans_of = encoded.get("offset_mapping") or [None] * len(batch)
        documents = [(text, *cut_to_window(list(ids), spans))
                     for text, ids, spans in zip(batch, encoded["input_ids"], spans_of)]
        new = {tuple(ids[i] for i in group) for _, ids, groups, _ in documents for group in groups} - known.keys()
        new = list(new)
        known.update(zip(new, (_word_key(word, lowercase) for word in decode_words(tokenizer, [list(w) for w in new]))))
        for text, ids, groups, spans in documents:
            keys = [known[tuple(ids[i] for i in group)] for group in groups]
            for first in range(len(keys)):
                for length in lengths:
                    last = first + length - 1
                    if last >= len(keys):
                        break
                    candidates = patterns.get(tuple(keys[first:last + 1]))
                    if not candidates or any(groups[w][-1] + 1 != groups[w + 1][0] for w in range(first, last)):
                        continue
                    spacing = _spacing(spans, groups[first:last + 1])
                    anchor = next((a for wanted, a in candidates if wanted is None or spacing is None
                                   or wanted == spacing), None)
                    if anchor is not None:
                        keep(anchor, (text, groups[first][0], groups[last][-1] + 1))

    def documents() -> Iterator[str]:
        total = len(texts) if isinstance(texts, Sized) else None
        with tqdm(total=total, desc="finding anchors in context", unit="doc", disable=not progress) as bar:
            for number, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"texts must be strings (one document each); text {number} is "
                                    f"{type(text).__name__}: {text!r:.60}")
                if text.strip():
                    counted["documents"] += 1
                    yield text
                bar.update(1)

    read = context_windows(tokenizer, documents(), max_length, grouper, chunk) if offsets else documents()
    for batch in _batched(read, chunk):
        consume(batch)
    return kept


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def contextual_anchor_vectors(embedder, texts: Iterable[str], anchor_words: Sequence[str], *,
                              max_occurrences_per_anchor: int = 1000, max_length: int | None = None, batch_size: int = 32,
                              lowercase: bool = True, seed: int = 0, scheme: str | None = None,
                              progress: bool | None = None) -> ContextualAnchors:
    """One vector per sampled occurrence of each anchor word in ``texts`` (one document each).

    Each vector is the mean of the last hidden states of the word's sub-tokens, computed by
    ``embedder``'s model on the document, or on the window of a longer one that holds the
    occurrence (of at most ``max_length`` tokens; by default ``CONTEXT_LENGTH``, or fewer when the
    model takes fewer; see ``find_occurrences``), with its device and dtype. Anchors
    keep the words given (``find_occurrences`` says how they are matched; ``scheme`` names the
    tokenizer's word boundaries, detected when None). Anchors that never
    occur get no vectors (see ``ContextualAnchors.occurrences``) and are named in a warning; when
    none occurs at all, ValueError.
    """
    max_occurrences_per_anchor = whole_number(max_occurrences_per_anchor, "max_occurrences_per_anchor")
    batch_size = whole_number(batch_size, "batch_size")
    if max_length is not None:
        max_length = whole_number(max_length, "max_length", least=3, least_why=" (two special tokens and a piece)")
    check_lowercase(lowercase)
    if texts is None:
        raise TypeError("texts must be an iterable of documents, got None")
    refuse_one_string(texts, "texts", "an iterable of documents")
    words = tuple(word_list(anchor_words, "anchor_words", "a list of words"))
    if not words:
        raise ValueError("contextual anchors need at least one anchor word")
    repeated = _first_repeated(words)
    if repeated is not None:  # refused now, before every text is read
        raise ValueError(f"anchor words must be distinct; {repeated!r} is given twice")
    tokenizer, model = embedder.tokenizer, embedder.model
    if max_length is None:
        max_length = longest_input(model, CONTEXT_LENGTH)
    else:
        check_max_length(model, max_length, model_name(model), "max_length")
    show = embedder.progress if progress is None else progress
    tally: dict = {}
    kept = find_occurrences(tokenizer, texts, words, max_per_anchor=max_occurrences_per_anchor,
                            max_length=max_length, lowercase=lowercase, seed=seed, scheme=scheme, progress=show,
                            tally=tally)
    # With a Python tokenizer, occurrences past a document's first max_length tokens are not read: said.
    unread = (f" (in the first {max_length:,} tokens of each document, the context read: {tally['cut']:,} of the "
              f"{tally['documents']:,} documents are longer; a larger max_length reads more of them)"
              if tally["cut"] else "")
    by_text: dict[str, list[tuple[int, int, int]]] = {}
    for anchor, occurrences in enumerate(kept):
        for text, start, end in occurrences:
            by_text.setdefault(text, []).append((anchor, start, end))
    total = sum(len(o) for o in kept)
    missing = [i for i, occurrences in enumerate(kept) if not occurrences]
    if missing:
        readings = anchor_readings(tokenizer, [words[i] for i in missing], lowercase=lowercase, scheme=scheme)
        shown = ", ".join(f"{words[i]!r} (read as {' '.join(reading) or 'nothing'!r})"
                          for i, reading in list(zip(missing, readings))[:5])
        if total == 0:
            raise ValueError(f"none of the {len(words)} anchor words occurs in the texts{unread} as the embedding "
                             f"model's tokenizer reads them: {shown}")
        warnings.warn(f"{len(missing)} of the {len(words)} anchor words never occur in the texts{unread} as the "
                      f"embedding model's tokenizer reads them, or read like an earlier anchor, and get no vectors: "
                      f"{shown}", DiffmaskWarning, stacklevel=2)
    elif tally["cut"] > CUT_SHARE_NOTED * tally["documents"]:
        warnings.warn(f"the anchors' occurrences were sampled{unread}", DiffmaskWarning, stacklevel=2)
    documents = list(by_text)
    with truncating_on_the_right(tokenizer):  # the window the occurrences were found in
        encoded = tokenize_texts(tokenizer, documents, add_special_tokens=True, truncation=True,
                                 max_length=max_length)["input_ids"]
    order = sorted(range(len(documents)), key=lambda i: len(encoded[i]))
    vectors = None  # sized by the hidden states: the embedder's dimension is its pooling's (input embeddings')
    anchor_ids = torch.empty(total, dtype=torch.int64)
    row = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = torch.device(embedder.device)
    autocast_dtype = getattr(embedder, "_autocast_dtype", None)
    with torch.inference_mode(), eval_mode(embedder.model), \
            torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None), \
            tqdm(total=total, desc="embedding anchor occurrences", unit="vector", disable=not show) as bar:
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            length = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), length), dtype=torch.long)
            for b, i in enumerate(batch):
                input_ids[b, : len(encoded[i])] = torch.tensor(encoded[i])
                attention[b, : len(encoded[i])] = 1
            hidden = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                           return_dict=True).last_hidden_state
            hidden = hidden.float().cpu()
            if vectors is None:
                vectors = torch.empty(total, hidden.shape[-1])
            for b, i in enumerate(batch):
                for anchor, start, end in by_text[documents[i]]:
                    vectors[row] = hidden[b, start:end].mean(0)
                    anchor_ids[row] = anchor
                    row += 1
                    bar.update(1)
    order_rows = torch.argsort(anchor_ids, stable=True)
    return ContextualAnchors(words, vectors[order_rows], anchor_ids[order_rows])
