"""Showing what Difference-Masking masks and why: marked sentences, in text or HTML."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Sequence

from . import reference
from ._io import atomic_write_bytes
from .collator import DifferenceMaskingCollator
from .tokenization import decode_words


@dataclass(frozen=True)
class PreviewWord:
    text: str
    score: float
    masked: bool
    nearest_anchor: str | None


def preview(collator: DifferenceMaskingCollator, texts: Sequence[str], max_length: int = 128) -> list[list[PreviewWord]]:
    """Mask ``texts`` with ``collator`` once and report, word by word, score and whether it was masked."""
    tokenizer = collator.tokenizer
    encoded = [tokenizer(text, truncation=True, max_length=max_length) for text in texts]
    batch = collator([{"input_ids": e["input_ids"]} for e in encoded])
    labels = batch["labels"]
    never_word_ids = collator.boundaries.never_word
    sentences = []
    for row, example in enumerate(encoded):
        ids = example["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        never_word = [bool(never_word_ids[i]) for i in ids]
        starts = reference.word_starts(tokens, never_word, collator.boundaries.scheme)
        groups = reference.group_words(starts, never_word)
        words = decode_words(tokenizer, [[ids[i] for i in group] for group in groups])
        sentences.append([
            PreviewWord(word, collator.scores.score(word), any(int(labels[row, i]) != -100 for i in group),
                        collator.scores.nearest_anchor_of(word))
            for word, group in zip(words, groups)
        ])
    return sentences


def render_text(sentences: Sequence[Sequence[PreviewWord]], show_scores: bool = False) -> str:
    """One line per sentence, masked words in [[double brackets]] (with their score if asked)."""
    lines = []
    for words in sentences:
        parts = []
        for word in words:
            text = f"{word.text}:{word.score:.2f}" if show_scores else word.text
            parts.append(f"[[{text}]]" if word.masked else text)
        lines.append(" ".join(parts))
    return "\n".join(lines)


def render_html(sentences: Sequence[Sequence[PreviewWord]], title: str = "Difference-Masking preview") -> str:
    """A page where each word is shaded by its score and masked words are boxed."""
    scores = [w.score for words in sentences for w in words] or [0.0]
    low, high = min(scores), max(scores)
    span = (high - low) or 1.0
    rows = []
    for words in sentences:
        cells = []
        for w in words:
            alpha = (w.score - low) / span
            style = f"background: rgba(255, 140, 0, {alpha:.2f});"
            if w.masked:
                style += " outline: 2px solid #1f4e9c; font-weight: bold;"
            tip = f"score {w.score:.3f}" + (f", nearest anchor: {w.nearest_anchor}" if w.nearest_anchor else "")
            cells.append(f'<span style="{style}" title="{html.escape(tip)}">{html.escape(w.text)}</span>')
        rows.append(f"<p>{' '.join(cells)}</p>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family: sans-serif; line-height: 2; max-width: 60em'>"
        f"<h1>{html.escape(title)}</h1><p>Shading: word score (darker = closer to the domain's anchors); "
        f"boxed: masked in this draw. Hover a word for its score and nearest anchor.</p>{''.join(rows)}</body></html>"
    )


def write_html(path: str | os.PathLike, sentences: Sequence[Sequence[PreviewWord]], title: str = "Difference-Masking preview") -> None:
    atomic_write_bytes(path, render_html(sentences, title).encode("utf-8"))
