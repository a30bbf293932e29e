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
