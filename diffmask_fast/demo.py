"""The built-in demo: Difference-Masking of the Python language reference, fully offline."""

from __future__ import annotations

import random
import re

from ._checks import whole_number

_SENTENCE_END = re.compile(r"(?<=[a-z)][.!?])\s+(?=[A-Z])")


def python_reference_corpus() -> list[str]:
    """Paragraphs of the Python language reference that ships with CPython (``pydoc_data``),
    one document each, with their wrapped lines joined."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            text = " ".join(line.strip() for line in block.splitlines() if line.strip())
            if text:
                paragraphs.append(text)
    return paragraphs


def sample_sentences(documents: list[str], n: int, seed: int, min_words: int = 10, max_words: int = 35) -> list[str]:
    """``n`` prose sentences (not code or tables) of moderate length, drawn reproducibly (all of
    them, in random order, where there are fewer)."""
    n = whole_number(n, "the number of sentences", least=0)
    sentences = [s for document in documents for s in _SENTENCE_END.split(document)]
    prose = [
        s for s in sentences
        if min_words <= len(s.split()) <= max_words and s[0].isupper() and s.endswith(".")
        and not any(mark in s for mark in (">>>", "::", "|", "==="))
    ]
    if not prose:
        raise ValueError("the corpus has no prose sentences to preview")
    return random.Random(seed).sample(prose, min(n, len(prose)))
