"""Argument checks shared by the modules that take lists of words or texts."""

from __future__ import annotations

import numbers
import re

import numpy as np

#: Whitespace at the start or end of one of the words joined by NUL.
_PADDED = re.compile(r"(?:^|\0)\s|\s(?:\0|$)")


def check_lowercase(lowercase: object) -> None:
    """A saved "false" (a string) would read as true, and words would be keyed another way."""
    if not isinstance(lowercase, (bool, np.bool_)):
        raise TypeError(f"lowercase must be True or False, got {lowercase!r}")


def refuse_one_string(value: object, name: str, expected: str) -> None:
    """Raise TypeError when ``value`` is one string where a list is expected: iterating it would
    read it character by character, silently."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be {expected}, not one string (a single string, {value!r:.60}, would be "
                        "read character by character; wrap it in a list)")


def word_list(words, name: str, expected: str) -> list[str]:
    """``words`` as a list of str, refusing one string and anything else that is not a word (a
    (word, score) pair would otherwise become the word "('protein', 3.2)"); a set is sorted, so
    that anchor ids (the order of the words) do not change with Python's hash seed from run to run."""
    refuse_one_string(words, name, expected)
    listed = list(words)
    wrong = [word for word in listed if not isinstance(word, str)]
    if wrong:
        other = wrong[0]
        raise TypeError(f"{name} must be words (strings), got {other!r} ({type(other).__name__})"
                        + ("; pass the words of (word, score) pairs" if isinstance(other, tuple) else ""))
    return sorted(listed) if isinstance(words, (set, frozenset)) else listed


def first_unnormalized(words, lowercase: bool) -> tuple[str, str] | None:
    """The first word that is not its own normalized form (``reference.normalize_word``) with
    that form, or None. Tables keyed by normalized words look up ``normalize_word(w)``, so a key
    "Enzyme" or "receptor," could never be found."""
    from .reference import is_composed, normalize_word

    for word in words:
        if not isinstance(word, str):
            raise _no_string(word)
        if (word.islower() or not lowercase) and word[:1].isalnum() and word[-1:].isalnum() \
                and is_composed(word):
            continue  # the usual case, normalized as it is
        normalized = normalize_word(word, lowercase)
        if normalized != word:
            return word, normalized
    return None


def earlier_normalization(word: str, lowercase: bool) -> str | None:
    """How an earlier version normalized a word it would keep but this one does not, for files
    saved then: None where no earlier version made such a word (the slip is the caller's)."""
    from .reference import _is_mark, _is_stripped_from_word_ends, is_composed

    if not is_composed(word):
        return "kept decomposed accents apart"
    if (any(map(_is_mark, word)) and (not lowercase or word.lower() == word)
            and not _is_stripped_from_word_ends(word[0]) and not _is_stripped_from_word_ends(word[-1])):
        return "stripped a symbol at a word's end but not the marks after it (an emoji's variation selector)"
    return None


def _no_string(word: object) -> TypeError:
    return TypeError(f"words must be strings, got {word!r} ({type(word).__name__})")


def shown_apart(word: str, normalized: str) -> tuple[str, str]:
    """The reprs of a word and its normalized form, escaped (``ascii``) where the word's accents
    are not composed: "cafe" + U+0301 and its composed form "café" print alike."""
    from .reference import is_composed

    if is_composed(word):
        return repr(word), repr(normalized)
    return ascii(word), ascii(normalized) + " (Unicode NFC: accents composed)"


def first_blank_or_padded(words) -> str | None:
    """The first word that is empty or has whitespace before or after it, or None: a table key
    such as "protein\\n" (a line of readlines()) is never looked up, as lookups strip it. (Inside
    a word whitespace can be: a byte-level BPE without a token for U+00A0 keeps "ligand\\u00a0with"
    one word.)"""
    words = words if isinstance(words, list) else list(words)
    if "" in words:
        return ""
    try:
        joined = "\0".join(words)
    except TypeError:
        raise _no_string(next(word for word in words if not isinstance(word, str))) from None
    if _PADDED.search(joined) is None:  # one scan at C speed: tables hold millions of words
        return None
    return next((word for word in words if word != word.strip()), None)  # else a NUL inside a word matched


def whole_number(value: object, name: str, least: int = 1, most: int | None = None, why: str = "",
                 least_why: str = "") -> int:
    """``value`` as an int, refusing what is no whole number (2.5, "2", True) or lies outside
    [``least``, ``most``], by name (``why`` and ``least_why`` say where the bounds come from):
    int() would cut 2.5 to 2, and a string or float failed deep inside."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least:,}{least_why}, got {value}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be at most {most:,}{why}, got {value}")
    return int(value)
