"""Corpus text shown to people (terminals, HTML pages, pictures): a word holding an escape
sequence must not recolour a terminal, and a zero-width or direction-changing character must
not hide or reorder what is shown."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with each character that is not printable (control, format and separator
    characters other than the space) spelled as its escape, ``\\x1b`` or ``\\u200b``."""
    if text.isprintable():  # the usual case, at C speed
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def printable_word(word: str) -> str:
    """A word as shown: ``printable``, and a word of whitespace alone, which would show as
    nothing (U+3000 standing alone is a word of byte-level BPE), spelled as escapes; "(blank)"
    for the empty word."""
    if word.strip():
        return printable(word)
    return "".join("\\x20" if c == " " else c.encode("unicode_escape").decode("ascii") for c in word) or "(blank)"


def counted(count: int, noun: str) -> str:
    """``count`` of ``noun``, with the noun's plural unless there is one ("1 draw", "2 draws")."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def short_score(score: float) -> str:
    """A score in a few characters: two decimals, or three significant digits for a score given
    in a table far from the similarities' [-1, 1] ("1e+30", not 31 digits)."""
    return f"{score:.2f}" if abs(score) < 1e4 else f"{score:.3g}"


def percent(share: float) -> str:
    """A probability as a percentage with the digits it was given ("12.5%", "0.4%", "80%"):
    rounded to whole percent, a line drawn at 0.125 was labelled 12%, and one at 0.004, 0%."""
    return f"{100 * share:.4g}%"
