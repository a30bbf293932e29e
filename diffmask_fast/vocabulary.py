"""The word types of texts as a tokenizer groups them: what the collator will look scores up for."""

from __future__ import annotations

import itertools
import numbers
from typing import Iterable, Iterator, Mapping, Sequence, Sized

from . import reference
from .tokenization import WordGrouper, decode_words, tokenize_texts

#: Texts tokenized per call: a fast tokenizer encodes a batch in parallel.
BATCH_TEXTS = 256


def tokenizer_words(tokenizer, text: str, scheme: str | None = None, *, grouper: WordGrouper | None = None) -> list[str]:
    """Surface words of one text, grouped as the masking ops group them (README, "Choices"): special
    tokens such as ``<unk>`` belong to no word. Pass a ``grouper`` to reuse its tables."""
    if not isinstance(text, str):
        raise TypeError(f"text must be one string, got {type(text).__name__} (for many texts, call once for each)")
    grouper = grouper or WordGrouper.for_tokenizer(tokenizer, scheme)
    return _words_of_batch(tokenizer, [text], grouper)


def _word_ids(tokenizer, texts: list[str], grouper: WordGrouper) -> Iterator[tuple[int, ...]]:
    """The token ids of each word of ``texts``, text after text."""
    # No "longer than" warning: the texts are not fed to a model.
    return _words_of_ids(tokenize_texts(tokenizer, texts, add_special_tokens=False, verbose=False)["input_ids"], grouper)


def _words_of_ids(token_ids: Iterable[Sequence[int]], grouper: WordGrouper) -> Iterator[tuple[int, ...]]:
    """The token ids of each word of texts given as their ids (without special tokens)."""
    for ids in token_ids:
        for group in grouper(ids):
            yield tuple(ids[i] for i in group)


def _words_of_batch(tokenizer, texts: list[str], grouper: WordGrouper) -> list[str]:
    return decode_words(tokenizer, [list(word) for word in _word_ids(tokenizer, texts, grouper)])


def tokenizer_word_types(tokenizer, texts: Iterable[str], lowercase: bool = True, scheme: str | None = None,
                         progress: bool = False, text_field: str | None = None) -> set[str]:
    """Normalized word types of ``texts`` as the collator will see them, for scoring.

    ``texts`` is a corpus as ``count_words`` reads it (strings, paths, a pandas DataFrame or a
    ``datasets.Dataset``, its ``text_field`` column; one string names a file, folder or glob).
    Reads the whole corpus through the tokenizer, so it shows a progress bar (``progress``) by
    documents; each distinct token sequence is decoded once."""
    from tqdm.auto import tqdm

    from .corpus import iter_documents, names_only_paths

    types = WordTypes(tokenizer, lowercase, scheme)
    counted = (isinstance(texts, Sized) and not isinstance(texts, (str, bytes, Mapping))
               and not names_only_paths(texts))
    total = len(texts) if counted else None  # documents, not files
    texts = iter_documents(texts, text_field)
    with tqdm(total=total, desc="reading words", unit="doc", disable=not progress) as bar:
        while batch := list(itertools.islice(texts, BATCH_TEXTS)):
            types.add(tokenize_texts(tokenizer, batch, add_special_tokens=False, verbose=False)["input_ids"])
            bar.update(len(batch))
    return types.types


class WordTypes:
    """``tokenizer_word_types`` of token ids the caller has already: texts tokenized for another
    purpose (``pretrain_data.tokenize_documents``) give their word types without being read
    through the tokenizer a second time. ``types`` holds those of every ``add`` so far."""

    def __init__(self, tokenizer, lowercase: bool = True, scheme: str | None = None):
        self.tokenizer, self.lowercase = tokenizer, lowercase
        self.grouper = WordGrouper.for_tokenizer(tokenizer, scheme)
        self.types: set[str] = set()
        self._decoded: set[tuple[int, ...]] = set()  # each distinct token sequence is decoded once

    def add(self, token_ids: Iterable[Sequence[int]]) -> None:
        """Adds the words of texts given as their ids, without special tokens (as
        ``tokenizer(texts, add_special_tokens=False)`` gives them)."""
        if getattr(token_ids, "ndim", None) == 1:  # one tensor or array of ids: refused as one list of them is
            token_ids = token_ids.tolist()
        token_ids = list(token_ids)
        if token_ids and isinstance(token_ids[0], numbers.Integral):
            raise TypeError("token_ids must be a list of id sequences, one per text, got one sequence of ids: "
                            "pass [ids]")
        new: list[list[int]] = []
        for word in _words_of_ids(token_ids, self.grouper):
            if word not in self._decoded:
                self._decoded.add(word)
                new.append(list(word))
        self.types.update(reference.normalize_word(w, self.lowercase) for w in decode_words(self.tokenizer, new) if w)
