"""The word types of texts as a tokenizer groups them: what the collator will look scores up for."""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator, Sized

from . import reference
from ._checks import refuse_one_string
from .tokenization import WordGrouper, decode_words, tokenize_texts

#: Texts tokenized per call: a fast tokenizer encodes a batch in parallel.
BATCH_TEXTS = 256


def tokenizer_words(tokenizer, text: str, scheme: str | None = None, *, grouper: WordGrouper | None = None) -> list[str]:
    """Surface words of one text, grouped as the masking ops group them (README, "Choices"): special
    tokens such as ``<unk>`` belong to no word. Pass a ``grouper`` to reuse its tables."""
    grouper = grouper or WordGrouper.for_tokenizer(tokenizer, scheme)
    return _words_of_batch(tokenizer, [text], grouper)


def _word_ids(tokenizer, texts: list[str], grouper: WordGrouper) -> Iterator[tuple[int, ...]]:
    """The token ids of each word of ``texts``, text after text."""
    for ids in tokenize_texts(tokenizer, texts, add_special_tokens=False, verbose=False)["input_ids"]:  # no "longer than" warning
        for group in grouper(ids):
            yield tuple(ids[i] for i in group)


def _words_of_batch(tokenizer, texts: list[str], grouper: WordGrouper) -> list[str]:
    return decode_words(tokenizer, [list(word) for word in _word_ids(tokenizer, texts, grouper)])


def tokenizer_word_types(tokenizer, texts: Iterable[str], lowercase: bool = True, scheme: str | None = None,
                         progress: bool = False) -> set[str]:
    """Normalized word types of ``texts`` as the collator will see them, for scoring.

    Reads the whole corpus through the tokenizer, so it shows a progress bar (``progress``) by
    documents; each distinct token sequence is decoded once."""
    from tqdm.auto import tqdm

    refuse_one_string(texts, "texts", "an iterable of documents")
    grouper = WordGrouper.for_tokenizer(tokenizer, scheme)
    total = len(texts) if isinstance(texts, Sized) else None
    types: set[str] = set()
    decoded: set[tuple[int, ...]] = set()
    texts = iter(texts)
    with tqdm(total=total, desc="reading words", unit="doc", disable=not progress) as bar:
        while batch := list(itertools.islice(texts, BATCH_TEXTS)):
            new: list[list[int]] = []
            for word in _word_ids(tokenizer, batch, grouper):
                if word not in decoded:
                    decoded.add(word)
                    new.append(list(word))
            types.update(reference.normalize_word(w, lowercase) for w in decode_words(tokenizer, new) if w)
            bar.update(len(batch))
    return types
