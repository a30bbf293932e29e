"""The built-in demo: Difference-Masking of the Python language reference, fully offline."""

from __future__ import annotations

import random


def python_reference_corpus() -> list[str]:
    """Lines of the Python language reference that ships with CPython (``pydoc_data``)."""
    from pydoc_data.topics import topics

    return [line.strip() for name in sorted(topics) for line in topics[name].splitlines() if line.strip()]


def sample_sentences(lines: list[str], n: int, seed: int, min_words: int = 12, max_words: int = 40) -> list[str]:
    """``n`` prose lines (not code or tables) of moderate length, drawn reproducibly."""
    prose = [
        line for line in lines
        if min_words <= len(line.split()) <= max_words and line[0].isalpha() and line.endswith(".")
        and not line.startswith((">>>", "..."))
    ]
    if not prose:
        raise ValueError("the corpus has no prose lines to preview")
    return random.Random(seed).sample(prose, min(n, len(prose)))
