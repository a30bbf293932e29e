"""The word types of texts as a tokenizer groups them: what the collator will look scores up for."""

from __future__ import annotations

from typing import Iterable

from . import reference
from .tokenization import decode_words, detect_word_boundary_scheme


def tokenizer_words(tokenizer, text: str, scheme: str | None = None) -> list[str]:
    """Surface words of one text, grouped as DESIGN.md §2 defines words for this tokenizer."""
    scheme = scheme or detect_word_boundary_scheme(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    never_word = [False] * len(tokens)
    groups = reference.group_words(reference.word_starts(tokens, never_word, scheme), never_word)
    return decode_words(tokenizer, [[ids[i] for i in group] for group in groups])


def tokenizer_word_types(tokenizer, texts: Iterable[str], lowercase: bool = True, scheme: str | None = None) -> set[str]:
    """Normalized word types of ``texts`` as the collator will see them, for scoring."""
    scheme = scheme or detect_word_boundary_scheme(tokenizer)
    types: set[str] = set()
    for text in texts:
        types.update(reference.normalize_word(w, lowercase) for w in tokenizer_words(tokenizer, text, scheme) if w)
    return types
